"""The trained model in DVC's model registry: dvc.yaml's `artifacts:` entry found by name,
its versions and stages as GTO's git tags, and `dvc artifacts get` fetching the right bytes
from an empty folder. Real `dvc`, `gto` and git commands, offline: the team's git server is
a bare repository in a temporary folder, its DVC remote a local folder (see
docs/registry.md).

`dvc artifacts get` of a bare repository clones it and pulls from the remote its committed
config names, so these tests see what someone with the repository's address and no copy of
the project gets; the project's own cache is out of the way.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finetune.core.paths import TRAIN_MANIFEST
from scripts.demo import git
from tests.support.commands import dvc, stage_env
from tests.support.projects import FinishedRun
from tests.support.shared import ROOT

# The one artifact of dvc.yaml, and the file `dvc artifacts get` writes for it.
(ARTIFACT, DECLARED), = yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"].items()
FETCHED = Path(DECLARED["path"]).name


def gto(project: Path, env: dict[str, str], *args: str) -> str:
    """Run `gto ARGS` in `project`, failing the test if it fails; what it printed."""
    result = subprocess.run(["gto", *args], cwd=project, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"gto {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def publish(project: Path, server: Path, env: dict[str, str]) -> None:
    """What a team does to share a commit: its DVC outputs to the default remote, the
    commits and tags (GTO's included) to the git server."""
    dvc(project, env, "push")
    if not server.exists():  # its HEAD the project's branch, as the clones check it out
        git("clone", "-q", "--bare", str(project), str(server), cwd=project)
    git("push", "-q", "--mirror", str(server), cwd=project)


def fetch(server: Path, folder: Path, env: dict[str, str], *options: str) -> bytes:
    """`dvc artifacts get SERVER ARTIFACT OPTIONS` in `folder`, a new empty folder: the
    bytes it wrote."""
    folder.mkdir()
    got = dvc(folder, env, "artifacts", "get", str(server), ARTIFACT, *options)
    assert f"Downloaded 1 file(s) to '{FETCHED}'" in got.stdout, got.stdout + got.stderr
    assert [path.name for path in folder.iterdir()] == [FETCHED]
    return (folder / FETCHED).read_bytes()


@pytest.mark.xdist_group("class_folder_run")  # with `make test`'s -n 2: where the run is made
def test_a_pushed_run_is_fetched_by_name_from_an_empty_folder(tmp_path, class_folder_run:
                                                              FinishedRun):
    # A finished `dvc repro` (three classes of drawn photos), its first version registered.
    project = class_folder_run.copy_of(tmp_path / "project")
    env = class_folder_run.env
    server = tmp_path / "server.git"
    dvc(project, env, "remote", "add", "--default", "shared", str(tmp_path / "remote"))
    git("add", "-A", cwd=project)
    git("commit", "-qm", "a finished run, and the remote it is pushed to", cwd=project)
    assert "registers version" in gto(project, env, "register", ARTIFACT, "--version", "v1.0.0")
    publish(project, server, env)

    fetched = fetch(server, tmp_path / "empty", env)
    assert fetched == (project / DECLARED["path"]).read_bytes()
    # The classes, which dvc.yaml cannot know, travel inside the model.
    from finetune.model.saved import load_model, model_class_names

    classes = json.loads((project / TRAIN_MANIFEST).read_text())["classes"]
    assert model_class_names(load_model(tmp_path / "empty" / FETCHED)) == classes


@pytest.mark.slow  # about 20 dvc and gto processes: 30 s on 2 busy cores
def test_versions_and_stages_fetch_their_own_bytes(tmp_path):
    # A small git repo whose dvc.yaml declares the project's artifact (its very entry, with
    # the project's params.yaml that fills its description); the model is any bytes tracked
    # by DVC: the registry does not read them, and two trainings would cost a minute.
    env = stage_env()
    project, server = tmp_path / "project", tmp_path / "server.git"
    project.mkdir()
    git("init", "-q", cwd=project)
    dvc(project, env, "init", "-q")
    (project / "dvc.yaml").write_text(yaml.safe_dump({"artifacts": {ARTIFACT: DECLARED}},
                                                     sort_keys=False))
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    dvc(project, env, "remote", "add", "--default", "shared", str(tmp_path / "remote"))
    model = project / DECLARED["path"]
    model.parent.mkdir()
    versions = {"v1.0.0": b"the first model\n" * 100, "v1.1.0": b"the second model\n" * 100}
    for version, content in versions.items():
        model.write_bytes(content)
        dvc(project, env, "add", "-q", DECLARED["path"])
        git("add", "-A", cwd=project)
        git("commit", "-qm", f"model {version}", cwd=project)
        gto(project, env, "register", ARTIFACT, "--version", version)
        publish(project, server, env)
    assigned = gto(project, env, "assign", ARTIFACT, "--version", "v1.0.0", "--stage", "prod")
    assert "assigns stage to version 'v1.0.0'" in assigned
    publish(project, server, env)

    assert fetch(server, tmp_path / "latest", env) == versions["v1.1.0"]
    assert fetch(server, tmp_path / "prod", env, "--stage", "prod") == versions["v1.0.0"]
    for version, content in versions.items():
        assert fetch(server, tmp_path / version, env, "--rev", version) == content

    # Promotion: prod moves to v1.1.0 with a new tag (GTO keeps the history of stages).
    gto(project, env, "assign", ARTIFACT, "--version", "v1.1.0", "--stage", "prod")
    publish(project, server, env)
    assert fetch(server, tmp_path / "prod-later", env, "--stage", "prod") == versions["v1.1.0"]

    # The description Studio shows: DVC's own reader fills it from params.yaml (in a
    # process of its own: DVC's logging would outlive this test's captured streams).
    read = ("import json, sys; from dvc.repo import Repo; "
            "artifact = Repo().artifacts.read()['dvc.yaml'][sys.argv[1]]; "
            "print(json.dumps({'desc': artifact.desc, 'meta': artifact.meta}))")
    described = json.loads(subprocess.run([sys.executable, "-c", read, ARTIFACT], cwd=project,
                                          env=env, capture_output=True, text=True,
                                          check=True).stdout)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    backbone, size = params["backbone"], params["image_size"]
    assert f"{backbone} backbone" in described["desc"], described
    assert f"{size}x{size} px" in described["desc"], described
    assert described["meta"] == {"backbone": backbone, "image_size": size,
                                 "framework": "keras"}
