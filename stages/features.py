"""Stage features: run the frozen part of the network once per image, and cache it.

The frozen part (preprocessing + backbone up to `unfreeze_after`) is most of the
network's cost and never trained, so its output is the same for every experiment that
keeps the backbone, its weights, the image size, the preprocessing and `unfreeze_after`:
the only params of this stage. `dvc exp run -S lr=...` reuses it; train, evaluate and
submit run only the layers above it.

Writes data/features/: train.npy (a float16 row per training image, read from
data/raw/train.zip as data/train.json lists them, in the order of index.json, which names
them), test.npy where the data set has a
test set (a row per id of sample_submission.csv; zeros for an unreadable test image,
listed in index.json) and index.json (finetune.features.store). With `cluster` set, the
same bytes are computed on a Dask cluster (finetune.features.dask_runner). The work is
finetune.features.extract.write_features, which mirrored_features runs too.
"""

from __future__ import annotations

from finetune.core.params import load_params
from finetune.core.paths import FEATURES_DIR
from finetune.core.runner import run_main
from finetune.features.extract import write_features


def main() -> None:
    params = load_params()
    write_features(params, FEATURES_DIR, "features")


if __name__ == "__main__":
    run_main(main)
