"""finetune.training.keras_workarounds: the Keras functions the multi-worker patches
replace are those they were written for, and a patch applies only inside keras_patched."""

from __future__ import annotations

import pytest
from keras.src.backend.tensorflow import trainer

from finetune.core.errors import StageError
from finetune.training.keras_workarounds import (
    PATCHED_SOURCES,
    check_patched_sources,
    keras_patched,
)


def test_keras_functions_patched_are_those_the_workarounds_were_written_for():
    """Fails when a Keras upgrade changes a patched function: re-check the upstream issue
    named in finetune/training/keras_workarounds.py, then update or drop the patch and its
    digest."""
    check_patched_sources()


def test_a_changed_patched_function_is_refused_and_the_patch_is_undone(monkeypatch):
    original = trainer.reduce_per_replica
    with keras_patched():
        assert trainer.reduce_per_replica is not original  # applied inside only
    assert trainer.reduce_per_replica is original
    monkeypatch.setitem(PATCHED_SOURCES, "reduce_per_replica", "0" * 64)
    with pytest.raises(StageError, match=r"changed reduce_per_replica.*re-check the upstream"), \
            keras_patched():
        pass
    assert trainer.reduce_per_replica is original
