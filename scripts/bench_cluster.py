"""The features stage serially and on a local Dask cluster, as a DVC transcript.

    python -m scripts.bench_cluster [--train 400] [--test 200] [--workers 2]

In build/bench-cluster/: synthetic 200x200 photos in Kaggle's layout (scripts.make_layout),
random InceptionV3 weights (scripts.random_weights; the speed is the network's, whatever
its weights), and a fresh copy of the project with the default recipe reading them. Then
it runs, printing each command, its output and its wall time:

    dvc repro features                      the serial path (cluster: "")
    dvc exp run -S cluster=local features   reruns nothing: `cluster` changes no output
    dvc repro -f -s features                the same stage again, on the local cluster
    git diff --exit-code dvc.lock           no change: DVC hashed the same bytes

The stage's own lines give images/s of each image set and the cluster's start-up time.
Needs Dask: `make setup EXTRAS=dask`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from scripts.bench import child_env
from scripts.demo import copy_project, git
from scripts.make_layout import make_layout
from scripts.random_weights import INCEPTION_NOTOP, write_random_inception

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "build" / "bench-cluster"


def show(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    """Run `command` in `cwd`, echoing it and its output as a transcript, then its time."""
    print(f"$ {' '.join(command)}", flush=True)
    start = time.monotonic()
    done = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    print(done.stdout, end="", flush=True)
    print(f"[{time.monotonic() - start:.1f} s]", flush=True)
    if done.returncode:
        sys.exit(f"error: `{' '.join(command)}` failed (above)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=400, help="training photos (default 400)")
    parser.add_argument("--test", type=int, default=200, help="test photos (default 200)")
    parser.add_argument("--workers", type=int, default=2, help="Dask workers (default 2)")
    args = parser.parse_args()
    layout = make_layout(BENCH_DIR / f"layout-{args.train}-{args.test}", args.train, args.test)
    weights = BENCH_DIR / "weights" / INCEPTION_NOTOP
    if not weights.is_file():
        write_random_inception(weights)
    project = BENCH_DIR / "project"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    copy_project(project, {"data_source": str(layout), "weights_urls": [str(weights)],
                           "weights_hash": "", "cluster_workers": args.workers})
    env = child_env()  # this venv's python first on PATH, as for make bench
    print(f"bench_cluster: {args.train:,} training and {args.test:,} test photos, InceptionV3 "
          f"(random weights) up to mixed6 at 150 px, {os.cpu_count()} cores, in {project}")
    show(["dvc", "repro", "features"], project, env)
    git("add", "-A", cwd=project)  # dvc exp run starts from a commit
    git("commit", "-q", "-m", "dvc repro features", cwd=project)
    show(["dvc", "exp", "run", "-S", "cluster=local", "features"], project, env)
    show(["dvc", "repro", "-f", "-s", "features"], project, env)
    show(["git", "diff", "--exit-code", "dvc.lock"], project, env)  # fails if it changed


if __name__ == "__main__":
    main()
