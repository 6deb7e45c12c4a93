"""Stage features: run the frozen part of the network once per image, and cache it.

The frozen part (preprocessing + backbone up to `unfreeze_after`) is most of the
network's cost and never trained, so its output is the same for every experiment that
keeps the backbone, its weights, the image size, the preprocessing and `unfreeze_after`:
the only params of this stage. `dvc exp run -S lr=...` reuses it; train, evaluate and
submit run only the layers above it.

Writes data/features/: train.npy (a float16 row per image of data/train, in the order of
index.json, which names them relative to data/train), test.npy where the data set has a
test set (a row per id of sample_submission.csv; zeros for an unreadable test image,
listed in index.json) and index.json (finetune.features.store). With `cluster` set, the
same bytes are computed on a Dask cluster (finetune.features.dask_runner).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np

from finetune.core.atomic import atomic_output, remove
from finetune.core.params import load_params
from finetune.core.paths import (
    FEATURES_DIR,
    FEATURES_INDEX,
    TEST_FEATURES,
    TRAIN_DIR,
    TRAIN_FEATURES,
    TRAIN_MANIFEST,
    WEIGHTS_FILE,
)
from finetune.core.runner import run_main
from finetune.dataset.competition import (
    has_test_set,
    images_for_ids,
    open_test_archive,
    read_sample_ids,
)
from finetune.dataset.manifest import check_manifest
from finetune.dataset.split import class_names, list_samples
from finetune.features.extract import (
    extract_test_images,
    extract_training_images,
    extraction,
)
from finetune.features.store import FeatureFile, weights_fingerprint, write_index


def main() -> None:
    params = load_params()
    remove(FEATURES_DIR)  # a failed run must not leave another configuration's features
    classes, samples = class_names(TRAIN_DIR), list_samples(TRAIN_DIR)
    check_manifest(TRAIN_DIR, samples, TRAIN_MANIFEST)
    # The split too (unfreeze_after inside a block that cut_layer needs whole): train would
    # refuse it, after this stage's hours. TensorFlow starts here, after the quick checks.
    from finetune.core.runtime import configure
    from finetune.model.backbone import check_architecture

    configure(params)  # before the check's first op: TensorFlow's thread pools are fixed then
    check_architecture(params)
    test_set = has_test_set()
    ids = read_sample_ids() if test_set else []
    with open_test_archive() if test_set else contextlib.nullcontext() as archive:
        infos = images_for_ids(archive, ids) if test_set else []
        with extraction(params) as (shape, extract_rows), \
                atomic_output(FEATURES_DIR) as staging:
            weights = weights_fingerprint(WEIGHTS_FILE)  # as loaded: train and read_index check it
            print(f"features: {params['backbone']} up to {params['unfreeze_after']} at "
                  f"{params['image_size']} px: {np.prod(shape):,} values per image {shape}",
                  file=sys.stderr)
            staging.mkdir()
            extract_training_images(extract_rows, samples, staging / TRAIN_FEATURES.name)
            unreadable = extract_test_images(extract_rows, archive, infos, ids,
                                             staging / TEST_FEATURES.name) if test_set else {}
            # Paths relative to data/train: the features do not care where the folder is.
            names = [(Path(path).relative_to(TRAIN_DIR).as_posix(), label)
                     for path, label in samples]
            # float16, unless a file had to be float32 (activations beyond float16's range).
            dtypes = [FeatureFile(staging / name).dtype
                      for name in (TRAIN_FEATURES.name, TEST_FEATURES.name)
                      if (staging / name).exists()]
            write_index(staging / FEATURES_INDEX.name, params, shape, classes, names, ids,
                        unreadable, weights, max(dtypes, key=lambda dtype: dtype.itemsize))
    test = f"{len(ids):,} test images" if test_set else "no test set"
    print(f"features: wrote {FEATURES_DIR}: {len(samples):,} training images of "
          f"{len(classes)} classes, {test}, {len(unreadable)} unreadable", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
