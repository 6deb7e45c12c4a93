"""An InceptionV3 notop weights file with random weights, for benchmarks offline.

    python -m scripts.random_weights FILE [--seed 0]

The file is in the legacy Keras-2 HDF5 layout of the published
inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5, so that both the pipeline's
fetch_weights/train and `keras.applications.InceptionV3(weights=None).load_weights(FILE)`
read it as they would the real one. The weights are random: a network's speed does not
depend on its weights' values, its accuracy does (chance, here).
"""

from __future__ import annotations

import argparse
from pathlib import Path

# The real file's name: Keras picks the loader by the name's ending, and a benchmark
# should read the file exactly as it reads the real one.
INCEPTION_NOTOP = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"


def write_random_inception(path: Path, seed: int = 0) -> Path:
    """Write InceptionV3's notop weights, randomly initialised with `seed`, to `path`."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(seed)
    # Convolution weights do not depend on the input size: the smallest size is fastest.
    model = keras.applications.InceptionV3(include_top=False, weights=None,
                                           input_shape=(75, 75, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".partial-{path.name}")  # never a half-written file at `path`
    # Keras 3's save_weights writes only its new format; this writes the legacy one.
    with h5py.File(partial, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, model)
    partial.replace(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help=f"file to write (name it {INCEPTION_NOTOP})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args()
    write_random_inception(args.file, args.seed)
    print(f"random_weights: wrote {args.file}")


if __name__ == "__main__":
    main()
