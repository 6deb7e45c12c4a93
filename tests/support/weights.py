"""Backbone weight files made at test time, in the legacy HDF5 layout of the published
notop files: random InceptionV3, and MobileNet with BatchNormalization calibrated on the
drawn photos."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.support.photos import photo_pixels

# The same file name as the real one, so the legacy-HDF5 layout is the real one too.
INCEPTION_NOTOP = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"


def write_legacy_weights(model, path: Path) -> None:
    """Save `model`'s weights in the legacy Keras-2 HDF5 layout of the published *_notop.h5
    files (Keras 3's save_weights only writes its new format)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, model)


def calibrate_batchnorm(backbone, images) -> None:
    """Set each BatchNormalization layer's moving statistics to those of its inputs on
    `images` (preprocessed). Random weights with the initial statistics (mean 0, variance
    1) make features vanish within a few blocks and every prediction 0.5; calibrated,
    the random features still tell the drawn classes apart, as pretrained ones would."""
    import keras
    import numpy as np

    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            inputs = np.asarray(keras.Model(backbone.input, layer.input)(images))
            gamma, beta, _, _ = layer.get_weights()
            layer.set_weights([gamma, beta, inputs.mean(axis=(0, 1, 2)),
                               inputs.var(axis=(0, 1, 2))])


def md5(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "md5").hexdigest()


def inception_random_weights(folder: Path) -> Path:
    """InceptionV3 without top, random weights, in the layout of the real notop file."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.InceptionV3(include_top=False, weights=None,
                                           input_shape=(75, 75, 3))
    path = folder / INCEPTION_NOTOP
    write_legacy_weights(model, path)
    return path


def mobilenet_random_weights(folder: Path, sample_dir: Path) -> Path:
    """MobileNet (alpha 0.25) without top: random weights, BatchNormalization calibrated
    on the drawn photos at 96 px, in the legacy HDF5 layout of the published files.
    Loads at any image size; stands in for the pretrained file wherever a test's claim
    is about the pipeline, not about transfer. Random features keep the classes apart
    in the first blocks only: a test that needs learning cuts at `conv_pw_3_relu`
    (a linear probe there: 0.93 on held-out drawn photos; at `conv_pw_13_relu`: chance)."""
    import keras
    import numpy as np

    size = 96
    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNet(input_shape=(size, size, 3), alpha=0.25,
                                            include_top=False, weights=None)
    photos = sorted((sample_dir / "train").glob("*.jpg"))[::3]
    pixels = np.stack([photo_pixels(photo, size) for photo in photos])
    calibrate_batchnorm(backbone, pixels / 127.5 - 1)  # MobileNet's preprocess_input
    path = folder / "mobilenet_2_5_notop_random.h5"
    write_legacy_weights(backbone, path)
    return path
