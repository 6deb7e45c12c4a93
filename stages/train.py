"""Stage train: fine-tune the pretrained backbone plus a new head on the training split.

Optionally first trains the head alone (`head_epochs` at `head_lr`, backbone frozen),
then fine-tunes the layers after `unfreeze_after` (`epochs` at `lr`). Per-epoch metrics go
to metrics/train through dvclive; the model kept is the epoch with the lowest validation
loss (`keep: best`) or the last one. It trains on the features stage's cached
activations, or on pixels when augmentation is on (finetune.training.inputs), and saves
the whole model, frozen part included, taking raw pixels (finetune.training.fit); with
`calibration: temperature`, with the temperature fitted on the validation split's logits
in it (finetune.model.calibration).

A killed run resumes on the next `dvc repro` with identical results
(finetune.training.checkpoints). With `strategy: multi_worker` it trains on several
machines at once, `batch_size` being the global batch (finetune.training.multi_worker).
"""

from __future__ import annotations

import sys

from finetune.core.errors import StageError
from finetune.core.params import load_params
from finetune.core.paths import WEIGHTS_FILE
from finetune.core.runner import run_main
from finetune.core.runtime import configure
from finetune.core.timings import mark
from finetune.model.backbone import check_architecture, checked_backbone
from finetune.model.layers import augments
from finetune.training.determinism import set_determinism
from finetune.training.fit import train, train_on_cluster
from finetune.training.inputs import feature_data, pixel_data
from finetune.training.keras_workarounds import check_patched_sources
from finetune.training.multi_worker import check_batch_split, make_strategy, read_tf_config


def main() -> None:
    params = load_params()
    # TF_CONFIG and Keras's patched code are checked before TensorFlow starts.
    role = read_tf_config() if params["strategy"] == "multi_worker" else None
    if role is not None:
        check_batch_split(params["batch_size"], role.workers)
        check_patched_sources()
    configure(params)
    mark("configured")
    # Made before TensorFlow runs any op: it configures the collectives then.
    strategy = make_strategy(params["batch_size"]) if role is not None else None
    # Names are checked before the slow parts (reading inputs, loading weights), on the
    # backbone the model is then built on (built once, not twice): after seeding, so its
    # random initial weights are drawn as inside build_model. A cluster builds it in the
    # strategy's scope, so it checks on a throwaway one, before seeding.
    backbone = None
    if role is None:
        set_determinism(params["seed"])
        backbone = checked_backbone(params)
    else:
        check_architecture(params)
        set_determinism(params["seed"])
    mark("backbone")
    if not WEIGHTS_FILE.exists():
        raise StageError(f"{WEIGHTS_FILE} not found: run `dvc repro fetch_weights` first")
    if augments(params):
        print("train: augmentation is on, so the frozen part's input changes every epoch: "
              "training on pixels, not on the cached features", file=sys.stderr)
        data = pixel_data(params)
    else:
        data = feature_data(params)
    mark("inputs")
    if role is None:
        train(params, data, backbone=backbone)
    else:
        train_on_cluster(params, data, role, strategy)


if __name__ == "__main__":
    run_main(main)
