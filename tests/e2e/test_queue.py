"""Queued grids: `dvc exp run --queue -S 'lr=...,...'` then `dvc queue start -j 2`, real
DVC (its Celery queue) and git, offline, on a tiny project of drawn photos.

Queued experiments run in copies of the project under .dvc/tmp/exps/, so these check
what a copy changes: relative paths in params.yaml (`data_source: ../photos`) still
name the project's neighbours (stages.paths.project_path), cached features are reused
(each queued run trains on them; none extracts them again), `threads` splits the cores
between jobs without changing a result, and a killed job fails visibly and leaves
nothing behind that stops the next run. Upstream issues around the queue:
treeverse/dvc#10673 (-j > 1 failures without logs), #10562, #10293 (each job checks
the whole data folder out).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune.core.paths import FEATURES_DIR
from scripts.demo import copy_project, git
from tests.support.commands import dvc, ran_stages, stage_env
from tests.support.photos import make_class_folders
from tests.support.projects import SMALL_NETWORK

pytestmark = pytest.mark.scale

GRID = ("1e-3", "3e-2")  # lr of the two queued experiments
# Each queued run spells the local paths anew (the same files), so that fetch_data and
# fetch_weights run in the copy and must find ../photos and ../weights.h5 from there;
# their outputs hash as the baseline's, so everything downstream of them is cached.
RESPELLED = ("-S", "data_source=./../photos", "-S", "weights_urls=[./../weights.h5]")
THREADS = ("-S", "threads=1")  # two jobs on two cores: one each (tracked by no stage)
RERUN = ["fetch_data", "fetch_weights", "train", "evaluate", "submit", "export"]
WAIT_S = 300


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, mobilenet_random_weights) -> tuple[Path, dict[str, str]]:
    """root/project after its first `dvc repro`, committed; its params name the photos
    and the weights relatively, as ../photos and ../weights.h5 (siblings in root)."""
    root = tmp_path_factory.mktemp("queue")
    make_class_folders(root / "photos")
    shutil.copy(mobilenet_random_weights, root / "weights.h5")
    project = root / "project"
    project.mkdir()
    copy_project(project, {"data_source": "../photos", "weights_urls": ["../weights.h5"],
                           "weights_hash": "", **SMALL_NETWORK, "epochs": 2})
    env = stage_env()
    first = dvc(project, env, "repro")
    assert ran_stages(first.stdout) == [
        "fetch_data", "split_classes", "fetch_weights", "features", "mirrored_features", "train",
        "evaluate", "submit", "export"]
    git("add", "-A", cwd=project)
    git("commit", "-qm", "baseline", cwd=project)
    return project, env


def twin(project: Path, name: str) -> Path:
    """A copy of the committed baseline beside it (the relative paths still hold), with
    its own cache: a run there finds nothing another test ran in its cache."""
    copy = project.parent / name
    shutil.copytree(project, copy, symlinks=True)
    return copy


def queue_tasks(project: Path, env: dict[str, str]) -> dict[str, str]:
    """Name -> status (Queued, Running, Success, Failed) from `dvc queue status`,
    whose rows read "TASK NAME CREATED STATUS" (CREATED is a time such as "02:23 PM")."""
    out = dvc(project, env, "queue", "status").stdout
    rows = out.split("\n\n")[0].splitlines()[1:]
    return {row.split()[1]: row.split()[-1] for row in rows if row.strip()}


def start_queue(project: Path, env: dict[str, str], jobs: int) -> None:
    """`dvc queue start -j JOBS`. The workers it starts inherit its stdout and stderr and
    outlive it: captured (a pipe), `dvc queue start` would seem to run until they exit,
    so its output goes to a file."""
    log = project.parent / f"{project.name}-queue-start.log"
    with log.open("w") as stream:
        result = subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=project,
                                env=env, stdout=stream, stderr=subprocess.STDOUT, timeout=120)
    assert result.returncode == 0, log.read_text()


def stop_queue(project: Path, env: dict[str, str]) -> None:
    """Kill what still runs and stop the workers, whatever happened (a worker would
    otherwise outlive the test)."""
    subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=project, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


def wait_for_queue(project: Path, env: dict[str, str]) -> dict[str, str]:
    """The tasks' statuses once none is queued or running."""
    deadline = time.monotonic() + WAIT_S
    while True:
        tasks = queue_tasks(project, env)
        if not {"Queued", "Running"} & set(tasks.values()):
            return tasks
        assert time.monotonic() < deadline, f"queue still busy after {WAIT_S} s: {tasks}"
        time.sleep(1)


def experiments(project: Path, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Name -> {"lr", "loss", "features", "error"} of the baseline's experiments, from
    `dvc exp show --json` (loss: the validation log loss of `evaluate`)."""
    shown = json.loads(dvc(project, env, "exp", "show", "--json").stdout)
    found = {}
    for commit in shown:
        for experiment in commit.get("experiments") or []:
            for rev in experiment["revs"]:
                data = rev["data"]
                found[rev["name"]] = {
                    "lr": data["params"]["params.yaml"]["data"]["lr"],
                    "loss": data["metrics"]["metrics/evaluate/metrics.json"]["data"]["log_loss"],
                    "features": data["deps"]["data/features"]["hash"],
                    "error": rev["error"],
                }
    return found


def features_hash(project: Path) -> str:
    """The hash of data/features that project/dvc.lock records."""
    outs = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["features"]["outs"]
    return next(out["md5"] for out in outs if out["path"] == FEATURES_DIR.as_posix())


def test_a_queued_grid_runs_both_jobs_on_the_cached_features(baseline):
    project, env = baseline
    grid, serial = twin(project, "grid"), twin(project, "serial")
    features = features_hash(project)

    dvc(grid, env, "exp", "run", "--queue", "-S", f"lr={','.join(GRID)}", *RESPELLED, *THREADS)
    assert sorted(queue_tasks(grid, env).values()) == ["Queued", "Queued"]
    started = time.monotonic()
    try:
        start_queue(grid, env, 2)
        tasks = wait_for_queue(grid, env)
    finally:
        stop_queue(grid, env)
    grid_s = time.monotonic() - started
    assert sorted(tasks.values()) == ["Success", "Success"], tasks

    queued = experiments(grid, env)
    assert sorted(float(run["lr"]) for run in queued.values()) == sorted(map(float, GRID))
    assert all(run["error"] is None for run in queued.values()), queued
    assert len({run["loss"] for run in queued.values()}) == 2, queued
    # Each ran the fetch stages in its copy, then trained on the baseline's features.
    assert {run["features"] for run in queued.values()} == {features}
    for name in queued:
        log = dvc(grid, env, "queue", "logs", name).stdout
        assert ran_stages(log) == RERUN, log
        assert "Stage 'features' didn't change, skipping" in log
        copied = next(line for line in log.splitlines() if "copying the data from" in line)
        assert copied.endswith(str((grid / "../photos").resolve())), copied  # not the copy's
    assert not list((grid / ".dvc" / "tmp" / "exps").glob("tmp*")), "a copy was left behind"

    # The same two, one after another in the workspace, on all cores (threads: 0).
    serial_s, serial_loss = 0.0, {}
    for lr in GRID:
        # DVC's run-cache would restore the first run's fetch stages for the second one,
        # which the queued jobs, running side by side, could not.
        shutil.rmtree(serial / ".dvc" / "cache" / "runs", ignore_errors=True)
        started = time.monotonic()
        result = dvc(serial, env, "exp", "run", "-S", f"lr={lr}", *RESPELLED)
        serial_s += time.monotonic() - started
        assert ran_stages(result.stdout) == RERUN, result.stdout
        serial_loss[float(lr)] = json.loads(
            (serial / "metrics/evaluate/metrics.json").read_text())["log_loss"]
        git("checkout", "-q", ".", cwd=serial)  # back to the baseline for the next one
        dvc(serial, env, "checkout", "--force")
    # threads changes how fast, not what: the queued runs (threads: 1) score the same.
    assert {float(run["lr"]): run["loss"] for run in queued.values()} == pytest.approx(
        serial_loss, rel=1e-6)
    print(f"\nqueued grid of {len(GRID)} (dvc queue start -j 2, threads 1 each): {grid_s:.1f} s; "
          f"one after another (dvc exp run, threads 0): {serial_s:.1f} s; "
          f"ratio {grid_s / serial_s:.2f}")


def test_a_killed_job_fails_visibly_and_the_next_one_runs(baseline):
    project, env = baseline
    project = twin(project, "killed")
    # Long enough to be killed mid-way (a few minutes, should the kill fail).
    dvc(project, env, "exp", "run", "--queue", "-n", "endless", "-S", "epochs=1000")
    try:
        start_queue(project, env, 1)
        deadline = time.monotonic() + WAIT_S
        while "Epoch 2/" not in dvc(project, env, "queue", "logs", "endless", ok=False).stdout:
            assert time.monotonic() < deadline, "training never started"
            time.sleep(1)
        dvc(project, env, "queue", "kill", "endless")
        assert wait_for_queue(project, env) == {"endless": "Failed"}
        log = dvc(project, env, "queue", "logs", "endless").stdout
        assert "error: interrupted" in log and "failed to reproduce 'train'" in log, log
        assert experiments(project, env)["endless"]["error"] is not None
        # Nothing left behind: no copy, no scratch, the workspace as committed.
        assert not list((project / ".dvc" / "tmp" / "exps").glob("tmp*"))
        assert not (project / "models" / ".train-backup").exists()
        assert git_status(project) == ""

        dvc(project, env, "exp", "run", "--queue", "-n", "after", "-S", "lr=1e-3")
        start_queue(project, env, 1)
        assert wait_for_queue(project, env) == {"endless": "Failed", "after": "Success"}
    finally:
        stop_queue(project, env)
    after = dvc(project, env, "exp", "run", "-S", "lr=3e-2")  # and in the workspace
    assert ran_stages(after.stdout) == ["train", "evaluate", "submit", "export"], after.stdout


def git_status(project: Path) -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=project, check=True,
                          capture_output=True, text=True).stdout
