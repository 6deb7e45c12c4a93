"""Name the class of image files: `predict [--model FILE] [--all] PATH...` (the command
`pip install -e .` installs), or `python -m finetune.predict ...`.

One line per file on stdout, in the order given: `PATH<TAB>class<TAB>probability`, or
`PATH<TAB>error<TAB>reason` (every file gets one line, so the output stays easy to parse);
`--all` adds every class's probability as NAME=P fields. The model carries its image size
and class names, so params.yaml is not read. Exit status 0: all predicted; 1: some
failed; 2: nothing done (one line on stderr). See docs/pipeline.md, "Predicting new
images".

`--tta flip` averages each image's probabilities with its mirror image's (left-right):
pass it to match a project evaluated with `tta: flip` (the model does not carry params).

`--model FILE.onnx` (an export of the model, models/export/model.onnx) runs on onnxruntime,
Pillow and NumPy alone: TensorFlow is never imported (finetune.model.onnx_runtime,
finetune.dataset.pillow_decode; see docs/deploy.md).

`--explain DIR` also writes DIR/STEM.png per image predicted: the photo with the Grad-CAM
heat map of the predicted class overlaid (finetune.evaluation.heat_maps). It needs the
Keras model (gradients), so an ONNX one is refused.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from finetune.core.errors import StageError
from finetune.core.paths import DEMO_DIR, MODEL_FILE
from finetune.core.progress import Progress
from finetune.core.runner import run_main
from finetune.dataset.image_files import IMAGE_EXTENSIONS


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="predict",
        description="Print 'PATH<TAB>CLASS<TAB>PROBABILITY' per image (the most probable "
                    "of the model's classes), or 'PATH<TAB>error<TAB>REASON'. Exit 0: all "
                    "predicted, 1: some failed, 2: nothing done (bad PATH, no images, no "
                    "model).")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image file, or folder searched recursively for "
                             f"{' '.join(sorted(IMAGE_EXTENSIONS))} files")
    parser.add_argument("--model", type=Path, default=MODEL_FILE, metavar="FILE",
                        help=f"trained model (default: {MODEL_FILE}), or its ONNX export "
                             "(FILE.onnx: run without TensorFlow)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N",
                        help="images per model call (default: 32)")
    parser.add_argument("--all", action="store_true",
                        help="also print every class's probability, as NAME=P fields")
    parser.add_argument("--explain", type=Path, metavar="DIR",
                        help="also write DIR/STEM.png per image: the photo with the Grad-CAM "
                             "heat map of the predicted class (Keras model only)")
    parser.add_argument("--tta", choices=("none", "flip"), default="none",
                        help="test-time augmentation: 'flip' averages each image's "
                             "probabilities with its mirror image's, as a project with "
                             "tta: flip evaluates and submits (default: none)")
    args = parser.parse_args()
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    return args


def image_files(arguments: list[str]) -> list[Path]:
    """The files to predict: each file as given, each folder's images sorted."""
    files: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            files += sorted(found for found in path.rglob("*")
                            if found.suffix.lower() in IMAGE_EXTENSIONS and found.is_file())
        elif path.exists():
            files.append(path)  # named explicitly: tried whatever its extension
        else:
            raise StageError(f"{argument}: no such file or folder")
    if not files:
        raise StageError(f"no {'/'.join(sorted(IMAGE_EXTENSIONS))} images found in "
                         f"{', '.join(arguments)}")
    return files


class Classifier(NamedTuple):
    """What predict needs of a model: its image size and class names, a decoder of image
    bytes to its pixels (or the reason they cannot be), and its probabilities per class."""

    size: int
    classes: list[str]
    decode: Callable[[bytes, int], Any]
    probabilities: Callable[[Any], Any]
    model: Any = None  # the Keras model, for --explain's gradients (None: an ONNX one)


def keras_classifier(model_file: Path) -> Classifier:
    """The Keras model, with the pipeline's own decoder (TensorFlow's)."""
    from finetune.dataset.decode import decode_pixels
    from finetune.model.saved import (
        load_model,
        model_class_names,
        model_image_size,
        predict_probabilities,
    )

    model = load_model(model_file)
    return Classifier(model_image_size(model, model_file), model_class_names(model),
                      decode_pixels, lambda images: predict_probabilities(model, images), model)


def onnx_classifier(model_file: Path) -> Classifier:
    """An ONNX export on onnxruntime, images decoded by Pillow: no TensorFlow."""
    from finetune.dataset.pillow_decode import decode_pixels
    from finetune.model.onnx_runtime import OnnxClassifier

    model = OnnxClassifier(model_file)
    return Classifier(model.image_size, model.classes, decode_pixels, model.probabilities)


def load(path: Path, classifier: Classifier) -> Any:
    """The image's pixels as the model takes them, or the reason it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return error.strerror or str(error)
    return classifier.decode(data, classifier.size)


def missing_model(model: Path) -> str:
    """What to say when `model` is not there: for the default one, where a model is (the
    demo's, which `make demo` trains offline; `dvc repro train` needs Kaggle or a
    data_source), as paths to type from here."""
    if model != MODEL_FILE:
        return f"{model} not found"
    demo_model = DEMO_DIR / MODEL_FILE
    if demo_model.is_file():
        return (f"{model} not found: pass --model {demo_model} (the model `make demo` "
                "trained), or run `dvc repro train`")
    return f"{model} not found: run `dvc repro train`, or pass --model"


def explained_files(files: list[Path], folder: Path, model: Path) -> None:
    """Refuse --explain where it cannot write one PNG per image: for an ONNX model, to a
    folder that is a file, or when two images would write the same folder/STEM.png."""
    if model.suffix.lower() == ".onnx":
        raise StageError(f"--explain needs the Keras model (its gradients), not {model}: "
                         "pass --model models/model.keras")
    if folder.exists() and not folder.is_dir():
        raise StageError(f"--explain {folder}: is a file, not a folder")
    writer: dict[str, Path] = {}
    for file in files:
        first = writer.setdefault(file.stem, file)
        if first.resolve() != file.resolve():
            raise StageError(f"--explain: {first} and {file} would both write "
                             f"{folder / (file.stem + '.png')}: explain them in separate runs")


def explain(classifier: Classifier, files: list[Path], images: Any, rows: Any,
            folder: Path) -> None:
    """Write folder/STEM.png for each file: its photo with the heat map of the class
    predicted (each row's most probable), titled with that class and its probability."""
    from finetune.evaluation.heat_maps import grad_cam, heat_map_figure, save_figure

    best = rows.argmax(axis=1)
    heat_maps, _ = grad_cam(classifier.model, images, best)
    for path, heat_map, row, index in zip(files, heat_maps, rows, best, strict=True):
        title = f"{path.name}: {classifier.classes[index]} ({row[index]:.6f})"
        save_figure(heat_map_figure(path, heat_map, title), folder / f"{path.stem}.png")


def probabilities_of(classifier: Classifier, images: Any, tta: str) -> Any:
    """The classifier's probabilities for a batch of pixels; with `tta` "flip", averaged
    with those of the images mirrored left-right (NumPy's flip of the width axis: what
    mirrored_features' extractor does in the model, finetune.model.layers.mirroring)."""
    import numpy as np

    from finetune.model.probabilities import mirror_average

    probabilities = classifier.probabilities(images)
    if tta == "none":
        return probabilities
    mirrored = np.ascontiguousarray(np.flip(images, axis=2))  # onnxruntime wants it whole
    return mirror_average(probabilities, classifier.probabilities(mirrored))


def predict(args: argparse.Namespace) -> int:
    """Print one line per file; return how many failed."""
    files = image_files(args.paths)  # before loading the model: it takes seconds
    if args.explain is not None:
        explained_files(files, args.explain, args.model)
    if not args.model.is_file():
        raise StageError(missing_model(args.model))
    import numpy as np

    classifier = (onnx_classifier if args.model.suffix.lower() == ".onnx"
                  else keras_classifier)(args.model)
    classes = classifier.classes
    failed = 0
    progress = Progress("predict", len(files))
    # Decoding releases the GIL, so threads decode a batch's files at once. Each file
    # is decoded on its own, so a bad one is reported without spoiling its batch.
    with ThreadPoolExecutor() as pool:
        for start in range(0, len(files), args.batch_size):
            batch = files[start:start + args.batch_size]
            loaded = list(pool.map(lambda path: load(path, classifier), batch))
            good = [index for index, item in enumerate(loaded) if not isinstance(item, str)]
            probabilities: dict[int, np.ndarray] = {}
            if good:
                images = np.stack([loaded[i] for i in good])
                predicted = probabilities_of(classifier, images, args.tta)
                probabilities = dict(zip(good, predicted, strict=True))
                if args.explain is not None:
                    explain(classifier, [batch[i] for i in good], images, predicted,
                            args.explain)
            for index, path in enumerate(batch):
                if index in probabilities:
                    row = probabilities[index]
                    best = int(row.argmax())
                    every = "".join(f"\t{name}={p:.6f}" for name, p in zip(classes, row,
                                                                          strict=True))
                    print(f"{path}\t{classes[best]}\t{row[best]:.6f}{every if args.all else ''}")
                else:
                    failed += 1
                    print(f"{path}\terror\t{loaded[index]}")
            sys.stdout.flush()  # results as they come, when piped too
            progress.update(len(batch))
    if failed:
        print(f"predict: {failed} of {len(files)} file(s) could not be read as images",
              file=sys.stderr)
    return failed


def main() -> None:
    args = parse_args()  # before TensorFlow is imported: --help and usage errors are instant
    sys.exit(1 if predict(args) else 0)


def cli() -> None:
    """The `predict` command. A StageError means nothing was predicted: status 2, apart from
    1 for "some failed"."""
    run_main(main, error_status=2)


if __name__ == "__main__":
    cli()
