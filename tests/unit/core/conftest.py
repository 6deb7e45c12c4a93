"""Fixtures of the finetune.core tests."""

from __future__ import annotations

from typing import Any

import pytest

from finetune.core.params import load_params
from tests.support.shared import ROOT


@pytest.fixture
def params() -> dict[str, Any]:
    """The shipped params.yaml, loaded and checked: a fresh dict each test may change."""
    return load_params(ROOT / "params.yaml")
