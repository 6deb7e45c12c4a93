"""What each deployable format of the model costs, measured on this CPU: a deployer's table.

    python -m scripts.bench_export [--model FILE] [--photos DIR]     (make bench-export)

Without --model it builds the network of params.yaml's recipe (InceptionV3 at 150 px cut
at mixed7, the Flatten -> Dense(1024) head; random weights: speed and size do not depend
on their values), as the pipeline does. It exports the model in every format
(finetune.model.export, as the export stage does) and prints, for the Keras file and
each export, on the runtime a deployment would use:

- file size; load time (the model file into its runtime, the runtime already imported);
- one-image latency, the median of 50 calls; throughput at batch 32 (images/s);
- install size of the runtime: the installed files of its package and everything it
  requires (importlib.metadata), and the export's parity with the Keras file.

--photos DIR also compares `predict --model model.onnx` (Pillow's decoder, no TensorFlow)
with `predict` (TensorFlow's) on every image under DIR: the largest probability
difference and the labels changed (docs/deploy.md). Needs extras/export.txt.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
from packaging.requirements import Requirement

from finetune.dataset.image_files import IMAGE_EXTENSIONS

FORMATS = ["tf_saved_model", "litert", "onnx"]
# format -> the runtime's distributions a deployment installs (beyond Python)
RUNTIMES = {
    "keras": ("Keras on TensorFlow", ["keras", "tensorflow"]),
    "tf_saved_model": ("TensorFlow", ["tensorflow"]),
    "litert": ("ai-edge-litert", ["ai-edge-litert"]),
    "onnx": ("onnxruntime (+ Pillow: predict)", ["onnxruntime", "pillow"]),
}


def install_size(names: list[str]) -> int:
    """Bytes of the installed files of `names` and of every distribution they require."""
    seen: set[str] = set()
    todo = list(names)
    total = 0
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        total += sum(file.size or 0 for file in dist.files or [])
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return total


def folder_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(
        file.stat().st_size for file in path.rglob("*") if file.is_file())


def build_default_model(folder: Path) -> Path:
    """params.yaml's network with random weights, saved as the train stage saves it."""
    from finetune.core.params import load_params
    from finetune.model.assembly import build_model
    from scripts.random_weights import INCEPTION_NOTOP, write_random_inception

    params = load_params()
    weights = write_random_inception(folder / INCEPTION_NOTOP)
    model = build_model(params, weights, fine_tune=True, classes=["cat", "dog"])
    path = folder / "model.keras"
    model.save(path)
    return path


def loaders(folder: Path, model_file: Path) -> dict[str, Callable[[], Callable]]:
    """format -> a loader returning `predict(pixels) -> outputs` on its runtime."""

    def keras_model() -> Callable:
        from finetune.model.saved import load_model

        model = load_model(model_file)
        return model.predict_on_batch

    def saved_model() -> Callable:
        import tensorflow as tf

        loaded = tf.saved_model.load(str(folder / "saved_model"))
        return lambda pixels: loaded.serve(pixels).numpy()

    def litert() -> Callable:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(folder / "model.tflite"))
        (image,), (output,) = (interpreter.get_input_details(),
                               interpreter.get_output_details())
        shape: list[tuple[int, ...]] = [()]

        def run(pixels: np.ndarray) -> np.ndarray:
            if pixels.shape != shape[0]:  # resizing reallocates: only when the batch changes
                interpreter.resize_tensor_input(image["index"], pixels.shape)
                interpreter.allocate_tensors()
                shape[0] = pixels.shape
            interpreter.set_tensor(image["index"], pixels)
            interpreter.invoke()
            return interpreter.get_tensor(output["index"])
        return run

    def onnx() -> Callable:
        from finetune.model.onnx_runtime import OnnxClassifier

        return OnnxClassifier(folder / "model.onnx").probabilities

    return {"keras": keras_model, "tf_saved_model": saved_model, "litert": litert,
            "onnx": onnx}


def measure(load: Callable[[], Callable], size: int, reference: np.ndarray,
            probe: np.ndarray) -> dict[str, float]:
    from finetune.model.probabilities import class_probabilities

    start = time.perf_counter()
    predict = load()
    loaded = time.perf_counter() - start
    parity = float(np.abs(class_probabilities(predict(probe)) - reference).max())
    one = np.random.default_rng(1).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    for _ in range(3):
        predict(one)
    latencies = []
    for _ in range(50):
        start = time.perf_counter()
        predict(one)
        latencies.append(time.perf_counter() - start)
    batch = np.random.default_rng(2).uniform(0, 255, (32, size, size, 3)).astype(np.float32)
    predict(batch)
    start = time.perf_counter()
    for _ in range(5):
        predict(batch)
    throughput = 5 * 32 / (time.perf_counter() - start)
    return {"load": loaded, "latency": statistics.median(latencies), "throughput": throughput,
            "parity": parity}


def compare_predict(model_file: Path, onnx_file: Path, photos: Path) -> str:
    """`predict` (TensorFlow's decoder, model.keras) against the ONNX predict (Pillow's
    decoder, model.onnx) on every image under `photos`."""
    from finetune.dataset import decode, pillow_decode
    from finetune.model.onnx_runtime import OnnxClassifier
    from finetune.model.saved import load_model, model_image_size, predict_probabilities

    model = load_model(model_file)
    onnx = OnnxClassifier(onnx_file)
    size = model_image_size(model, model_file)
    files = sorted(path for path in photos.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS)
    largest, changed, pixel_largest = 0.0, 0, 0.0
    for start in range(0, len(files), 64):
        data = [path.read_bytes() for path in files[start:start + 64]]
        tf_pixels = np.stack([decode.decode_pixels(item, size) for item in data])
        pil_pixels = np.stack([pillow_decode.decode_pixels(item, size) for item in data])
        pixel_largest = max(pixel_largest, float(np.abs(tf_pixels - pil_pixels).max()))
        ours = predict_probabilities(model, tf_pixels)
        theirs = onnx.probabilities(pil_pixels)
        largest = max(largest, float(np.abs(ours - theirs).max()))
        changed += int((ours.argmax(axis=1) != theirs.argmax(axis=1)).sum())
    return (f"predict --model model.onnx vs predict on {len(files)} images of {photos}: "
            f"largest probability difference {largest:.4f}, labels changed {changed}, "
            f"largest pixel difference {pixel_largest:.0f} levels")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a trained model.keras (default: "
                        "params.yaml's network, random weights)")
    parser.add_argument("--photos", type=Path, help="compare the ONNX predict with predict "
                        "on these images")
    args = parser.parse_args()
    from finetune.model.export import export_model
    from finetune.model.saved import load_model, model_class_names, model_image_size

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        model_file = args.model or build_default_model(folder)
        model = load_model(model_file)
        size = model_image_size(model, model_file)
        start = time.perf_counter()
        export_model(model, folder, FORMATS, model_class_names(model), size)
        exported = time.perf_counter() - start
        probe = np.random.default_rng(0).uniform(0, 255, (8, size, size, 3)).astype(np.float32)
        from finetune.model.saved import predict_probabilities

        reference = predict_probabilities(model, probe)
        del model
        files = {"keras": model_file, "tf_saved_model": folder / "saved_model",
                 "litert": folder / "model.tflite", "onnx": folder / "model.onnx"}
        print(f"{model_file.name if args.model else 'params.yaml network'} at {size} px; "
              f"all three exports written in {exported:.0f} s")
        print("| format | file | size | load | latency (1 image, median of 50) | "
              "batch 32 | runtime | runtime install | max diff vs .keras |")
        print("|---|---|---:|---:|---:|---:|---|---:|---:|")
        for name, load in loaders(folder, model_file).items():
            figures = measure(load, size, reference, probe)
            runtime, packages = RUNTIMES[name]
            print(f"| {name} | {files[name].name} | {folder_size(files[name]) / 1e6:.1f} MB | "
                  f"{figures['load']:.2f} s | {figures['latency'] * 1e3:.1f} ms | "
                  f"{figures['throughput']:.0f} images/s | {runtime} | "
                  f"{install_size(packages) / 1e6:.0f} MB | {figures['parity']:.1e} |",
                  flush=True)
        if args.photos:
            print(compare_predict(model_file, folder / "model.onnx", args.photos))


if __name__ == "__main__":
    main()
