"""Benchmark, one command (`make bench`): the reference recipe written the naive way
against the pipeline, on the same photos, in one run.

    python -m scripts.bench [--train 1000] [--test 200] [--steps abc] [--repeats 3] [...]
    make bench ARGS="--train 21000 --test 12500 --repeats 1"

Steps, each a child process timed from start to exit:
  a  scripts/naive_recipe.py: image_dataset_from_directory on class folders, fit for
     `epochs` validating each epoch, then evaluate on the validation subset
  b  the pipeline's first `dvc repro` of the whole DAG, in a fresh copy of the project
     (build/bench/<size>/project), with per-stage times
  c  `dvc exp run -S lr=<--exp-lr>` after b (the copy is committed first, as exp run needs)

Each step runs --repeats times, and the report gives each figure's median and its range
(min-max) over them: a and b afresh each time (b in a new copy), c one after the other in
the last b's copy, repeat k with lr = exp-lr x (k + 1) (a value of its own: DVC's
run-cache would restore an earlier repeat's results instead of running the stages). Two
fixed costs have rows of their own: DVC's own time (the step's wall time outside its stage
processes: DVC starting, checking and caching) and train's start-up (from its process's
start to its first epoch, with its steps), from the marks the stages write where
FINETUNE_TIMINGS asks (finetune.core.timings).

The photos are synthetic (scripts/make_layout.py, Kaggle's layout, cached under
build/bench/layouts/): 200x200 by default, or with `--photos kaggle` of real Kaggle
photos' sizes (402x358 on average), which cost twice as much to decode. Whether decoding
keeps up is measured on its own (scripts/bench_decode.py, before the steps): --photo-sample
photos of each size, 200x200 and real-size, side by side, decoded alone and through the
features stage's whole loop (decode, frozen part, rows written) in each of --precisions.
The pipeline reads the layout through `data_source`; the naive
recipe reads class folders of hard links to the very same files. The backbone is
InceptionV3 with RANDOM weights in the real notop file's layout (scripts/random_weights.py):
the times are the network's, but the accuracies are chance and mean nothing. Pass real
weights with --weights (and --backbone, --cut-layer, --unfreeze-after for another network).

The recipe (image size, batch size, epochs, lr, split, seed, backbone, layers) is the
project's params.yaml unless overridden here, and the same for a and b. Prints a table and
writes it, with every figure's definition, to build/bench/<size>/results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import psutil  # installed with dvc
import yaml

from finetune.core import timings
from scripts.bench_decode import size_label
from scripts.demo import copy_project, git
from scripts.make_layout import KAGGLE, make_layout
from scripts.random_weights import INCEPTION_NOTOP

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "build" / "bench"
# The stages that do the naive recipe's work (train, validate, evaluate); `features`
# (caching the frozen backbone's activations) belongs to it where the pipeline has it.
RECIPE_STAGES = ("features", "train", "evaluate")
# The recipe's keys of params.yaml, with the naive recipe's option for each.
RECIPE_KEYS = {"backbone": "--backbone", "cut_layer": "--cut-layer",
               "unfreeze_after": "--unfreeze-after", "image_size": "--image-size",
               "batch_size": "--batch-size", "epochs": "--epochs", "lr": "--lr",
               "val_split": "--val-split", "seed": "--seed"}
SAMPLE_EVERY_S = 0.2  # how often the sampler reads the processes' resident sets
MIB = 1 << 20
# DVC's own lines, at the start of a line: one starts a stage, the others end the one running.
STAGE_START = re.compile(r"^Running stage '([^']+)'")
STAGE_END = re.compile(r"^(Running stage|Stage '[^']+' didn't change|Updating lock file"
                       r"|Ran experiment|Use `dvc push`|To track the changes)")
# Child output worth echoing while it runs: stage starts, one line per epoch.
ECHOED = re.compile(r"^(Running stage|Epoch \d+/|\d+/\d+ - )")

DEFINITIONS = {
    "wall_s": "seconds from starting the step's process to its exit (includes Python, "
              "TensorFlow and DVC start-up); for a stage: from DVC's \"Running stage\" line "
              "to the line that ends it, so it includes DVC caching the stage's outputs",
    "images_per_s": "the recipe's work, (training images x epochs + validation images x "
                    "epochs + validation images [evaluate]), divided by wall_s: the same count "
                    "in every row, so a whole-DAG row is also charged for its other stages "
                    "(extracting the data, checking it, predicting the test set)",
    "dvc_own_s": "DVC's own time in a pipeline step: its wall time less the lifetimes of its "
                 "stage processes (each from the kernel's start of the process to its exit, "
                 "from the marks of finetune.core.timings): DVC starting, collecting the "
                 "stages, checking deps and outputs, caching, writing dvc.lock, and for exp "
                 "run its git work",
    "train_startup_s": "train's start-up: from its process's start to the call of fit (its "
                       "first epoch), split into steps by the marks of finetune.core.timings",
    "median [min-max]": "over the --repeats runs of the step",
    "cpu_s": "user + system CPU seconds of the step's processes (wait4's rusage): less "
             "sensitive than wall_s to other programs competing for the CPUs",
    "max_rss_mib": "largest resident set reached by any ONE process of the step (the step's "
                   "process or any descendant it waited for), from wait4's rusage: exact",
    "tree_rss_mib": "highest SUM of the resident sets of the step's processes at one time, "
                    "sampled every 0.2 s (may miss shorter peaks); for a stage: its own "
                    "processes, without the dvc process",
    "accuracy, log_loss": "validation accuracy and log loss (binary cross-entropy): a from "
                          "Keras's evaluate, b and c from metrics/evaluate/metrics.json. "
                          "The two recipes validate on the same number of photos but not the "
                          "same ones (Keras's split vs the pipeline's stratified one). "
                          "With random weights on synthetic photos (a disc or a square) they "
                          "say nothing about the recipes' accuracy on real photos",
}


# --- measuring a child process ------------------------------------------------------

@dataclass
class Stage:
    name: str
    wall_s: float
    tree_rss_mib: float


@dataclass
class Measured:
    command: list[str]
    returncode: int
    wall_s: float
    cpu_s: float
    max_rss_mib: float
    tree_rss_mib: float
    load_before: float  # 1-minute load average when the step started
    log: str
    stages: list[Stage] = field(default_factory=list)
    marks: list[dict[str, Any]] = field(default_factory=list)  # finetune.core.timings's


class StageClock:
    """Follows DVC's output to know which stage runs, and when each starts and ends."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.current: str | None = None
        self.began = 0.0
        self.peak = 0
        self.stages: list[Stage] = []

    def line(self, text: str, now: float) -> None:
        with self.lock:
            if self.current and STAGE_END.match(text):
                self._close(now)
            match = STAGE_START.match(text)
            if match:
                self.current, self.began, self.peak = match[1], now, 0

    def sample(self, stage_rss: int) -> None:
        with self.lock:
            if self.current:
                self.peak = max(self.peak, stage_rss)

    def finish(self, now: float) -> None:
        with self.lock:
            if self.current:
                self._close(now)

    def _close(self, now: float) -> None:
        self.stages.append(Stage(self.current or "", now - self.began, self.peak / MIB))
        self.current = None


def sample_memory(root: int, clock: StageClock, done: threading.Event) -> list[int]:
    """Sum the resident sets of `root`'s process tree every SAMPLE_EVERY_S until `done`;
    the current stage is charged with its processes only (the tree without `root`)."""
    peak = [0]
    try:
        parent = psutil.Process(root)
    except psutil.NoSuchProcess:
        return peak
    while not done.wait(SAMPLE_EVERY_S):
        try:
            own = parent.memory_info().rss
            children = parent.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        below = 0
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):  # exited since the listing
                below += child.memory_info().rss
        clock.sample(below)
        peak[0] = max(peak[0], own + below)
    return peak


def measure(command: list[str], cwd: Path, env: dict[str, str], log: Path,
            echo_all: bool) -> Measured:
    """Run `command`, logging its output to `log`, and measure it (see DEFINITIONS)."""
    marks_file = log.with_suffix(".timings.jsonl")
    marks_file.unlink(missing_ok=True)
    env = {**env, timings.ENV: str(marks_file)}
    load_before = os.getloadavg()[0]
    clock, done = StageClock(), threading.Event()
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, bufsize=1)
    peak: list[int] = []
    sampler = threading.Thread(target=lambda: peak.extend(sample_memory(process.pid, clock, done)))
    sampler.start()
    with log.open("w") as stream:
        reader = threading.Thread(target=copy_output,
                                  args=(process.stdout, stream, clock, start, echo_all))
        reader.start()
        # wait4, not wait: its rusage is this child's and its waited-for descendants'
        # alone, where getrusage(RUSAGE_CHILDREN) would mix in the earlier steps.
        _, status, usage = os.wait4(process.pid, 0)
        end = time.perf_counter()
        process.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        # A detached grandchild could hold the pipe open: don't wait for it forever.
        reader.join(timeout=30)
    sampler.join()
    clock.finish(end)
    return Measured(command=command, returncode=process.returncode, wall_s=end - start,
                    cpu_s=usage.ru_utime + usage.ru_stime,
                    max_rss_mib=usage.ru_maxrss * 1024 / MIB,  # ru_maxrss is in KiB on Linux
                    tree_rss_mib=max(peak, default=0) / MIB, load_before=load_before,
                    log=str(log), stages=clock.stages, marks=read_marks(marks_file))


def read_marks(path: Path) -> list[dict[str, Any]]:
    """The stage processes' marks (finetune.core.timings), in the order written."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# train's start-up, step by step: (step, from mark, to mark), finetune.core.timings's marks.
STARTUP_STEPS = (("python + imports (TensorFlow, Keras)", timings.START, "main"),
                 ("params, threads, precision", "main", "configured"),
                 ("backbone built and checked", "configured", "backbone"),
                 ("inputs (index, manifest, split)", "backbone", "inputs"),
                 ("weights loaded", "inputs", "weights"),
                 ("model assembled and compiled", "weights", "model"),
                 ("log opened, fit called", "model", "fit"))


def processes(marks: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Each process's marks: its stage and each event's first time."""
    found: dict[int, dict[str, Any]] = {}
    for record in marks:
        process = found.setdefault(record["pid"], {"stage": record["stage"]})
        process.setdefault(record["event"], record["time"])
    return found


def dvc_own_s(measured: Measured) -> float | None:
    """The step's wall time outside its stage processes' lifetimes (see DEFINITIONS), or
    None where no stage process left its start and exit."""
    lifetimes = [process[timings.EXIT] - process[timings.START]
                 for process in processes(measured.marks).values()
                 if timings.START in process and timings.EXIT in process]
    return measured.wall_s - sum(lifetimes) if lifetimes else None


def train_startup(measured: Measured) -> dict[str, float] | None:
    """train's start-up (total, then each of STARTUP_STEPS), or None where no train process
    reached fit."""
    for process in processes(measured.marks).values():
        if process["stage"] == "train" and timings.START in process and "fit" in process:
            steps = {"total": process["fit"] - process[timings.START]}
            for name, begin, end in STARTUP_STEPS:
                if begin in process and end in process:
                    steps[name] = process[end] - process[begin]
            return steps
    return None


def copy_output(source: TextIO, log: TextIO, clock: StageClock, start: float,
                echo_all: bool) -> None:
    """Copy the child's output to the log, timestamp DVC's stage lines, echo progress."""
    for text in source:
        now = time.perf_counter()
        log.write(text)
        clock.line(text, now)
        if echo_all or ECHOED.match(text):
            print(f"  [{now - start:6.1f} s] {text.rstrip()}", flush=True)


def check(step: str, measured: Measured) -> None:
    """Stop on a failed step, showing the end of its log."""
    if measured.returncode == 0:
        return
    tail = Path(measured.log).read_text().splitlines()[-25:]
    print("\n".join(tail), file=sys.stderr)
    sys.exit(f"error: step {step} ({' '.join(measured.command)}) failed with exit status "
             f"{measured.returncode}; full log: {measured.log}")


# --- material: photos, class folders, weights -----------------------------------------

def class_folders(layout: Path) -> Path:
    """cat/ and dog/ of hard links to the layout's training photos (the same files, no
    copy), beside it: what image_dataset_from_directory reads."""
    folder = layout.parent / "classes"
    photos = sorted((layout / "train").glob("*.jpg"))
    if folder.is_dir() and sum(1 for _ in folder.glob("*/*.jpg")) == len(photos):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for label in ("cat", "dog"):
        (folder / label).mkdir(parents=True)
    for photo in photos:
        target = folder / photo.name.split(".")[0] / photo.name
        try:
            target.hardlink_to(photo)
        except OSError:  # a file system without hard links
            shutil.copy2(photo, target)
    return folder


def random_weights(env: dict[str, str]) -> Path:
    """The random InceptionV3 notop file, written once (in a child: TensorFlow stays out
    of this process, whose own memory and threads are not under test)."""
    path = BENCH_DIR / "weights" / INCEPTION_NOTOP
    if not path.is_file():
        print(f"bench: writing random InceptionV3 weights to {path}", flush=True)
        # TensorFlow's start-up lines go to stderr: shown only if the writing fails.
        done = subprocess.run([sys.executable, "-m", "scripts.random_weights", str(path)],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{done.stderr}\nerror: could not write {path} (above)")
    return path


def md5(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "md5").hexdigest()


# --- the steps ------------------------------------------------------------------------

def child_env() -> dict[str, str]:
    """This venv first on PATH (DVC's stage commands call `python`), unbuffered output
    (stage lines are timestamped as they arrive), quiet TensorFlow, a git identity."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    for role in ("AUTHOR", "COMMITTER"):
        env.setdefault(f"GIT_{role}_NAME", "bench")
        env.setdefault(f"GIT_{role}_EMAIL", "bench@localhost")
    return env


def naive_step(recipe: dict[str, Any], classes: Path, weights: Path, out: Path,
               env: dict[str, str], echo_all: bool, repeat: int) -> dict[str, Any]:
    result_file = out / "naive.json"
    result_file.unlink(missing_ok=True)  # never report an earlier run's figures
    options = [str(part) for key, option in RECIPE_KEYS.items()
               for part in (option, recipe[key])]
    command = [sys.executable, "-m", "scripts.naive_recipe", str(classes), str(weights),
               "--result", str(result_file), *options]
    measured = measure(command, ROOT, env, out / "logs" / f"a-naive-{repeat}.log", echo_all)
    check("a", measured)
    result = json.loads(result_file.read_text())
    return {"measured": measured, **result}


def pipeline_metrics(project: Path) -> dict[str, Any]:
    """Image counts and validation figures from the project's documented metrics files."""
    evaluated = json.loads((project / "metrics/evaluate/metrics.json").read_text())
    counts = json.loads((project / "metrics/data.json").read_text())["images"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    return {"train_images": sum(counts.values()) - evaluated["images"],
            "val_images": evaluated["images"],
            "epochs": params.get("head_epochs", 0) + params["epochs"],
            "accuracy": evaluated["accuracy"], "log_loss": evaluated["log_loss"],
            "lr": params["lr"]}


def first_repro(project: Path, params: dict[str, Any], out: Path, env: dict[str, str],
                echo_all: bool, repeat: int) -> dict[str, Any]:
    """Step b: the whole DAG's first `dvc repro` in a fresh copy of the project."""
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    copy_project(project, params)
    print(f"bench: b  dvc repro (whole DAG), repeat {repeat + 1}", flush=True)
    measured = measure([dvc_command(env), "repro"], project, env,
                       out / "logs" / f"b-repro-{repeat}.log", echo_all)
    check("b", measured)
    git("add", "-A", cwd=project)  # dvc exp run starts from a commit
    git("commit", "-q", "-m", "first dvc repro", cwd=project)
    return {"measured": measured, **pipeline_metrics(project)}


def experiment(project: Path, lr: float, out: Path, env: dict[str, str], echo_all: bool,
               repeat: int) -> dict[str, Any]:
    """Step c: `dvc exp run -S lr=LR` in b's project."""
    print(f"bench: c  dvc exp run -S lr={lr:g}, repeat {repeat + 1}", flush=True)
    command = [dvc_command(env), "exp", "run", "-S", f"lr={lr:g}"]
    measured = measure(command, project, env, out / "logs" / f"c-exp-run-{repeat}.log",
                       echo_all)
    check("c", measured)
    return {"measured": measured, **pipeline_metrics(project)}


def dvc_command(env: dict[str, str]) -> str:
    dvc = shutil.which("dvc", path=env["PATH"])  # this venv's, first on PATH
    if dvc is None:
        sys.exit(f"error: no dvc on PATH ({env['PATH']}): run `make setup` first")
    return dvc


# --- report ---------------------------------------------------------------------------

def work(result: dict[str, Any]) -> int:
    """The recipe's images: training x epochs, validation x epochs, validation once more."""
    epochs = result["epochs"]
    return result["train_images"] * epochs + result["val_images"] * (epochs + 1)


def spread(values: list[float | None]) -> dict[str, Any] | None:
    """Median, min and max of the repeats' values (None where a repeat has none)."""
    found = [value for value in values if value is not None]
    if not found:
        return None
    return {"median": statistics.median(found), "min": min(found), "max": max(found),
            "n": len(found)}


LABELS = {"a": "naive recipe (fit + evaluate)", "b": "dvc repro (whole DAG)",
          "c": "dvc exp run -S lr=..."}
NUMBERS = ("wall_s", "cpu_s", "max_rss_mib", "tree_rss_mib", "images_per_s", "accuracy",
           "log_loss")


def repeat_rows(step: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    """One repeat's rows: the step, the sum of its recipe stages, DVC's own time, train's
    start-up (the last three where the step has them)."""
    measured: Measured = result["measured"]
    base = {"accuracy": result["accuracy"], "log_loss": result["log_loss"],
            "images": work(result)}
    found = [{"step": step, "label": LABELS[step], "wall_s": measured.wall_s,
              "cpu_s": measured.cpu_s, "max_rss_mib": measured.max_rss_mib,
              "tree_rss_mib": measured.tree_rss_mib, **base}]
    found[0]["images_per_s"] = base["images"] / measured.wall_s
    recipe = [stage for stage in measured.stages if stage.name in RECIPE_STAGES]
    if recipe:
        wall = sum(stage.wall_s for stage in recipe)
        found.append({"step": f"{step}'", "wall_s": wall, "images_per_s": base["images"] / wall,
                      "label": f"  of which {'+'.join(stage.name for stage in recipe)}",
                      "tree_rss_mib": max(stage.tree_rss_mib for stage in recipe), **base})
    own = dvc_own_s(measured)
    if own is not None:
        found.append({"step": f"{step}-dvc", "label": "  DVC's own time (outside processes)",
                      "wall_s": own})
    startup = train_startup(measured)
    if startup is not None:
        found.append({"step": f"{step}-start", "label": "  train's start-up (to 1st epoch)",
                      "wall_s": startup["total"]})
    return found


def rows(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each row's figures over the repeats: {"median", "min", "max", "n"} (see spread)."""
    table = []
    for step, repeats in results.items():
        per_repeat = [repeat_rows(step, result) for result in repeats]
        for first in per_repeat[0]:
            same = [row for rows_ in per_repeat for row in rows_ if row["step"] == first["step"]]
            table.append({"step": first["step"], "label": first["label"],
                          **{name: spread([row.get(name) for row in same]) for name in NUMBERS}})
    return table


def median(row: dict[str, Any], name: str) -> float | None:
    return row[name]["median"] if row.get(name) else None


def ratios(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's medians against a's: wall time, images/s, and the peak RSS measured for
    both."""
    naive = next((row for row in table if row["step"] == "a"), None)
    if naive is None:
        return []
    found = []
    for row in table:
        if row["step"] == "a" or median(row, "images_per_s") is None:
            continue
        rss_kind = "max_rss_mib" if row["max_rss_mib"] is not None else "tree_rss_mib"
        cpu = median(row, "cpu_s")
        found.append({"ratio": f"{row['step']}/a",
                      "wall_s": median(row, "wall_s") / median(naive, "wall_s"),
                      "cpu_s": None if cpu is None else cpu / median(naive, "cpu_s"),
                      "images_per_s": median(row, "images_per_s") / median(naive, "images_per_s"),
                      "rss": median(row, rss_kind) / median(naive, rss_kind),
                      "rss_kind": rss_kind})
    return found


def number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def ranged(figure: dict[str, Any] | None, digits: int = 1) -> str:
    """"median [min-max]", or the one value of a single repeat."""
    if figure is None:
        return "-"
    if figure["n"] == 1:
        return number(figure["median"], digits)
    return (f"{number(figure['median'], digits)} [{number(figure['min'], digits)}-"
            f"{number(figure['max'], digits)}]")


def print_report(header: str, table: list[dict[str, Any]], found: list[dict[str, Any]],
                 results: dict[str, list[dict[str, Any]]], random: bool) -> None:
    print(f"\n{header}")
    caveat = "  (RANDOM weights, synthetic photos: meaningless)" if random else ""
    repeats = max(len(repeats) for repeats in results.values())
    print(f"each figure: median [min-max] of {repeats} repeats" if repeats > 1 else "")
    print(f"\n{'step':<9}{'':<36}{'wall s':>22}{'CPU s':>22}{'images/s':>20}"
          f"{'max RSS MiB':>20}{'tree RSS MiB':>20}{'val acc':>9}{'log loss':>10}{caveat}")
    for row in table:
        print(f"{row['step']:<9}{row['label']:<36}{ranged(row['wall_s']):>22}"
              f"{ranged(row['cpu_s']):>22}{ranged(row['images_per_s']):>20}"
              f"{ranged(row['max_rss_mib'], 0):>20}{ranged(row['tree_rss_mib'], 0):>20}"
              f"{number(median(row, 'accuracy'), 3):>9}{number(median(row, 'log_loss'), 4):>10}")
    if found:
        print(f"\n{'ratio':<12}{'wall time':>11}{'CPU time':>10}{'images/s':>10}{'peak RSS':>10}"
              "  (medians; RSS compared)")
        for ratio in found:
            print(f"{ratio['ratio']:<12}{ratio['wall_s']:>11.2f}{number(ratio['cpu_s'], 2):>10}"
                  f"{ratio['images_per_s']:>10.2f}"
                  f"{ratio['rss']:>10.2f}  ({ratio['rss_kind'].removesuffix('_mib')})")
    for step in ("b", "c"):
        if step in results:
            print_stages(step, [result["measured"] for result in results[step]])
            print_startup(step, [result["measured"] for result in results[step]])
    print("\nwhat the figures mean:")
    for name, meaning in DEFINITIONS.items():
        print(f"  {name}: {meaning}")
    for step, repeats in results.items():
        loads = [result["measured"].load_before for result in repeats]
        if max(loads) > 0.5:
            print(f"note: load average up to {max(loads):.1f} when step {step} started: other "
                  f"processes shared the {os.cpu_count()} CPUs, so its times are inflated")


def print_stages(step: str, repeats: list[Measured]) -> None:
    print(f"\nstages of {step}{'':<11}{'wall s':>22}{'tree RSS MiB':>20}")
    names = [stage.name for stage in repeats[0].stages]
    for name in names:
        walls = [stage.wall_s for measured in repeats for stage in measured.stages
                 if stage.name == name]
        peaks = [stage.tree_rss_mib for measured in repeats for stage in measured.stages
                 if stage.name == name]
        print(f"  {name:<22}{ranged(spread(walls)):>22}{ranged(spread(peaks), 0):>20}")
    outside = [measured.wall_s - sum(stage.wall_s for stage in measured.stages)
               for measured in repeats]
    print(f"  {'(dvc outside stages)':<22}{ranged(spread(outside)):>22}")
    own = [dvc_own_s(measured) for measured in repeats]
    print(f"  {'(dvc outside processes)':<22}{ranged(spread(own), 2):>22}")


def print_startup(step: str, repeats: list[Measured]) -> None:
    found = [startup for startup in map(train_startup, repeats) if startup]
    if not found:
        return
    print(f"\ntrain's start-up in {step}{'':<17}{'s':>22}")
    for name in ["total", *(name for name, _, _ in STARTUP_STEPS)]:
        print(f"  {name:<37}{ranged(spread([steps.get(name) for steps in found]), 2):>22}")


# --- main -----------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=1000,
                        help="training photos, half per class, split 80/20 (default: 1000; "
                             "Kaggle's: 25000)")
    parser.add_argument("--test", type=int, default=200,
                        help="test photos, predicted by the pipeline's submit (default: 200)")
    parser.add_argument("--layout-seed", type=int, default=0, help="seed of the photos")
    parser.add_argument("--photos", default="200", choices=("200", KAGGLE),
                        help="200x200 photos, or real Kaggle photos' sizes (default: 200)")
    parser.add_argument("--steps", default="abc", choices=("abc", "ab", "bc", "a", "b"),
                        help="which steps to run (c needs b)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each step, for the median and range (default: 3)")
    parser.add_argument("--exp-lr", type=float, default=1e-4,
                        help="lr of step c's first exp run (repeat k: x (k + 1))")
    parser.add_argument("--weights", type=Path,
                        help="real notop weights of --backbone (default: random InceptionV3)")
    parser.add_argument("--photo-sample", type=int, default=500,
                        help="photos of each size for the decoding comparison (default: 500)")
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"],
                        help="precisions of the decoding comparison's features loop "
                             "(default: float32 mixed_bfloat16)")
    parser.add_argument("--verbose", action="store_true", help="echo every line of the steps")
    for key in RECIPE_KEYS:
        kind = {"image_size": int, "batch_size": int, "epochs": int, "seed": int,
                "lr": float, "val_split": float}.get(key, str)
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, type=kind,
                            help=f"recipe's {key} (default: params.yaml's)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    recipe = {key: base[key] if getattr(args, key) is None else getattr(args, key)
              for key in RECIPE_KEYS}
    if args.weights is None and recipe["backbone"] != "InceptionV3":
        sys.exit("error: the random weights are InceptionV3's: give --weights for "
                 f"{recipe['backbone']}")
    env = child_env()
    photos = "" if args.photos == "200" else f"-{args.photos}"
    size = f"train{args.train}-test{args.test}-{recipe['image_size']}px{photos}"
    out = BENCH_DIR / size
    (out / "logs").mkdir(parents=True, exist_ok=True)

    print(f"bench: drawing or reusing {args.train:,} + {args.test:,} photos", flush=True)
    layout = make_layout(BENCH_DIR / "layouts" /
                         f"train{args.train}-test{args.test}-seed{args.layout_seed}{photos}"
                         / "kaggle", args.train, args.test, args.layout_seed,
                         KAGGLE if args.photos == KAGGLE else 200)
    classes = class_folders(layout)
    weights = (args.weights or random_weights(env)).resolve()
    params = {**recipe, "data_source": str(layout), "weights_urls": [str(weights)],
              "weights_hash": f"md5:{md5(weights)}"}

    print("bench: decoding alone and in the features loop, 200x200 and real-size photos",
          flush=True)
    decoding = decode_step(args, recipe, weights, env)
    results: dict[str, list[dict[str, Any]]] = {}
    project = out / "project"
    for repeat in range(args.repeats):
        if "a" in args.steps:
            print(f"bench: a  naive recipe, repeat {repeat + 1}", flush=True)
            results.setdefault("a", []).append(
                naive_step(recipe, classes, weights, out, env, args.verbose, repeat))
        if "b" in args.steps:
            results.setdefault("b", []).append(
                first_repro(project, params, out, env, args.verbose, repeat))
    if "c" in args.steps:
        results["c"] = [experiment(project, args.exp_lr * (repeat + 1), out, env, args.verbose,
                                   repeat) for repeat in range(args.repeats)]
    report(args, recipe, results, decoding, layout, weights, out)


def decode_step(args: argparse.Namespace, recipe: dict[str, Any], weights: Path,
                env: dict[str, str]) -> dict[str, Any]:
    """scripts/bench_decode.py's figures on --photo-sample photos of each size, 200x200 then
    real-size, with the recipe's frozen part in each of --precisions (a child process: this
    one never imports TensorFlow)."""
    folders = [make_layout(BENCH_DIR / "layouts" /
                           f"photos{args.photo_sample}-seed{args.layout_seed}{suffix}",
                           args.photo_sample, 1, args.layout_seed, size) / "train"
               for suffix, size in (("", 200), (f"-{KAGGLE}", KAGGLE))]
    recipe_params = [part for key in ("backbone", "unfreeze_after", "image_size")
                     for part in ("--param", f"{key}={recipe[key]}")]
    command = [sys.executable, "-m", "scripts.bench_decode", *map(str, folders),
               "--limit", str(args.photo_sample), "--network", str(weights),
               "--precisions", *args.precisions, *recipe_params]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode:
        sys.exit(f"error: {' '.join(command)} failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def features_rate(results: dict[str, list[dict[str, Any]]], images: int) -> float | None:
    """The features stage's images/s in step b, its start-up included (median of the
    repeats)."""
    walls = [stage.wall_s for result in results.get("b", [])
             for stage in result["measured"].stages if stage.name == "features"]
    return images / statistics.median(walls) if walls else None


# The bar: the features loop on real-size photos within 15% of its 200x200 rate.
WITHIN = 0.15


def print_decoding(decoding: dict[str, Any], network: float | None, photos: str) -> None:
    small, real = decoding["folders"]
    print(f"\ndecoding, side by side: {small['images']:,} photos of each size to "
          f"{decoding['image_size']} px, images/s (median of {decoding['repeats']}, "
          "interleaved); 'features': the features stage's loop (decode, "
          f"{decoding['network']}'s frozen part, rows written)")
    print(f"  {'':<26}{'200x200':>12}{size_label(real):>12}"
          f"{'real/200':>10}")
    for kind, rate in small["rates"].items():
        ratio = real["rates"][kind]["median"] / rate["median"]
        verdict = "" if kind == "decode" else (
            f"  within {WITHIN:.0%}: {'yes' if ratio >= 1 - WITHIN else 'NO'}; decoding alone "
            f"{real['rates']['decode']['median'] / real['rates'][kind]['median']:.1f}x as fast")
        print(f"  {kind:<26}{rate['median']:>12,.0f}{real['rates'][kind]['median']:>12,.0f}"
              f"{ratio:>10.2f}{verdict}")
    if network:
        decode = (real if photos == KAGGLE else small)["rates"]["decode"]["median"]
        print(f"  the features stage in b (its photos, start-up included): {network:,.1f} "
              f"images/s; decoding alone is {decode / network:.1f}x as fast")


def report(args: argparse.Namespace, recipe: dict[str, Any],
           results: dict[str, list[dict[str, Any]]], decoding: dict[str, Any], layout: Path,
           weights: Path, out: Path) -> None:
    random = args.weights is None
    table, header = rows(results), (
        f"bench: {args.train:,} training photos (split {1 - recipe['val_split']:.0%}/"
        f"{recipe['val_split']:.0%}), {args.test:,} test photos, {recipe['image_size']} px, "
        f"batch {recipe['batch_size']}, {recipe['epochs']} epochs, {recipe['backbone']} "
        f"{'RANDOM weights' if random else f'weights {weights.name}'}, {os.cpu_count()} CPUs"
        f"\nphotos: {layout} (b, c: data_source) = {layout.parent / 'classes'} "
        "(a: hard links to the same files)")
    found = ratios(table)
    print_report(header, table, found, results, random)
    network = features_rate(results, args.train + args.test)
    print_decoding(decoding, network, args.photos)
    document = {
        "header": header, "args": {k: str(v) for k, v in vars(args).items()}, "recipe": recipe,
        "layout": str(layout), "weights": str(weights), "random_weights": random,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "definitions": DEFINITIONS, "rows": table, "ratios": found,
        "decoding": decoding, "features_images_per_s": network,
        "steps": {step: [{**result, "measured": asdict(result["measured"]),
                          "dvc_own_s": dvc_own_s(result["measured"]),
                          "train_startup_s": train_startup(result["measured"])}
                         for result in repeats]
                  for step, repeats in results.items()},
    }
    path = out / "results.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nbench: results in {path}")


if __name__ == "__main__":
    main()
