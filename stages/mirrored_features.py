"""Stage mirrored_features: the features of each image mirrored left-right, for
test-time augmentation (`tta: flip`).

With `tta: flip`, evaluate and submit average each image's class probabilities with
those of its mirror image; the layers above the frozen part run on cached activations,
so the mirror images need theirs too. This stage writes them: data/mirrored_features/
holds what data/features holds (train.npy, test.npy where there is a test set,
index.json recording `tta: flip`), rows in the same order, computed by the features
stage's own code (finetune.features.extract.write_features) with an extractor that
mirrors each image first. With `tta: none` it writes only index.json, saying so, at
once: no TensorFlow.

A stage of its own, not a part of features: switching `tta` recomputes neither the
plain features nor the model (train does not read it), and `dvc exp run -S lr=...`
does not rerun this one.
"""

from __future__ import annotations

import sys

from finetune.core.atomic import atomic_output, remove
from finetune.core.params import load_params
from finetune.core.paths import MIRRORED_FEATURES_DIR, MIRRORED_FEATURES_INDEX
from finetune.core.runner import run_main
from finetune.features.extract import write_features
from finetune.features.store import write_no_mirrored_index


def main() -> None:
    params = load_params()
    if params["tta"] == "none":
        remove(MIRRORED_FEATURES_DIR)
        with atomic_output(MIRRORED_FEATURES_DIR) as staging:
            staging.mkdir()
            write_no_mirrored_index(staging / MIRRORED_FEATURES_INDEX.name)
        print(f"mirrored_features: tta: none, nothing to compute: {MIRRORED_FEATURES_DIR} "
              "holds only its index", file=sys.stderr)
        return
    write_features(params, MIRRORED_FEATURES_DIR, "mirrored_features", mirror=True)


if __name__ == "__main__":
    run_main(main)
