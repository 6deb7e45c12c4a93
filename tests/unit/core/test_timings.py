"""finetune.core.timings: a stage process's marks, written only where FINETUNE_TIMINGS asks
(the benchmark), through run_main: start (the kernel's), main, exit, even on a failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune.core import timings
from finetune.core.errors import StageError
from finetune.core.runner import run_main
from tests.support.shared import ROOT


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_nothing_is_written_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    monkeypatch.delenv(timings.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    run_main(lambda: timings.mark("step"))
    assert list(tmp_path.iterdir()) == []


def test_run_main_marks_start_main_and_exit_even_on_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marks = tmp_path / "marks.jsonl"
    monkeypatch.setenv(timings.ENV, str(marks))

    def failing() -> None:
        timings.mark("step")
        raise StageError("bad input")

    with pytest.raises(SystemExit):
        run_main(failing)
    found = read(marks)
    assert [mark["event"] for mark in found] == [timings.START, "main", "step", timings.EXIT]
    assert {mark["pid"] for mark in found} == {os.getpid()}
    times = [mark["time"] for mark in found]
    assert times == sorted(times)  # this process started before it reached main
    assert times[-1] <= time.time()


def test_a_stage_process_marks_its_start_before_python_ran(tmp_path: Path) -> None:
    """The start is the kernel's: before the interpreter loaded, so before the parent's
    time after Popen returned is impossible, and the stage is named by its script."""
    marks = tmp_path / "marks.jsonl"
    script = tmp_path / "stage_like.py"
    script.write_text("from finetune.core.runner import run_main\nrun_main(lambda: None)\n")
    before = time.time()
    subprocess.run([sys.executable, str(script)], check=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": str(ROOT), timings.ENV: str(marks)})
    found = read(marks)
    assert [mark["event"] for mark in found] == [timings.START, "main", timings.EXIT]
    assert {mark["stage"] for mark in found} == {"stage_like"}
    # The clock-tick resolution of /proc's start time (1/100 s) and nothing more.
    assert before - 0.02 <= found[0]["time"] <= found[1]["time"] <= found[2]["time"]
