"""Stage features: run the frozen part of the network once per image, and cache it.

The frozen part (preprocessing + backbone up to `unfreeze_after`) is most of the
network's cost and never trained, so its output is the same for every experiment
that keeps the backbone, its weights, the image size, the preprocessing and
`unfreeze_after`: the only params of this stage. `dvc exp run -S lr=...` reuses it;
train, evaluate and submit run only the layers above it.

Writes data/features/: train.npy (a float16 row per image of data/train, in the
order of index.json, which names them relative to data/train), test.npy where the
data set has a test set (a row per id of sample_submission.csv; zeros for an
unreadable test image, listed in index.json) and index.json.

With `cluster` set, the same bytes are computed on a Dask cluster (stages/cluster.py).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stages.activations import FeatureWriter, write_index
from stages.compute import configure
from stages.dataset import check_manifest, class_names, list_samples
from stages.errors import StageError, run
from stages.files import atomic_output, remove
from stages.params import load_params
from stages.paths import (
    FEATURES_DIR,
    FEATURES_INDEX,
    TEST_FEATURES,
    TRAIN_DIR,
    TRAIN_FEATURES,
    TRAIN_MANIFEST,
    WEIGHTS_FILE,
)
from stages.progress import Progress
from stages.test_set import has_test_set, open_test_archive, read_sample_ids, test_entries

# Images per forward pass. Fixed, not `batch_size`: it does not change the activations,
# and an experiment on batch_size must not recompute them.
EXTRACT_BATCH = 32


def extract(extractor: Any, read: Callable[[int], bytes], count: int, destination: Path,
            what: str) -> dict[int, str]:
    """Write the extractor's output for items 0 .. count - 1 to `destination`, a row each
    (zeros for an item that cannot be decoded); return why each such item could not."""
    from stages.images import decode_batches

    size = int(extractor.input_shape[1])
    shape = tuple(int(n) for n in extractor.output_shape[1:])
    writer = FeatureWriter(destination, count, shape)
    progress = Progress(what, count)
    failures: dict[int, str] = {}
    for indices, images in decode_batches(read, count, size, EXTRACT_BATCH, failures):
        activations = np.asarray(extractor.predict_on_batch(images.astype(np.float32)))
        # Rows from the last one written to this batch's last, zeros where an image failed.
        block = np.zeros((indices[-1] + 1 - writer.written, *shape), dtype=np.float32)
        block[indices - writer.written] = activations
        writer.write(block)
        progress.update(len(block))
    if writer.written < count:  # the last items failed
        writer.write(np.zeros((count - writer.written, *shape), dtype=np.float32))
        progress.update(count - progress.done)
    writer.close()
    return failures


Extract = Callable[[Callable[[int], bytes], int, Path, str], dict[int, str]]


@contextlib.contextmanager
def extraction(params: dict[str, Any]) -> Iterator[tuple[tuple[int, ...], Extract]]:
    """The frozen part's output shape, and `extract` bound to it: in this process, or on
    the Dask cluster of `params["cluster"]` (stages/cluster.py), with the same bits."""
    if params["cluster"]:
        from stages.cluster import on_cluster

        with on_cluster(params, WEIGHTS_FILE, EXTRACT_BATCH) as cluster:
            yield cluster.shape, cluster.extract
        return
    # TensorFlow only now, after the checks that take a second.
    from stages.network import build_feature_extractor

    configure(params)
    extractor = build_feature_extractor(params, WEIGHTS_FILE)
    yield tuple(int(n) for n in extractor.output_shape[1:]), functools.partial(extract, extractor)


def main() -> None:
    params = load_params()
    remove(FEATURES_DIR)  # a failed run must not leave another configuration's features
    classes, samples = class_names(TRAIN_DIR), list_samples(TRAIN_DIR)
    check_manifest(TRAIN_DIR, samples, TRAIN_MANIFEST)
    test_set = has_test_set()
    ids = read_sample_ids() if test_set else []
    with open_test_archive() if test_set else contextlib.nullcontext() as archive:
        infos = test_entries(archive, ids) if test_set else []
        with extraction(params) as (shape, extract_rows), \
                atomic_output(FEATURES_DIR) as staging:
            print(f"features: {params['backbone']} up to {params['unfreeze_after']} at "
                  f"{params['image_size']} px: {np.prod(shape):,} values per image {shape}",
                  file=sys.stderr)
            staging.mkdir()
            failed = extract_rows(lambda i: Path(samples[i][0]).read_bytes(), len(samples),
                                  staging / TRAIN_FEATURES.name, "features: training images")
            if failed:  # split_classes kept only images that decode
                index, reason = next(iter(failed.items()))
                raise StageError(f"{samples[index][0]} cannot be decoded ({reason}): "
                                 "run `dvc repro -f split_classes`")
            failed = {}
            if test_set:
                failed = extract_rows(lambda i: archive.read(infos[i]), len(infos),
                                      staging / TEST_FEATURES.name, "features: test images")
                if len(failed) == len(ids):
                    raise StageError(f"none of the {len(ids)} test images could be decoded")
            unreadable = {ids[i]: {"file": infos[i].filename, "reason": reason}
                          for i, reason in sorted(failed.items())}
            # Paths relative to data/train: the features do not care where the folder is.
            names = [(Path(path).relative_to(TRAIN_DIR).as_posix(), label)
                     for path, label in samples]
            write_index(staging / FEATURES_INDEX.name, params, shape, classes, names, ids,
                        unreadable)
    test = f"{len(ids):,} test images" if test_set else "no test set"
    print(f"features: wrote {FEATURES_DIR}: {len(samples):,} training images of "
          f"{len(classes)} classes, {test}, {len(unreadable)} unreadable", file=sys.stderr)


if __name__ == "__main__":
    run(main)
