"""The demo's workflow (scripts/demo.py, `make demo`): a committed first run to compare
experiments with, the commands to try next, and experiments that a second `make demo`
does not delete unless asked. (The demo's own run needs ../shared: `make demo`.)"""

from __future__ import annotations

import pytest

from scripts.demo import commit_run, experiments_in, git, make_room, next_steps
from tests.support.shared import ROOT


def project_with_a_commit(folder):
    folder.mkdir()
    (folder / "params.yaml").write_text("lr: 0.001\n")
    git("init", "-q", "-b", "main", cwd=folder)
    git("add", "-A", cwd=folder)
    git("commit", "-qm", "copy of the project", cwd=folder)
    return folder


def test_an_earlier_demo_without_experiments_is_replaced(tmp_path):
    demo = project_with_a_commit(tmp_path / "demo")
    make_room(demo, replace=False)
    assert not demo.exists()


def test_an_earlier_demo_with_experiments_is_kept_unless_replace_is_asked(tmp_path):
    demo = project_with_a_commit(tmp_path / "demo")
    # As DVC keeps them: an experiment's ref, and the stash of queued ones (not experiments).
    git("update-ref", "refs/exps/ab/cdef0123456789/medal-jura", "HEAD", cwd=demo)
    git("update-ref", "refs/exps/celery/stash", "HEAD", cwd=demo)
    assert experiments_in(demo) == ["medal-jura"]
    with pytest.raises(SystemExit) as refused:
        make_room(demo, replace=False)
    assert str(refused.value) == (
        f"error: {demo} holds 1 experiment(s) (medal-jura): `make demo REPLACE=1` deletes "
        f"them with it, or move {demo} away first")
    assert (demo / "params.yaml").is_file()
    make_room(demo, replace=True)
    assert not demo.exists()


def test_the_first_run_is_committed_as_the_baseline(tmp_path):
    demo = project_with_a_commit(tmp_path / "demo")
    (demo / "dvc.lock").write_text("schema: '2.0'\n")  # what `dvc repro` leaves
    (demo / "metrics").mkdir()
    (demo / "metrics" / "data.json").write_text("{}\n")
    commit_run(demo)
    assert git("status", "--porcelain", cwd=demo) == ""
    tracked = git("ls-files", cwd=demo).split()
    assert {"dvc.lock", "metrics/data.json"} <= set(tracked)


def test_the_demo_ends_with_the_commands_to_try():
    assert next_steps(ROOT / "build" / "demo").splitlines() == [
        "demo: committed the run in build/demo. Try an experiment:",
        "  cd build/demo && source ../../.venv/bin/activate",
        "  dvc exp run -S lr=1e-4",
        "  dvc metrics diff",
        "  make exps",
    ]


def test_without_the_shared_files_the_demo_names_a_first_run_without_kaggle(
        tmp_path, monkeypatch):
    import scripts.demo as demo
    from finetune.sources.web import PET_IMAGES_URL

    missing = tmp_path / "no-shared"
    monkeypatch.setattr(demo, "SHARED", missing)
    monkeypatch.setattr(demo, "SAMPLE", missing / "data" / "dogs-vs-cats-sample")
    monkeypatch.setattr(demo, "MOBILENET_WEIGHTS", missing / "weights" / "mobilenet.h5")
    monkeypatch.setattr("sys.argv", ["demo"])
    with pytest.raises(SystemExit) as refused:
        demo.main()
    lines = str(refused.value).splitlines()
    assert len(lines) <= 3, lines
    assert lines[0] == ("error: the demo needs the shared sample data and MobileNet weights "
                        f"at {missing}")
    assert "without a Kaggle account" in lines[1] and "800 MB" in lines[1], lines
    assert lines[-1] == (f"  cd {ROOT} && make setup && source .venv/bin/activate && "
                         f"dvc exp run -S data_source={PET_IMAGES_URL}")
