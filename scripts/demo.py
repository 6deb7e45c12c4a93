"""Offline smoke run of the whole DAG on the small shared sample (`make demo`).

A SMOKE RUN, NOT THE REAL RESULT: it trains on 1,000 photos (800 training, 200
validation) from ../shared instead of Kaggle's 25,000, with the small MobileNet
(alpha 0.25) whose ImageNet weights are in ../shared instead of InceptionV3.

It copies the project into build/demo (a fresh git repo, so your params.yaml and
DVC cache stay untouched), points data_source and weights_urls at ../shared,
runs `dvc repro` there, commits the run (so `dvc metrics diff` and `dvc exp show` have
a baseline to compare with), prints `dvc metrics show` and the commands to try next.
With `--docs-image` it copies the run's mistakes grid (with its Grad-CAM heat maps) to
DOCS_GRID, the image docs/pipeline.md shows, in 256 colours (a quarter of the bytes); not
by default, so that `make demo` never changes a tracked file of the project.
A build/demo holding experiments is not deleted unless asked (`make demo REPLACE=1`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from finetune.core.paths import DEMO_DIR, MISTAKES_GRID
from finetune.sources.web import PET_IMAGES_URL

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SAMPLE = SHARED / "data" / "dogs-vs-cats-sample"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
MOBILENET_SHA256 = "dbdb03ee2a22fd895301636cd328b234bb3a9952358f436d82f46b81e0d5b0bf"
DOCS_GRID = ROOT / "docs" / "images" / "mistakes-grad-cam.png"  # shown by docs/pipeline.md

# MobileNet alpha 0.25, frozen, global-average-pooling head: the configuration
# that shows transfer on the sample (see docs/results.md).
MOBILENET_PARAMS: dict[str, Any] = {
    "backbone": "MobileNet",
    "alpha": 0.25,
    "weights_urls": [str(MOBILENET_WEIGHTS)],
    "weights_hash": f"sha256:{MOBILENET_SHA256}",
    "cut_layer": "conv_pw_13_relu",
    "unfreeze_after": "conv_pw_13_relu",
    "head": "gap",
    "dense_units": 0,
    "image_size": 224,
    "batch_size": 32,
    "epochs": 20,
    "lr": 1.0e-3,
}
DVC_ENV = {**os.environ, "DVC_NO_ANALYTICS": "1"}
# The closing table: the headline metrics and the params that say what ran (88 columns;
# `dvc metrics show` prints every per-class score, 24 columns).
SUMMARY = ["dvc", "exp", "show", "--drop", ".*", "--precision", "4", "--keep",
           "^(Experiment|accuracy|log_loss|roc_auc|backbone|image_size|epochs|lr)$"]


def git(*args: str, cwd: Path) -> str:
    """Run `git ARGS` in `cwd` (with an identity for commits); return what it printed."""
    identity = {"GIT_AUTHOR_NAME": "demo", "GIT_AUTHOR_EMAIL": "demo@localhost",
                "GIT_COMMITTER_NAME": "demo", "GIT_COMMITTER_EMAIL": "demo@localhost"}
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, **identity}).stdout


def copy_project(destination: Path, params: dict[str, Any] | None = None) -> Path:
    """Copy the project's files (tracked or not ignored by git) into a new git repo there,
    with `params` merged into its params.yaml, and commit them."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file() and not name.startswith(("build/", ".venv/")):
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    if params:
        params_file = destination / "params.yaml"
        merged = {**yaml.safe_load(params_file.read_text()), **params}
        params_file.write_text(yaml.safe_dump(merged, sort_keys=False))
    git("init", "-q", "-b", "main", cwd=destination)
    git("add", "-A", cwd=destination)
    git("commit", "-q", "-m", "copy of the project", cwd=destination)
    return destination


def experiments_in(project: Path) -> list[str]:
    """The names of the experiments DVC keeps in `project`'s git repo: refs/exps/<2 hex>/
    <rest of the baseline commit>/<name> (queued and running ones are stashes, not these)."""
    if not (project / ".git").exists():
        return []
    refs = git("for-each-ref", "--format=%(refname)", "refs/exps/", cwd=project).split()
    return [ref.rsplit("/", 1)[-1] for ref in refs if len(ref.split("/")) == 5]


def make_room(demo: Path, replace: bool) -> None:
    """Delete an earlier demo, unless it holds experiments and `replace` was not asked for
    (its experiments would go with it)."""
    names = experiments_in(demo)
    if names and not replace:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        sys.exit(f"error: {demo} holds {len(names)} experiment(s) ({shown}): `make demo "
                 f"REPLACE=1` deletes them with it, or move {demo} away first")
    shutil.rmtree(demo, ignore_errors=True)


def commit_run(demo: Path) -> None:
    """Commit the first run, as the baseline `dvc metrics diff` and `dvc exp show` compare
    experiments with."""
    git("add", "-A", cwd=demo)
    git("commit", "-q", "-m", "the demo's first run (dvc repro)", cwd=demo)


def build_demo(demo: Path, output: int | None = None) -> None:
    """The demo project at `demo`: the project copied with the demo's params, its first
    `dvc repro` run and committed (`output`: where DVC's output goes, e.g. DEVNULL)."""
    demo.mkdir(parents=True)
    copy_project(demo, {"data_source": str(SAMPLE), **MOBILENET_PARAMS})
    subprocess.run(["dvc", "repro"], cwd=demo, check=True, env=DVC_ENV, stdout=output,
                   stderr=output)
    commit_run(demo)


def copy_grid(demo: Path) -> None:
    """The run's mistakes grid to DOCS_GRID, in 256 colours: the full-colour PNG of photos
    is about 1 MB, too much to commit; the palette one reads the same."""
    from PIL import Image

    DOCS_GRID.parent.mkdir(exist_ok=True)
    with Image.open(demo / MISTAKES_GRID) as grid:
        grid.convert("RGB").quantize(256).save(DOCS_GRID, optimize=True)
    print(f"demo: copied {MISTAKES_GRID} to {os.path.relpath(DOCS_GRID, ROOT)} (256 colours)",
          flush=True)


def next_steps(demo: Path) -> str:
    """What to try next, as commands to paste."""
    relative = os.path.relpath(demo, ROOT)
    return (f"demo: committed the run in {relative}. Try an experiment:\n"
            f"  cd {relative} && source {os.path.relpath(ROOT / '.venv', demo)}/bin/activate\n"
            "  dvc exp run -S lr=1e-4\n"
            "  dvc metrics diff\n"
            "  make exps")


def main() -> None:
    parser = argparse.ArgumentParser(description="The offline demo (make demo).")
    parser.add_argument("--replace", action="store_true",
                        help="delete an earlier build/demo even if it holds experiments")
    parser.add_argument("--docs-image", action="store_true",
                        help=f"copy the run's mistakes grid to {DOCS_GRID.relative_to(ROOT)}")
    args = parser.parse_args()
    if not SAMPLE.is_dir() or not MOBILENET_WEIGHTS.is_file():
        sys.exit(f"error: the demo needs the shared sample data and MobileNet weights at "
                 f"{SHARED}\n"
                 "Without them, and without a Kaggle account, this downloads ~800 MB of photos "
                 "and the InceptionV3 weights and runs the real pipeline:\n"
                 f"  cd {ROOT} && make setup && source .venv/bin/activate && "
                 f"dvc exp run -S data_source={PET_IMAGES_URL}")
    demo = ROOT / DEMO_DIR
    make_room(demo, args.replace)
    print("demo: SMOKE RUN on the 1,000-photo sample with MobileNet alpha 0.25, in "
          f"{os.path.relpath(demo, ROOT)}", flush=True)
    build_demo(demo)
    if args.docs_image:
        copy_grid(demo)
    subprocess.run(SUMMARY, cwd=demo, check=True, env=DVC_ENV)
    print(next_steps(demo))


if __name__ == "__main__":
    main()
