"""finetune.core.atomic.atomic_output: an output appears, or replaces the earlier one,
only when complete; a failure leaves nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.core.atomic import atomic_output
from finetune.core.errors import StageError


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
