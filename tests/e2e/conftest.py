"""The class-folder pipeline run that several end-to-end tests read: made once per
session, since a `dvc repro` of the whole DAG costs tens of seconds."""

from __future__ import annotations

import shutil

import pytest

from scripts.demo import copy_project
from tests.support.commands import dvc, stage_env
from tests.support.photos import make_class_folders
from tests.support.projects import SMALL_NETWORK, FinishedRun


@pytest.fixture(scope="session")
def class_folder_run(mobilenet_random_weights, tmp_path_factory) -> FinishedRun:
    """A project copy whose `data_source` is a folder of three classes of drawn photos
    (tests.support.photos.make_class_folders), after one `dvc repro`."""
    root = tmp_path_factory.mktemp("classes")
    data = make_class_folders(root / "my-photos")
    project = root / "project"
    project.mkdir()
    copy_project(project, {
        "data_source": str(data),
        "weights_urls": [str(mobilenet_random_weights)], "weights_hash": "",
        **SMALL_NETWORK, "epochs": 3, "lr": 1e-2,
    })
    env = stage_env()
    first = dvc(project, env, "repro")
    return FinishedRun(project, shutil.copytree(project, root / "pristine", symlinks=True),
                       env, first.stdout, first.stderr)
