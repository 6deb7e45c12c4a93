"""Running the frozen part over every image, in order, into a feature file: in this
process, or with the same bits on a Dask cluster (finetune.features.dask_runner)."""

from __future__ import annotations

import contextlib
import functools
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from finetune.core.errors import StageError
from finetune.core.paths import WEIGHTS_FILE
from finetune.core.progress import Progress
from finetune.core.runtime import configure
from finetune.dataset.split import Sample
from finetune.features.store import FeatureWriter

# Images per forward pass. Fixed, not `batch_size`: it does not change the activations,
# and an experiment on batch_size must not recompute them.
EXTRACT_BATCH = 32


def extract(extractor: Any, read: Callable[[int], bytes], count: int, destination: Path,
            what: str) -> dict[int, str]:
    """Write the extractor's output for items 0 .. count - 1 to `destination`, a row each
    (zeros for an item that cannot be decoded); return why each such item could not."""
    from finetune.dataset.decode import decode_batches

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
    the Dask cluster of `params["cluster"]` (finetune.features.dask_runner), with the same bits."""
    if params["cluster"]:
        from finetune.features.dask_runner import on_cluster

        with on_cluster(params, WEIGHTS_FILE, EXTRACT_BATCH) as cluster:
            yield cluster.shape, cluster.extract
        return
    # TensorFlow only now, after the checks that take a second.
    from finetune.model.assembly import build_feature_extractor

    configure(params)
    extractor = build_feature_extractor(params, WEIGHTS_FILE)
    yield tuple(int(n) for n in extractor.output_shape[1:]), functools.partial(extract, extractor)


def extract_training_images(extract_rows: Extract, samples: list[Sample], destination: Path
                            ) -> None:
    """The rows of data/train's images, in the order of `samples`; every one must decode
    (split_classes kept only images that do)."""
    failed = extract_rows(lambda i: Path(samples[i][0]).read_bytes(), len(samples),
                          destination, "features: training images")
    if failed:
        index, reason = next(iter(failed.items()))
        raise StageError(f"{samples[index][0]} cannot be decoded ({reason}): "
                         "run `dvc repro -f split_classes`")


def extract_test_images(extract_rows: Extract, archive: zipfile.ZipFile,
                        infos: list[zipfile.ZipInfo], ids: list[str], destination: Path
                        ) -> dict[str, dict[str, str]]:
    """The rows of the test images, one per id in the order of `ids` (zeros for an image
    that cannot be decoded); return those images by id, with the reason."""
    failed = extract_rows(lambda i: archive.read(infos[i]), len(infos), destination,
                          "features: test images")
    if len(failed) == len(ids):
        raise StageError(f"none of the {len(ids)} test images could be decoded")
    return {ids[i]: {"file": infos[i].filename, "reason": reason}
            for i, reason in sorted(failed.items())}
