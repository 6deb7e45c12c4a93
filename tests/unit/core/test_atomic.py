"""finetune.core.atomic.atomic_output: an output appears, or replaces the earlier one,
only when complete; a failure leaves nothing half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.core.atomic import atomic_output
from finetune.core.errors import StageError
from tests.support.shared import ROOT


def test_atomic_file(tmp_path: Path) -> None:
    final = tmp_path / "models" / "model.keras"
    with atomic_output(final) as partial:
        # A sibling keeping the extension, which some writers insist on; not `final` itself.
        assert partial != final
        assert partial.parent == final.parent and partial.suffix == ".keras"
        assert not partial.exists()
        partial.write_text("new")
        assert not final.exists(), "the output appeared before the block ended"
    assert final.read_text() == "new"
    assert list(final.parent.iterdir()) == [final]


def test_atomic_file_replaces_the_earlier_one_only_at_the_end(tmp_path: Path) -> None:
    final = tmp_path / "model.keras"
    final.write_text("earlier")
    with atomic_output(final) as partial:
        assert partial != final
        partial.write_text("new")
        # A crash now (a kill, a power cut: no exception to clean up after) leaves the
        # earlier output whole.
        assert final.read_text() == "earlier"
    assert final.read_text() == "new"
    assert list(tmp_path.iterdir()) == [final]


def test_atomic_folder_replaces_the_old_one(tmp_path: Path) -> None:
    final = tmp_path / "data" / "train"
    (final / "stale").mkdir(parents=True)
    (final / "stale" / "old.jpg").write_text("old")
    with atomic_output(final) as partial:
        assert partial != final
        (partial / "cat").mkdir(parents=True)
        (partial / "cat" / "new.jpg").write_text("new")
        assert sorted(str(p.relative_to(final)) for p in final.rglob("*")) == [
            "stale", "stale/old.jpg"]
    assert sorted(str(p.relative_to(final)) for p in final.rglob("*")) == ["cat", "cat/new.jpg"]
    assert list(final.parent.iterdir()) == [final]


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_atomic_failure_leaves_nothing(tmp_path: Path, kind: str) -> None:
    final = tmp_path / "out" / "result.h5"
    with pytest.raises(RuntimeError, match="boom"), atomic_output(final) as partial:
        if kind == "file":
            partial.write_bytes(b"half")
        else:
            (partial / "sub").mkdir(parents=True)
            (partial / "sub" / "x").write_bytes(b"half")
        raise RuntimeError("boom")
    assert list(final.parent.iterdir()) == []


def test_atomic_failure_keeps_the_earlier_output(tmp_path: Path) -> None:
    final = tmp_path / "result.json"
    final.write_text("earlier")
    with pytest.raises(StageError), atomic_output(final) as partial:
        partial.write_text("half")
        raise StageError("failed")
    assert final.read_text() == "earlier"
    assert list(tmp_path.iterdir()) == [final]


# A writer that is killed mid-write: it starts writing `final` (a file or a folder) with
# atomic_output, says so, and sleeps until killed.
WRITER = """
import sys, time
from pathlib import Path
from finetune.core.atomic import atomic_output
final, kind = Path(sys.argv[1]), sys.argv[2]
with atomic_output(final) as partial:
    if kind == "file":
        partial.write_bytes(b"half")
    else:
        (partial / "rows").mkdir(parents=True)
        (partial / "rows" / "train.npy").write_bytes(b"half")
    print("writing", flush=True)
    time.sleep(600)
"""


def start_writer(final: Path, kind: str) -> subprocess.Popen:
    """A process in the middle of writing `final`, once this returns."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(final), kind],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert writer.stdout.readline() == "writing\n", "the writer failed before writing"
    return writer


def kill(writer: subprocess.Popen) -> None:
    writer.send_signal(signal.SIGKILL)  # no clean-up: what out of memory or a timeout does
    writer.wait()
    writer.stdout.close()


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_killed_writers_scratch_is_cleared_by_the_next_run_never_a_live_ones(
        tmp_path: Path, kind: str) -> None:
    final = tmp_path / "data" / ("features" if kind == "folder" else "model.keras")
    kill(start_writer(final, kind))
    dead = set(final.parent.iterdir())
    assert any(".part" in path.name for path in dead), dead  # what the kill left
    live = start_writer(final, kind)
    try:
        alive = set(final.parent.iterdir()) - dead
        assert alive, "the live writer has no scratch"
        with atomic_output(final) as partial:
            partial.write_bytes(b"whole") if kind == "file" else partial.mkdir()
        # The dead writer's scratch is gone; the live one's is untouched.
        assert set(final.parent.iterdir()) == {final, *alive}
    finally:
        kill(live)
    with atomic_output(final) as partial:
        partial.write_bytes(b"whole") if kind == "file" else partial.mkdir()
    assert list(final.parent.iterdir()) == [final]


def test_scratch_of_a_version_without_locks_is_cleared(tmp_path: Path) -> None:
    """Scratch a killed run of an earlier version left (no lock beside it) is dead."""
    final = tmp_path / "features"
    (tmp_path / ".features.miazinu3.part" / "rows").mkdir(parents=True)
    (tmp_path / ".features.miazinu3.part" / "rows" / "x").write_bytes(b"half")
    (tmp_path / "train.json").write_text("{}")
    (tmp_path / ".train.abcd1234.part.json").write_text("another output's scratch")
    with atomic_output(final) as partial:
        partial.mkdir()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        ".train.abcd1234.part.json", "features", "train.json"]
