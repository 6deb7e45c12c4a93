"""Fixtures shared by the unit tests (finetune.model, finetune.evaluation)."""

from __future__ import annotations

from pathlib import Path

import keras
import pytest

from tests.support.networks import SIZE
from tests.support.weights import write_legacy_weights


@pytest.fixture(scope="session")
def random_mobilenet_file(tmp_path_factory) -> Path:
    """MobileNet alpha 0.25 weights, random but distinct from a fresh init, in the legacy layout."""
    keras.utils.set_random_seed(7)
    model = keras.applications.MobileNet(input_shape=(SIZE, SIZE, 3), alpha=0.25,
                                         include_top=False, weights=None)
    path = tmp_path_factory.mktemp("weights") / "mobilenet_025_notop.h5"
    write_legacy_weights(model, path)
    return path
