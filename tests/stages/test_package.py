"""Which code a stage runs: its project's own. A queued experiment (`dvc exp run --queue`)
runs `python -m stages.NAME` in a copy of the project under .dvc/tmp/exps/, and must run
that copy's code, not the checkout's that `pip install -e .` (make setup) installed."""

from __future__ import annotations

import shutil
import subprocess

from tests.support.commands import stage_command, stage_env
from tests.support.shared import ROOT


def test_a_copy_of_the_project_runs_its_own_code_not_the_installed_package(tmp_path):
    copy = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "run"
    for package in ("stages", "finetune"):
        shutil.copytree(ROOT / package, copy / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "finetune" / "__init__.py").open("a") as stream:
        stream.write('\nprint("finetune from", __file__)\n')
    # As DVC runs a stage: no PYTHONPATH, this venv first on PATH (its editable install).
    environment = stage_env()
    environment.pop("PYTHONPATH", None)
    result = subprocess.run(stage_command("fetch_weights"), cwd=copy, env=environment,
                            capture_output=True, text=True, timeout=120)
    assert f"finetune from {copy / 'finetune' / '__init__.py'}" in result.stdout, result
    # It ran as far as reading params.yaml, which the copy lacks: the copy's stage code.
    assert result.stderr.splitlines()[-1] == (
        "error: params.yaml not found: run the stage from the project root")
