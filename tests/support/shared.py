"""../shared, the real test material beside the project: only claims that need real
photos or real pretrained weights read it; they skip where it is absent, and fail instead
under CI (REQUIRE_SHARED=1, set by .ci/run)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
REAL_SAMPLE = SHARED / "data" / "dogs-vs-cats-sample"
FLOWERS = SHARED / "data" / "flowers-sample"  # 500 real photos, a folder per class (five)
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"


def needs_shared(path: Path, what: str) -> Path:
    """`path` if it exists; else skip, or fail where CI promised ../shared (REQUIRE_SHARED=1)."""
    if path.exists():
        return path
    message = f"needs {what} at {path} (absent here)"
    if os.environ.get("REQUIRE_SHARED") == "1":
        pytest.fail(f"{message}, but REQUIRE_SHARED=1: CI must run this test", pytrace=False)
    pytest.skip(message)
