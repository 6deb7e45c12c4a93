"""The feature store (finetune.features.store): .npy files of float16 rows (float32 where
float16 cannot hold them, never NaN or inf) written in order and read back by rows, in any
order, without loading the file."""

from __future__ import annotations

import io
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
    elif how == "float64":  # float16 and float32 are feature files (float32: beyond 65504)
        np.save(path, random_rows(4, (8,)).astype(np.float64))
    elif how == "not npy":
        path.write_bytes(b"id,label\n1,0.5\n")
    elif how != "missing":
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated", "float64", "not npy", "missing"])
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


def test_values_beyond_float16_are_stored_in_float32(tmp_path, capsys):
    """float16 tops out at 65504: [1, 70000, 3.14159265] used to read back [1, inf,
    3.140625]. From the first batch float16 cannot hold, the file is float32: the rows
    before it keep their float16 values exactly, the rest are stored as they came."""
    shape = (3,)
    first, third = random_rows(5, shape, seed=1), random_rows(4, shape, seed=2)
    big = np.array([[1, 70000, 3.14159265], [-2, 0.5, 0]], dtype=np.float32)
    path = tmp_path / "rows.npy"
    writer = FeatureWriter(path, 11, shape)
    for rows in (first, big, third):
        writer.write(rows)
    writer.close()
    features = FeatureFile(path)
    read = features[np.arange(11)]
    assert np.isfinite(read).all(), read
    assert features.dtype == np.float32
    np.testing.assert_array_equal(read[:5], first.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(read[5:], np.concatenate([big, third]))
    assert read[5].tolist() == [1, 70000, np.float32(3.14159265)]
    np.testing.assert_array_equal(np.load(path), read)  # still a standard .npy file
    assert sorted(path.name for path in tmp_path.iterdir()) == ["rows.npy"]
    assert "an activation of 70000 is beyond float16's range (65504): storing rows.npy in " \
           "float32" in capsys.readouterr().err


def test_rows_that_fit_float16_are_stored_as_before(tmp_path):
    """The float16 file of finite rows is byte for byte the plain cast under a .npy 2.0
    header: what the features stage has always written (make demo's metrics unchanged)."""
    rows = random_rows(9, (2, 3))
    rows[0, 0, 0] = 65504  # float16's largest: still fits
    path = tmp_path / "rows.npy"
    writer = FeatureWriter(path, len(rows), (2, 3))
    writer.write(rows)
    writer.close()
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": "<f2", "fortran_order": False,
                                                  "shape": rows.shape})
    assert path.read_bytes() == header.getvalue() + rows.astype(np.float16).tobytes()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_nan_or_inf_from_the_backbone_is_never_stored(tmp_path, bad):
    rows = random_rows(6, (4,))
    rows[3, 2] = rows[5, 0] = bad
    writer = FeatureWriter(tmp_path / "rows.npy", 10, (4,))
    writer.write(random_rows(4, (4,)))
    with pytest.raises(StageError) as error:
        writer.write(rows)
    assert str(error.value) == (
        "the frozen part gives NaN or inf for 2 of 6 images in a batch (the first: row 7): "
        "nothing is cached. Check the weights file (`dvc repro -f fetch_weights`), and with "
        "precision: mixed_float16 try float32")
    assert writer.written == 4


def test_extraction_stores_a_backbone_beyond_float16_in_float32(tmp_path, sample_dir):
    """The extraction loop through the writer, with a backbone whose activations exceed
    float16's range for one image (VGG with caffe preprocessing can)."""
    from finetune.features.extract import extract

    class Loud:  # a backbone stand-in: each image's mean pixel, times 1000 for the third
        input_shape, output_shape = (None, 32, 32, 3), (None, 2)

        def __init__(self):
            self.seen = 0

        def predict_on_batch(self, images):
            values = images.mean(axis=(1, 2, 3))[:, None] * np.array([1, 1000], np.float32)
            values[np.arange(len(images)) + self.seen != 2, 1] /= 1000
            self.seen += len(images)
            return values.astype(np.float32)

    photos = sorted((sample_dir / "train").glob("*.jpg"))[:5]
    assert extract(Loud(), lambda i: photos[i].read_bytes(), 5, tmp_path / "rows.npy",
                   "features") == {}
    features = FeatureFile(tmp_path / "rows.npy")
    read = features[np.arange(5)]
    assert np.isfinite(read).all(), read
    assert features.dtype == np.float32
    assert read[2, 1] > 65504 and read[2, 1] == pytest.approx(1000 * read[2, 0])
