"""finetune.core.runner.run_main: a stage's failure is one `error:` line and exit status 1,
and a bad param stops a stage before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from finetune.core.errors import StageError
from finetune.core.runner import run_main
from tests.support.projects import write_yaml
from tests.support.servers import closed_port
from tests.support.shared import ROOT


@pytest.mark.parametrize("stage", ["fetch_weights", "split_classes"])
def test_stage_fails_on_bad_param_before_any_work(
    tmp_path: Path, params: dict[str, Any], stage: str
) -> None:
    # A reachable-looking but closed mirror: had the stage tried it, the error would say so.
    params["weights_urls"] = [f"http://127.0.0.1:{closed_port()}/weights.h5"]
    params["epochs"] = "2"
    write_yaml(tmp_path / "params.yaml", params)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "error: params.yaml: 'epochs' must be int, got str '2'; if a failed `dvc exp run -S` "
        "left it there, `git checkout params.yaml` restores the committed value"
    ]
    assert result.stdout == ""
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]


def test_run_prints_one_line_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    def main() -> None:
        raise StageError("first line\nsecond line")

    with pytest.raises(SystemExit) as exited:
        run_main(main)
    assert exited.value.code == 1
    assert capsys.readouterr().err == "error: first line second line\n"
