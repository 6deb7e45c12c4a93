"""A team's flow with a shared DVC remote: push a finished run, clone afresh, pull, and
nothing reruns. Real DVC and git, offline; the remote is a local folder (DVC treats a
path like any other remote: the same push, pull and checks as S3, GCS or SSH).

The remote's config must be committed: a clone without it has no cache to pull from and
would rerun every stage, downloads included.
"""

from __future__ import annotations

import subprocess

from scripts.demo import copy_project, git
from tests.conftest import SMALL_NETWORK, dvc, make_class_folders, ran_stages, stage_env


def test_push_clone_pull_and_nothing_reruns(tmp_path, mobilenet_random_weights):
    data = make_class_folders(tmp_path / "photos")
    project = tmp_path / "project"
    project.mkdir()
    copy_project(project, {"data_source": str(data),
                           "weights_urls": [str(mobilenet_random_weights)], "weights_hash": "",
                           **SMALL_NETWORK, "epochs": 1})
    env = stage_env()
    dvc(project, env, "repro")
    remote = tmp_path / "remote"
    dvc(project, env, "remote", "add", "--default", "shared", str(remote))
    git("add", "-A", cwd=project)
    git("commit", "-qm", "a finished run, and the remote it is pushed to", cwd=project)
    pushed = dvc(project, env, "push")
    assert "pushed" in pushed.stdout, pushed.stdout
    assert any(remote.rglob("*")), "nothing reached the remote"

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True, env=env)
    assert not (clone / "models" / "model.keras").exists()
    dvc(clone, env, "pull")
    assert (clone / "models" / "model.keras").read_bytes() == (
        project / "models" / "model.keras").read_bytes()
    again = dvc(clone, env, "repro")
    assert ran_stages(again.stdout) == [], again.stdout
    assert "up to date" in again.stdout
    shown = [dvc(folder, env, "metrics", "show", "--json").stdout for folder in (project, clone)]
    assert shown[0] == shown[1]
    assert '"accuracy"' in shown[0]
