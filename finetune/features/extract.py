"""Running the frozen part over every image, in order, into a feature file: in this
process, or with the same bits on a Dask cluster (finetune.features.dask_runner); and a
whole features folder written (write_features): the features stage's, and with the images
mirrored left-right, the mirrored_features stage's (`tta: flip`)."""

from __future__ import annotations

import contextlib
import functools
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from finetune.core.atomic import atomic_output, remove
from finetune.core.errors import StageError
from finetune.core.paths import FEATURES_INDEX, TEST_FEATURES, TRAIN_FEATURES, WEIGHTS_FILE
from finetune.core.progress import Progress
from finetune.core.runtime import configure
from finetune.dataset.competition import (
    has_test_set,
    images_for_ids,
    open_test_archive,
    read_sample_ids,
)
from finetune.dataset.manifest import open_train_images, read_manifest
from finetune.dataset.split import Sample
from finetune.features.store import FeatureFile, FeatureWriter, weights_fingerprint, write_index

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
def extraction(params: dict[str, Any], mirror: bool = False
               ) -> Iterator[tuple[tuple[int, ...], Extract]]:
    """The frozen part's output shape, and `extract` bound to it: in this process, or on
    the Dask cluster of `params["cluster"]` (finetune.features.dask_runner), with the same bits.
    With `mirror`, of each image mirrored left-right (the extractor's first layer)."""
    if params["cluster"]:
        from finetune.features.dask_runner import on_cluster

        with on_cluster(params, WEIGHTS_FILE, EXTRACT_BATCH, mirror) as cluster:
            yield cluster.shape, cluster.extract
        return
    # TensorFlow only now, after the checks that take a second.
    from finetune.model.assembly import build_feature_extractor

    configure(params)
    extractor = build_feature_extractor(params, WEIGHTS_FILE, mirror=mirror)
    yield tuple(int(n) for n in extractor.output_shape[1:]), functools.partial(extract, extractor)


def extract_training_images(extract_rows: Extract, read: Callable[[str], bytes],
                            samples: list[Sample], destination: Path, stage: str = "features"
                            ) -> None:
    """The rows of the training images (`read(name)`: an image's bytes), in the order of
    `samples`; every one must decode (split_classes listed only images that do)."""
    failed = extract_rows(lambda i: read(samples[i][0]), len(samples),
                          destination, f"{stage}: training images")
    if failed:
        index, reason = next(iter(failed.items()))
        raise StageError(f"{samples[index][0]} cannot be decoded ({reason}): "
                         "run `dvc repro -f split_classes`")


def extract_test_images(extract_rows: Extract, archive: zipfile.ZipFile,
                        infos: list[zipfile.ZipInfo], ids: list[str], destination: Path,
                        stage: str = "features") -> dict[str, dict[str, str]]:
    """The rows of the test images, one per id in the order of `ids` (zeros for an image
    that cannot be decoded); return those images by id, with the reason."""
    failed = extract_rows(lambda i: archive.read(infos[i]), len(infos), destination,
                          f"{stage}: test images")
    if len(failed) == len(ids):
        raise StageError(f"none of the {len(ids)} test images could be decoded")
    return {ids[i]: {"file": infos[i].filename, "reason": reason}
            for i, reason in sorted(failed.items())}


def write_features(params: dict[str, Any], folder: Path, stage: str, mirror: bool = False
                   ) -> None:
    """Write `folder` (the files of FEATURES_DIR: TRAIN_FEATURES', TEST_FEATURES' where the
    data set has a test set, FEATURES_INDEX's) with the rows of the training images and of
    the test set's, each mirrored left-right first where `mirror` (its index then records
    `tta: flip`). `stage` names the stage in what it prints."""
    remove(folder)  # a failed run must not leave another configuration's features
    images = read_manifest()
    classes, samples = images.classes, images.samples
    test_set = has_test_set()
    ids = read_sample_ids() if test_set else []
    with open_train_images(images) as read_training_image, \
            open_test_archive() if test_set else contextlib.nullcontext() as archive:
        infos = images_for_ids(archive, ids) if test_set else []
        # The split too (unfreeze_after inside a block that cut_layer needs whole): train
        # would refuse it, after this stage's hours. TensorFlow starts here, after the
        # quick checks (the archives against the manifest and the ids).
        from finetune.model.backbone import check_architecture

        configure(params)  # before the check's first op: TF's thread pools are fixed then
        check_architecture(params)
        with extraction(params, mirror) as (shape, extract_rows), \
                atomic_output(folder) as staging:
            weights = weights_fingerprint(WEIGHTS_FILE)  # as loaded: train and read_index check it
            print(f"{stage}: {params['backbone']} up to {params['unfreeze_after']} at "
                  f"{params['image_size']} px{', mirrored' if mirror else ''}: "
                  f"{np.prod(shape):,} values per image {shape}", file=sys.stderr)
            staging.mkdir()
            extract_training_images(extract_rows, read_training_image, samples,
                                    staging / TRAIN_FEATURES.name, stage)
            unreadable = extract_test_images(extract_rows, archive, infos, ids,
                                             staging / TEST_FEATURES.name, stage
                                             ) if test_set else {}
            # float16, unless a file had to be float32 (activations beyond float16's range).
            dtypes = [FeatureFile(staging / name).dtype
                      for name in (TRAIN_FEATURES.name, TEST_FEATURES.name)
                      if (staging / name).exists()]
            write_index(staging / FEATURES_INDEX.name, params, shape, classes, samples, ids,
                        unreadable, weights, max(dtypes, key=lambda dtype: dtype.itemsize),
                        tta="flip" if mirror else None)
    test = f"{len(ids):,} test images" if test_set else "no test set"
    print(f"{stage}: wrote {folder}: {len(samples):,} training images of "
          f"{len(classes)} classes, {test}, {len(unreadable)} unreadable", file=sys.stderr)
