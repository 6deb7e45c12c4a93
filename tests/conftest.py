"""Shared test material: the real sample photos, weight files, a loopback file server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SAMPLE = SHARED / "data" / "dogs-vs-cats-sample"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
# The same file name as the real one, so the legacy-HDF5 layout is the real one too.
INCEPTION_NOTOP = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    if not SAMPLE.is_dir():
        pytest.skip(f"needs the shared sample photos at {SAMPLE} (absent here)")
    return SAMPLE


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    if not MOBILENET_WEIGHTS.is_file():
        pytest.skip(f"needs the shared MobileNet weights at {MOBILENET_WEIGHTS} (absent here)")
    return MOBILENET_WEIGHTS


def write_legacy_weights(model, path: Path) -> None:
    """Save `model`'s weights in the legacy Keras-2 HDF5 layout of the published *_notop.h5
    files (Keras 3's save_weights only writes its new format)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, model)


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """InceptionV3 without top, random weights, in the layout of the real notop file."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.InceptionV3(include_top=False, weights=None,
                                           input_shape=(75, 75, 3))
    path = tmp_path_factory.mktemp("weights") / INCEPTION_NOTOP
    write_legacy_weights(model, path)
    return path


def md5(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "md5").hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server; yields (base URL, folder it serves)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", folder
    finally:
        server.shutdown()
        server.server_close()


def stage_env(**extra: str) -> dict[str, str]:
    """Environment for running stages and DVC in a subprocess: this interpreter's venv
    first on PATH (stage commands call `python`), no analytics, a git identity."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


def error_line(stderr: str) -> str:
    """A failed stage's one-line error: the last line of stderr, and the only "error:" one.
    (Stages that import TensorFlow may print its start-up log lines before it.)"""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), stderr
    assert sum(line.startswith("error: ") for line in lines) == 1, stderr
    return lines[-1]
