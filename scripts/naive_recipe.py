"""The reference recipe written the naive way: the baseline that `make bench` times.

    python -m scripts.naive_recipe CLASS_FOLDERS WEIGHTS [--result FILE.json] [options]

CLASS_FOLDERS holds cat/ and dog/. As the reference does it, flaws included:
keras.utils.image_dataset_from_directory (every JPEG decoded and resized again each
epoch), pixels / 255, InceptionV3 without top loaded from WEIGHTS, cut at mixed7, the
layers after mixed6 trainable (their BatchNormalization in training mode),
Flatten -> Dense(1024, relu) -> Dropout(0.2) -> Dense(1, sigmoid), Adam(1e-5),
binary cross-entropy; `fit` for 2 epochs validating each epoch on the subset
"validation" (validation_split 0.2, seed 1234), then `evaluate` on that subset.

Writes, as JSON: the image counts, the phases' times, and `evaluate`'s accuracy and
loss (binary cross-entropy: the competition's log loss).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="folder with one sub-folder per class")
    parser.add_argument("weights", type=Path, help="the backbone's notop weights (.h5)")
    parser.add_argument("--result", type=Path, help="write the figures here as JSON")
    parser.add_argument("--backbone", default="InceptionV3", help="keras.applications name")
    parser.add_argument("--cut-layer", default="mixed7")
    parser.add_argument("--unfreeze-after", default="mixed6")
    parser.add_argument("--image-size", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--val-split", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1234)
    return parser.parse_args()


def datasets(args: argparse.Namespace) -> tuple[tuple[Any, Any], tuple[int, int]]:
    """Training and validation subsets, rescaled to [0, 1] as the reference does."""
    import keras

    def load(subset: str) -> Any:
        return keras.utils.image_dataset_from_directory(
            args.data, label_mode="binary", image_size=(args.image_size, args.image_size),
            batch_size=args.batch_size, validation_split=args.val_split, subset=subset,
            seed=args.seed)

    train, validation = load("training"), load("validation")
    counts = len(train.file_paths), len(validation.file_paths)
    train, validation = (data.map(lambda x, y: (x / 255.0, y)) for data in (train, validation))
    return (train, validation), counts


def build_model(args: argparse.Namespace) -> Any:
    import keras

    size = args.image_size
    base = getattr(keras.applications, args.backbone)(
        input_shape=(size, size, 3), include_top=False, weights=None)
    base.load_weights(args.weights)
    unfreeze_from = [layer.name for layer in base.layers].index(args.unfreeze_after) + 1
    for index, layer in enumerate(base.layers):
        layer.trainable = index >= unfreeze_from  # BatchNormalization too: the reference's flaw
    x = keras.layers.Flatten()(base.get_layer(args.cut_layer).output)
    x = keras.layers.Dense(1024, activation="relu")(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(base.input, outputs)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=args.lr),
                  loss="binary_crossentropy", metrics=["accuracy"])
    return model


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    import keras

    keras.utils.set_random_seed(args.seed)  # a repeatable head; the reference left it unseeded
    (train, validation), (train_count, val_count) = datasets(args)
    model = build_model(args)
    ready = time.perf_counter()
    # verbose=2: one line per epoch (a progress bar floods a log).
    model.fit(train, validation_data=validation, epochs=args.epochs, verbose=2)
    fitted = time.perf_counter()
    loss, accuracy = model.evaluate(validation, verbose=2)
    done = time.perf_counter()
    result = {
        "train_images": train_count, "val_images": val_count, "epochs": args.epochs,
        "accuracy": float(accuracy), "log_loss": float(loss),
        "seconds": {"setup": ready - start, "fit": fitted - ready, "evaluate": done - fitted},
    }
    print(f"naive_recipe: {json.dumps(result)}", file=sys.stderr)
    if args.result:
        args.result.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
