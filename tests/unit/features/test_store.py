"""The feature store (finetune.features.store): .npy files of float16 rows written in
order and read back by rows, in any order, without loading the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from finetune.core.errors import StageError
from finetune.features.store import FeatureFile, FeatureWriter
from tests.support.commands import stage_env
from tests.support.shared import ROOT


def random_rows(count: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """float32 rows spanning magnitudes from 1e-3 to 1e3, of both signs, and zeros."""
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((count, *shape)) * 10.0 ** rng.uniform(-3, 3, (count, *shape))
    rows[rng.random((count, *shape)) < 0.1] = 0
    return rows.astype(np.float32)


def test_feature_file_round_trip(tmp_path):
    shape = (3, 4, 5)
    rows = random_rows(37, shape)
    path = tmp_path / "rows.npy"
    writer = FeatureWriter(path, len(rows), shape)
    for start, stop in [(0, 1), (1, 1), (1, 10), (10, 36), (36, 37)]:  # an empty chunk too
        writer.write(rows[start:stop])
    writer.close()

    rounded = rows.astype(np.float16).astype(np.float32)
    assert not np.array_equal(rounded, rows)  # the rounding is real: the check below bites
    features = FeatureFile(path)
    assert len(features) == 37 and features.shape == shape
    wanted = np.array([5, 0, 5, 36, 2, 2, 17])  # repeats, unsorted, both ends
    read = features[wanted]
    assert read.dtype == np.float32 and read.shape == (len(wanted), *shape)
    np.testing.assert_array_equal(read, rounded[wanted])
    np.testing.assert_array_equal(features[np.arange(37)], rounded)
    assert features[np.array([], dtype=int)].shape == (0, *shape)
    # A standard .npy file: NumPy reads it as written.
    np.testing.assert_array_equal(np.load(path), rows.astype(np.float16))
    for outside in (37, -1):
        with pytest.raises(IndexError):
            features[np.array([0, outside])]


def test_feature_file_reads_numpy_saved_float16(tmp_path):
    """A float16 file written by np.save (format 1.0 header) reads as well."""
    rows = random_rows(6, (2, 3)).astype(np.float16)
    np.save(tmp_path / "saved.npy", rows)
    np.testing.assert_array_equal(FeatureFile(tmp_path / "saved.npy")[np.array([4, 1])],
                                  rows[[4, 1]].astype(np.float32))


def damage(path: Path, how: str) -> None:
    if how == "truncated":
        writer = FeatureWriter(path, 4, (8,))
        writer.write(random_rows(4, (8,)))
        writer.close()
        path.write_bytes(path.read_bytes()[:-3])
    elif how == "float32":
        np.save(path, random_rows(4, (8,)))
    elif how == "not npy":
        path.write_bytes(b"id,label\n1,0.5\n")
    elif how != "missing":
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated", "float32", "not npy", "missing"])
def test_damaged_feature_file_is_one_line_error(tmp_path, how):
    path = tmp_path / "test.npy"
    damage(path, how)
    with pytest.raises(StageError) as error:
        FeatureFile(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message
    assert "dvc repro" in message, message  # and says what to do


def test_feature_file_reads_any_rows_in_any_order(tmp_path):
    # Runs of consecutive rows are read in one call: every pattern gives each row's values.
    rows = random_rows(20, (3, 2))
    path = tmp_path / "rows.npy"
    writer = FeatureWriter(path, len(rows), (3, 2))
    writer.write(rows)
    writer.close()
    features = FeatureFile(path)
    for order in ([], [5], list(range(20)), [3, 4, 5, 9, 10, 0, 1, 19], [7, 7, 8, 6],
                  list(range(19, -1, -1)), np.array([[2, 3], [4, 11]])):
        expected = rows[np.asarray(order, dtype=int).reshape(-1)].astype(np.float16)
        np.testing.assert_array_equal(features[order], expected.astype(np.float32))
    with pytest.raises(IndexError, match="row 20 of 20"):
        features[[18, 19, 20]]
    with pytest.raises(IndexError, match="row -1 of 20"):
        features[[-1]]


def test_writer_refuses_fewer_rows_than_declared(tmp_path):
    writer = FeatureWriter(tmp_path / "short.npy", 5, (2,))
    writer.write(np.ones((3, 2)))
    with pytest.raises(StageError, match=r"^wrote 3 feature rows of 5$"):
        writer.close()


# --- memory ---------------------------------------------------------------------

ROW_SHAPE = (64, 64, 16)  # 128 KiB a row in float16
MEMORY_ROWS = 1600  # 200 MiB
READ_BATCH = 32
# Run in a fresh interpreter: its peak resident memory (VmHWM, which counts the pages
# of a memory-mapped file it touches as well as what it allocates) before and after
# reading every row of the file in batches, in a shuffled order; then the same after
# np.load of the whole file, to show that the measure sees a whole-file read.
MEMORY_PROBE = """
import sys
from pathlib import Path

import numpy as np

from finetune.features.store import FeatureFile


def peak_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmHWM")


path = Path(sys.argv[1])
features = FeatureFile(path)
order = np.random.default_rng(0).permutation(len(features))
before = peak_mib()
for start in range(0, len(order), {batch}):
    rows = order[start:start + {batch}]
    batch = features[rows]
    assert (batch == (rows / 8)[:, None, None, None]).all(), rows  # the rows read are right
after = peak_mib()
whole = np.load(path)
assert whole.shape == (len(features), *features.shape)
print(after - before, peak_mib() - after)
"""


def test_feature_file_reads_rows_without_loading_the_file(tmp_path):
    if not Path("/proc/self/status").is_file():
        pytest.skip("measures memory with Linux's /proc/self/status")
    path = tmp_path / "large.npy"
    writer = FeatureWriter(path, MEMORY_ROWS, ROW_SHAPE)
    for start in range(0, MEMORY_ROWS, 16):
        values = np.arange(start, start + 16, dtype=np.float32) / 8  # exact in float16
        writer.write(np.broadcast_to(values[:, None, None, None], (16, *ROW_SHAPE)))
    writer.close()
    assert path.stat().st_size > 200 * 2 ** 20
    try:
        result = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE.format(batch=READ_BATCH), str(path)],
            env={**stage_env(), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
            timeout=120)
    finally:
        path.unlink()
    assert result.returncode == 0, result.stderr
    reading, loading = map(float, result.stdout.split())
    assert loading > 150, (reading, loading)  # the measure sees a whole-file read
    assert reading < 50, (reading, loading)  # reading by rows did not: < 50 MiB of 200
