"""A team's flow with a shared DVC remote: push a finished run, clone afresh, pull, and
nothing reruns. Real DVC and git, offline, against two remotes: a local folder (DVC
treats a path like any other remote) and an S3 bucket on a loopback S3-compatible
server (moto, with the dvc-s3 plug-in: `make test-scale`).

The remote's config must be committed: a clone without it has no cache to pull from and
would rerun every stage, downloads included.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.demo import git
from tests.support.commands import dvc, ran_stages, stage_env
from tests.support.projects import FinishedRun

# With `make test`'s two processes, in the one that makes the shared class-folder run.
pytestmark = pytest.mark.xdist_group("class_folder_run")

# Dummy credentials for the loopback S3 server, in the environment as a team's would be:
# never in the committed config. Only these: a developer's own AWS_* settings are dropped.
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "team-remote"


@dataclass
class Remote:
    """A DVC remote a test pushes to: the `dvc remote add` arguments, the environment
    DVC needs to reach it, and what the remote holds (to see that the push got there)."""

    url: str
    env: dict[str, str]
    options: dict[str, str]  # `dvc remote modify` settings that are committed
    stored: Callable[[], list[str]]


@contextlib.contextmanager
def local_remote(tmp_path: Path) -> Iterator[Remote]:
    folder = tmp_path / "remote"
    yield Remote(str(folder), stage_env(), {},
                 lambda: [str(path) for path in folder.rglob("*") if path.is_file()])


@contextlib.contextmanager
def s3_remote(tmp_path: Path) -> Iterator[Remote]:
    """A bucket on a moto S3 server on 127.0.0.1 (a free port), for the block's duration."""
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("dvc_s3", reason="the S3 remote needs `make setup EXTRAS=s3`")
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint,
                              aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
                              region_name=S3_ENV["AWS_DEFAULT_REGION"])
        client.create_bucket(Bucket=BUCKET)

        def stored() -> list[str]:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            return [item["Key"] for page in pages for item in page.get("Contents", [])]

        env = {key: value for key, value in stage_env().items() if not key.startswith("AWS_")}
        yield Remote(f"s3://{BUCKET}/dogs-vs-cats", {**env, **S3_ENV},
                     {"endpointurl": endpoint}, stored)
    finally:
        server.stop()


REMOTES = {"local": local_remote, "s3": s3_remote}


@pytest.mark.parametrize("kind", ["local", pytest.param("s3", marks=pytest.mark.scale)])
def test_push_clone_pull_and_nothing_reruns(kind, tmp_path, class_folder_run):
    with REMOTES[kind](tmp_path) as remote:
        round_trip(tmp_path, class_folder_run, remote)


def round_trip(tmp_path: Path, run: FinishedRun, remote: Remote) -> None:
    """Push a finished run (a copy of the session's class-folder run) to `remote` (config
    committed), clone afresh, pull: the clone has the outputs, reruns nothing and shows
    the same metrics. Without the remote's config, the clone has nothing to pull from."""
    project = run.copy_of(tmp_path / "project")
    env = remote.env
    dvc(project, env, "remote", "add", "--default", "shared", remote.url)
    for option, value in remote.options.items():
        dvc(project, env, "remote", "modify", "shared", option, value)
    git("add", "-A", cwd=project)
    git("commit", "-qm", "a finished run, and the remote it is pushed to", cwd=project)
    assert S3_ENV["AWS_SECRET_ACCESS_KEY"] not in (project / ".dvc" / "config").read_text()
    pushed = dvc(project, env, "push")
    assert "pushed" in pushed.stdout, pushed.stdout
    assert remote.stored(), "nothing reached the remote"

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True, env=env)
    assert not (clone / "models" / "model.keras").exists()
    # The pitfall: a clone whose config names no remote cannot pull (and would rerun all).
    dvc(clone, env, "remote", "remove", "shared")
    orphan = dvc(clone, env, "pull", ok=False)
    assert orphan.returncode != 0 and "no default remote set" in orphan.stderr, orphan.stderr
    assert not (clone / "models" / "model.keras").exists()
    git("checkout", ".dvc/config", cwd=clone)  # the committed config, remote included

    dvc(clone, env, "pull")
    assert (clone / "models" / "model.keras").read_bytes() == (
        project / "models" / "model.keras").read_bytes()
    again = dvc(clone, env, "repro")
    assert ran_stages(again.stdout) == [], again.stdout
    assert "up to date" in again.stdout
    shown = [dvc(folder, env, "metrics", "show", "--json").stdout for folder in (project, clone)]
    assert shown[0] == shown[1]
    assert '"accuracy"' in shown[0]
