"""finetune.core.paths.project_path: a relative path in params.yaml (`data_source`, a
local `weights_urls` entry) means the same file in the workspace and in the copy a queued
experiment runs in (`dvc exp run --queue`: <project>/.dvc/tmp/exps/tmpXXXX/). The
queued runs themselves: tests/e2e/test_queue.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.core.paths import project_path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "project" / ".dvc" / "tmp").mkdir(parents=True)
    return (tmp_path / "project").resolve()


# Where DVC runs a stage, relative to the project: the workspace, a queued run's copy,
# a `dvc exp run --temp` copy.
WORKING_FOLDERS = [".", ".dvc/tmp/exps/tmpk3x9q_a1", ".dvc/tmp/exps/standalone/tmp7f2_wz0c"]


@pytest.mark.parametrize("where", WORKING_FOLDERS)
@pytest.mark.parametrize("dvc_root", ["unset", "project", "copy"])
def test_relative_path_is_the_projects(project, monkeypatch, where, dvc_root):
    """DVC sets DVC_ROOT to the project for a queued run; unset (a stage run by hand) or
    naming the copy, the copy's place under .dvc/tmp/exps tells the project as well."""
    copy = project / where
    copy.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(copy)
    if dvc_root == "unset":
        monkeypatch.delenv("DVC_ROOT", raising=False)
    else:
        monkeypatch.setenv("DVC_ROOT", str(project if dvc_root == "project" else copy))
    assert project_path("../photos") == project.parent / "photos"  # normalised
    assert project_path("data/local.zip") == project / "data/local.zip"


def test_absolute_and_home_paths_are_kept(project, monkeypatch, tmp_path):
    monkeypatch.chdir(project)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert project_path(str(tmp_path / "photos")) == tmp_path / "photos"
    assert project_path("~/photos") == tmp_path / "home" / "photos"


def test_a_folder_merely_named_exps_is_no_copy(project, monkeypatch):
    """Only <project>/.dvc/tmp/exps/... is a queued run's copy."""
    elsewhere = project / "runs" / "tmp" / "exps" / "one"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert project_path("photos") == elsewhere / "photos"
