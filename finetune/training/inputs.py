"""What `fit` reads: the frozen part's cached activations, read from disk batch by batch,
or, with augmentation on (it changes the frozen part's input every epoch), every image
decoded once into memory for the whole model to train on."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from finetune.core.paths import TRAIN_FEATURES, WEIGHTS_FILE
from finetune.dataset.decode import load_images
from finetune.dataset.manifest import open_train_images, read_manifest
from finetune.dataset.split import (
    Sample,
    labels_of,
    paths_of,
    split_samples,
    train_only_classes,
    train_only_note,
)
from finetune.features.store import FeatureFile, read_index
from finetune.training.batches import Batches, EpochBatches


@dataclass
class TrainingData:
    """What `fit` reads: training batches, validation data, and what identifies them."""

    train: EpochBatches
    validation: Batches  # read from the features, or from the pixels in memory
    identity: list  # for the backup's fingerprint
    on_features: bool  # inputs are frozen_base's activations, not pixels
    classes: list[str]  # label i is classes[i]
    validation_paths: list[str]  # the names of the images held out, in validation's order


def split(samples: list[Sample], classes: list[str], params: dict[str, Any]
          ) -> tuple[list[Sample], list[Sample]]:
    """split_samples, saying which classes train only (too small to hold an image out)."""
    train_only = train_only_classes(samples, classes, params["val_split"])
    if train_only:
        print(f"train: {train_only_note(train_only, params['val_split'])}", file=sys.stderr)
    return split_samples(samples, classes, params["val_split"], params["seed"])


def feature_data(params: dict[str, Any]) -> TrainingData:
    """The cached activations of the frozen part, read from disk batch by batch."""
    index = read_index(params, images=read_manifest(), weights=WEIGHTS_FILE)
    row_of = {path: row for row, (path, _) in enumerate(index["train"])}
    train_files, val_files = split(index["train"], index["classes"], params)
    features = FeatureFile(TRAIN_FEATURES)
    train_rows = np.array([row_of[path] for path, _ in train_files])
    val_rows = np.array([row_of[path] for path, _ in val_files])
    batch = params["batch_size"]
    print(f"train: training on the cached features of {len(train_rows)} training and "
          f"{len(val_rows)} validation images ({TRAIN_FEATURES})", file=sys.stderr)
    stat = TRAIN_FEATURES.stat()
    return TrainingData(
        train=EpochBatches(features, train_rows, labels_of(train_files), batch, params["seed"]),
        validation=Batches(features, val_rows, labels_of(val_files), batch),
        identity=[paths_of(train_files), stat.st_size, stat.st_mtime_ns],
        on_features=True, classes=index["classes"], validation_paths=paths_of(val_files))


def pixel_data(params: dict[str, Any]) -> TrainingData:
    """Every image decoded once into memory, for the whole model to train on."""
    images = read_manifest()
    train_files, val_files = split(images.samples, images.classes, params)
    size = params["image_size"]
    with open_train_images(images) as read:
        train_images = load_images(read, paths_of(train_files), size,
                                   "train: decoding training images")
        val_images = load_images(read, paths_of(val_files), size,
                                 "train: decoding validation images")
    return TrainingData(
        train=EpochBatches(train_images, np.arange(len(train_images)), labels_of(train_files),
                           params["batch_size"], params["seed"]),
        validation=Batches(val_images, np.arange(len(val_images)), labels_of(val_files),
                           params["batch_size"]),
        identity=[[name, images.listed[name].size, images.listed[name].crc]
                  for name, _ in train_files],
        on_features=False, classes=images.classes, validation_paths=paths_of(val_files))
