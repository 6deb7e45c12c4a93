"""Running stages and DVC as their users do, and reading what they say: in a subprocess,
or (`call_stage`) a stage's `main` in this process, where TensorFlow is already loaded."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.shared import ROOT


def stage_env(**extra: str) -> dict[str, str]:
    """Environment for running stages and DVC in a subprocess: this interpreter's venv
    first on PATH (stage commands call `python`), no analytics, a git identity, and
    none of the caller's proxy or Kaggle settings (every server a test talks to is on
    loopback, and a developer's own Kaggle credentials never take part); then `extra`."""
    dropped = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {key: value for key, value in os.environ.items()
           if key.lower() not in dropped and not key.startswith("KAGGLE_")}
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def stage_module(stage: str) -> str:
    """stages.<stage>, as dvc.yaml runs it; "predict" is the package's command-line tool."""
    return "finetune.predict" if stage == "predict" else f"stages.{stage}"


def stage_command(stage: str, *args: str) -> list[str]:
    """`python -m stages.<stage> ARGS` (`python -m finetune.predict ARGS` for predict)."""
    return [sys.executable, "-m", stage_module(stage), *args]


def run_stage(stage: str, project: Path, *args: str, env: dict[str, str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a stage in `project` as DVC does, with this checkout's `stages` importable;
    the environment is `env`, or stage_env()'s."""
    environment = {**(stage_env() if env is None else env), "PYTHONPATH": str(ROOT)}
    return subprocess.run(stage_command(stage, *args), cwd=project, env=environment,
                          capture_output=True, text=True, timeout=timeout)


def call_stage(stage: str, project: Path, *args: str, **env: str | None
               ) -> subprocess.CompletedProcess[str]:
    """Run a stage's `main` in this process as `run_stage` runs the command: in `project`,
    with stage_env(**env) as the environment (a variable given as None is unset) and ARGS
    as its arguments, the one-line error
    and exit status of finetune.core.runner; what it prints on stdout and stderr is
    returned as a finished command's. TensorFlow and Keras start once per test session
    instead of once per stage (seconds each): for tests of what a stage does, not of how
    its process starts (tests/stages/test_quiet_start.py runs real processes). Keras's
    session is cleared first, as a new process's would be, so layer names do not depend on
    the tests that ran before."""
    from finetune.core.runner import run_main

    module = importlib.import_module(stage_module(stage))
    entry = getattr(module, "cli", None) or (lambda: run_main(module.main))
    if "keras" in sys.modules:
        keras = sys.modules["keras"]
        keras.backend.clear_session()
        keras.mixed_precision.set_global_policy("float32")
    saved_env, saved_cwd, saved_argv = dict(os.environ), Path.cwd(), sys.argv
    stdout, stderr = io.StringIO(), io.StringIO()
    status = 0
    try:
        os.environ.clear()
        os.environ.update(stage_env(**{key: value for key, value in env.items()
                                       if value is not None}))
        for key in (key for key, value in env.items() if value is None):
            os.environ.pop(key, None)
        os.chdir(project)
        sys.argv = [module.__file__ or stage, *args]
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                entry()
            except SystemExit as exit:
                status = exit.code if isinstance(exit.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        sys.argv = saved_argv
    return subprocess.CompletedProcess(stage_command(stage, *args), status, stdout.getvalue(),
                                       stderr.getvalue())


def assert_stage_error(result: subprocess.CompletedProcess[str], *hints: str,
                       status: int = 1) -> str:
    """A stage that failed as expected: exit `status`, no traceback, and one `error:`
    line (stderr's last) holding every hint; returns that line."""
    assert result.returncode == status, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    line = error_line(result.stderr)
    for hint in hints:
        assert hint in line, line
    return line


def dvc(project: Path, env: dict[str, str], *args: str, ok: bool = True,
        timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run `dvc ARGS` in `project`; unless `ok` is False, fail the test if it fails."""
    result = subprocess.run(["dvc", *args], cwd=project, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if ok:
        assert result.returncode == 0, (
            f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def charts(project: Path, env: dict[str, str]) -> dict[str, tuple[str, set[str]]]:
    """What `dvc plots show` draws: each chart's id -> (its title, the files its data
    comes from); an image's title is ""."""
    shown = json.loads(dvc(project, env, "plots", "show", "--json").stdout)
    assert not shown.get("errors"), shown["errors"]
    drawn = {}
    for plot_id, renders in shown["data"].items():
        for render in renders:
            if render["type"] != "vega":
                drawn[plot_id] = ("", set())
                continue
            content = render["content"]
            values = content["data"]["values"]
            drawn[plot_id] = (content["title"]["text"],
                              {row.get("filename", plot_id) for row in values})
    return drawn


def ran_stages(output: str) -> list[str]:
    """The stages `dvc repro` / `dvc exp run` ran, in order, from its output."""
    return re.findall(r"Running stage '(\w+)'", output)


def error_line(stderr: str) -> str:
    """A failed stage's one-line error: the last line of stderr, and the only "error:" one.
    (Stages that import TensorFlow may print its start-up log lines before it.)"""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), stderr
    assert sum(line.startswith("error: ") for line in lines) == 1, stderr
    return lines[-1]
