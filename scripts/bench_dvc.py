"""DVC's own time in an experiment, and where it goes: `dvc exp run -S lr=...` in a project
that has run its pipeline (make bench's build/bench/<size>/project, or any copy).

    python -m scripts.bench_dvc PROJECT [--lr 1e-4] [--repeats 3] [--repro]
                                [--setup LAYOUT] [--no-profile]

`--setup LAYOUT` first makes PROJECT: the project copied with a cheap configuration (the
demo's MobileNet alpha 0.25 and its weights from ../shared, 96 px, batch 64, 1 epoch) reading LAYOUT
(scripts/make_layout.py's, e.g. the full size: `--train 21000 --test 12500 --size kaggle`),
its first `dvc repro` run and committed: DVC's own time depends on the files' number and
size, not on the network, so a cheap one measures it at full size in minutes.

Each repeat runs `dvc exp run -S lr=LR x (k + 1)` (a value of its own: DVC's run-cache would
otherwise restore an earlier repeat's outputs instead of running the stages) and measures
DVC's own time: the wall time outside the stage processes (the marks of
finetune.core.timings, as scripts/bench.py). One more run, under cProfile (`dvc
--cprofile-dump`, which slows DVC itself: 9.7 s of its own time instead of 7.7 at full
size), says where DVC's time goes: the
cumulative time of the DVC functions that do each upstream check, as a share of the
profiled run's own time. `--repro` times `dvc repro` after setting the same params instead
(what exp run adds: the checkout of every output first, git's stash and commit).
The repeats change the project's workspace (its last experiment stays applied).
"""

from __future__ import annotations

import argparse
import pstats
import sys
import tempfile
from pathlib import Path

from scripts.bench import (
    Measured,
    child_env,
    dvc_command,
    dvc_own_s,
    measure,
    ranged,
    spread,
)
from scripts.demo import MOBILENET_PARAMS, copy_project, git

# Where DVC's own time goes, by the DVC function doing it: (what, file, function). Rows
# marked "  " lie within the row above them.
UPSTREAM = (
    ("exp run: every output checked out before the run", "dvc/repo/checkout.py", "checkout"),
    ("  the workspace's index (each file stat'ed, its hash from the state db)",
     "dvc/repo/index.py", "build_data_index"),
    ("  compared with dvc.lock's", "dvc_data/index/checkout.py", "compare"),
    ("unchanged stages: deps and outs hashed (state db), cache checked",
     "dvc/stage/__init__.py", "changed"),
    ("dvc.lock rewritten after each stage (round-trip YAML)", "dvc/dvcfile.py",
     "_dump_lockfile"),
    ("dvc.yaml and dvc.lock read again (the repo's index)", "dvc/repo/index.py", "from_repo"),
    ("git: each stage's files staged (autostage)", "dvc/stage/utils.py", "_get_stage_files"),
    ("git: the experiment stashed (queue)", "dvc/repo/experiments/queue/workspace.py", "put"),
    ("git: the experiment committed", "dvc/repo/experiments/executor/base.py",
     "_repro_commit"),
    ("Studio's live metrics: params read (no Studio set up)", "dvc/repo/params/show.py",
     "show"),
    ("YAML parsed, in all of the above (either loader)", "dvc/utils/serialize/_yaml.py",
     "parse_yaml"),
    ("  of it round-trip (for the rewrites)", "dvc/utils/serialize/_yaml.py",
     "parse_yaml_for_update"),
)


def command(lr: float, repro: bool, profile: Path | None) -> list[str]:
    # params.yaml's lr is set first for repro (set_lr); DVC's debug options follow the
    # subcommand
    found = [dvc_command(child_env()), *(["repro"] if repro else ["exp", "run"])]
    if profile is not None:
        found += ["--cprofile-dump", str(profile)]
    return found if repro else [*found, "-S", f"lr={lr:g}"]


def set_lr(project: Path, lr: float) -> None:
    """params.yaml's lr set as `-S` would (for --repro)."""
    params = project / "params.yaml"
    lines = [f"lr: {lr:g}" if line.startswith("lr:") else line
             for line in params.read_text().splitlines()]
    params.write_text("\n".join(lines) + "\n")


def run(project: Path, lr: float, repro: bool, log: Path, profile: Path | None = None
        ) -> Measured:
    if repro:
        set_lr(project, lr)
    measured = measure(command(lr, repro, profile), project, child_env(), log, echo_all=False)
    if measured.returncode:
        sys.exit(f"error: {' '.join(measured.command)} failed; log: {log}")
    return measured


def upstream(profile: Path) -> tuple[float, dict[str, float]]:
    """The profiled run's total time and each UPSTREAM row's cumulative time."""
    stats = pstats.Stats(str(profile))
    found = dict.fromkeys((what for what, _, _ in UPSTREAM), 0.0)
    for (file, _, function), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        for what, suffix, name in UPSTREAM:
            if function == name and file.endswith(suffix):
                found[what] += cumulative
    return stats.total_tt, found  # type: ignore[attr-defined]


def set_up(project: Path, layout: Path) -> None:
    """PROJECT made (see the module's docstring), its first `dvc repro` committed."""
    if project.exists():
        sys.exit(f"error: {project} exists: --setup makes a new project")
    project.mkdir(parents=True)
    copy_project(project, {**MOBILENET_PARAMS, "data_source": str(layout.resolve()),
                           "image_size": 96, "epochs": 1, "batch_size": 64})
    print(f"bench_dvc: first dvc repro in {project}", flush=True)
    measured = measure([dvc_command(child_env()), "repro"], project, child_env(),
                       project.parent / "setup-repro.log", echo_all=False)
    if measured.returncode:
        sys.exit(f"error: dvc repro failed in {project}; log: {project.parent}/setup-repro.log")
    git("add", "-A", cwd=project)
    git("commit", "-q", "-m", "first dvc repro", cwd=project)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("project", type=Path, help="a project whose pipeline has run")
    parser.add_argument("--lr", type=float, default=1e-4, help="lr of the first repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (default: 3)")
    parser.add_argument("--repro", action="store_true",
                        help="time `dvc repro` after setting lr, instead of `dvc exp run -S`")
    parser.add_argument("--setup", type=Path, metavar="LAYOUT",
                        help="first make PROJECT, reading this layout (see above)")
    parser.add_argument("--no-profile", action="store_true",
                        help="skip the profiled run (to interleave two projects' repeats)")
    args = parser.parse_args()
    project = args.project.resolve()
    if args.setup is not None:
        set_up(project, args.setup)
    what = "dvc repro (lr set)" if args.repro else "dvc exp run -S lr=..."
    with tempfile.TemporaryDirectory() as scratch:
        logs = Path(scratch)
        timed = [run(project, args.lr * (k + 1), args.repro, logs / f"run-{k}.log")
                 for k in range(args.repeats)]
        own = [dvc_own_s(measured) for measured in timed]
        print(f"{what} in {project}, {args.repeats} repeats: median [min-max]")
        print(f"  wall time            {ranged(spread([m.wall_s for m in timed]), 2):>22} s")
        print(f"  DVC's own time       {ranged(spread(own), 2):>22} s", flush=True)
        if args.no_profile:
            return
        profile = logs / "dvc.prof"
        profiled = run(project, args.lr * (args.repeats + 1), args.repro,
                       logs / "profiled.log", profile)
        total, found = upstream(profile)
    profiled_own = dvc_own_s(profiled) or 0.0
    print(f"\nwhere DVC's time goes: one run under cProfile ({profiled.wall_s:.1f} s, "
          f"{profiled_own:.1f} s of it DVC's own); rows with \"  \" lie within the one above")
    outside = profiled.wall_s - total
    print(f"  {'python start, DVC imported':<72}{outside:>7.2f} s")
    for name, seconds in found.items():
        print(f"  {name:<72}{seconds:>7.2f} s {seconds / profiled_own:>5.0%}")


if __name__ == "__main__":
    main()
