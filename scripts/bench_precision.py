"""The reference recipe's network in float32 and in mixed precision, timed side by side.

    python -m scripts.bench_precision [--steps 30] [--batch 64] [--precisions float32 mixed_float16]

Builds the network exactly as the pipeline does (finetune/model/assembly.py, with params.yaml's
recipe: InceptionV3 at 150 px, cut at mixed7, mixed6 .. mixed7 fine-tuned, the Flatten ->
Dense(1024) head), on random weights in the published file's layout (a network's speed
does not depend on its weights' values), and times, for each precision:

- `whole`: a training step of the whole network on pixels (the reference recipe's way);
- `frozen`: the features stage's forward pass (pixels -> frozen part's activations);
- `trained`: a training step of the part above them, on cached activations (what
  `dvc exp run -S lr=...` pays per epoch).

It prints images/s for each, and each precision's speed relative to the first one. Any Keras
backend: `KERAS_BACKEND=jax` runs it where TensorFlow is not installed (see
docs/scaling-out.md, "GPUs").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from finetune.core.params import load_params
from finetune.model.assembly import build_feature_extractor, build_model, set_phase, trained_part
from scripts.random_weights import INCEPTION_NOTOP, write_random_inception

CLASSES = ["cat", "dog"]


def images_per_second(step: Callable[[], object], batch: int, steps: int) -> float:
    """Batches through `step` per second, times the batch, after warm-up steps (compilation)."""
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()  # returns host values (a loss, an array): the device has finished the step
    return batch * steps / (time.perf_counter() - start)


def measure(params: dict, weights: Path, batch: int, steps: int) -> dict[str, float]:
    keras.mixed_precision.set_global_policy(params["precision"])
    keras.utils.set_random_seed(params["seed"])
    rng = np.random.default_rng(0)
    size = params["image_size"]
    pixels = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    labels = rng.integers(0, 2, batch).astype("float32")

    model = build_model(params, weights, fine_tune=True, classes=CLASSES)
    assert keras.backend.standardize_dtype(model.outputs[0].dtype) == "float32"
    extractor = build_feature_extractor(params, weights)
    activations = np.asarray(extractor.predict_on_batch(pixels), dtype="float32")
    trained = trained_part(model)
    set_phase(trained, params, fine_tune=True)
    return {
        "whole": images_per_second(lambda: model.train_on_batch(pixels, labels), batch, steps),
        "frozen": images_per_second(lambda: extractor.predict_on_batch(pixels), batch, steps),
        "trained": images_per_second(lambda: trained.train_on_batch(activations, labels),
                                     batch, steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each kind")
    parser.add_argument("--batch", type=int, default=None, help="default: params.yaml's")
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_float16"])
    args = parser.parse_args()
    params = load_params()
    batch = args.batch or params["batch_size"]
    devices = keras.distribution.list_devices() if hasattr(keras, "distribution") else []
    print(f"bench_precision: Keras {keras.__version__} on {keras.backend.backend()}, "
          f"devices {devices}; {params['backbone']} at {params['image_size']} px, "
          f"batch {batch}, {args.steps} timed steps")
    with tempfile.TemporaryDirectory() as folder:
        weights = write_random_inception(Path(folder) / INCEPTION_NOTOP)
        results = {precision: measure({**params, "precision": precision}, weights, batch,
                                      args.steps)
                   for precision in args.precisions}
    first = args.precisions[0]
    print(f"{'images/s':>16}" + "".join(f"{kind:>10}" for kind in results[first]))
    for precision, speeds in results.items():
        print(f"{precision:>16}" + "".join(f"{speed:>10.0f}" for speed in speeds.values()))
    for precision in args.precisions[1:]:
        ratios = [results[precision][kind] / results[first][kind] for kind in results[first]]
        print(f"{precision + ' / ' + first:>16}" + "".join(f"{r:>10.2f}" for r in ratios))


if __name__ == "__main__":
    main()
