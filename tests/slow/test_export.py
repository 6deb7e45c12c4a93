"""The export stage and the TensorFlow-free predict, on real photos (slow: `make
test-slow`, which installs extras/export.txt; run by CI).

One model: the real ImageNet-pretrained MobileNet (alpha 0.25) from ../shared at 128 px,
global average pooling and a sigmoid whose weights are set so that its logits have mean 0
and standard deviation 2 over the shared test photos (predictions on both sides of 0.5,
many far from it: a mix-up of classes or of pixels shows). The export stage writes every
format of it once (in this process); then
  - every export gives the Keras model's probabilities within 1e-5 on the 100 real test
    photos, each on its own runtime: TensorFlow for the SavedModel, LiteRT's interpreter
    (ai-edge-litert) for model.tflite, onnxruntime for model.onnx;
  - `predict --model model.onnx` runs with TensorFlow and Keras made unimportable, prints
    what `predict` prints in the same format, with the same exit statuses, and its
    probabilities are the TensorFlow predict's: within 1e-5 on lossless images, within
    JPEG_TOLERANCE on JPEGs (Pillow's IDCT is not TensorFlow's); the measured differences
    are printed (docs/deploy.md gives them for the demo's trained model).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.commands import call_stage, error_line, stage_env
from tests.support.projects import write_params
from tests.support.shared import ROOT

pytestmark = pytest.mark.slow

SIZE = 128
CLASSES = ["cat", "dog"]
FORMATS = ["tf_saved_model", "litert", "onnx"]
PARITY = 1e-5  # float32 exports: the same arithmetic, in another order
# JPEG decoders differ by a few levels on a pixel (libjpeg's fast IDCT in TensorFlow, the
# accurate one in Pillow): measured on the 100 shared test photos through this model (its
# logits stretched to a standard deviation of 2), the probabilities move by 0.022 on
# average and 0.113 at most, and 1 label of 103 changes (printed by the test). The bounds
# leave room; a bug in the pixels (channels swapped, no resize) moves far more.
JPEG_TOLERANCE = 0.2
LABELS_CHANGED = 3
# Python with TensorFlow, Keras (and the other Keras backends) unimportable, then `predict`.
TF_FREE = ("import sys\n"
           "for name in ('tensorflow', 'keras', 'tf_keras', 'jax', 'torch'):\n"
           "    sys.modules[name] = None  # `import name` raises ImportError\n"
           "from finetune.predict import cli\n"
           "cli()\n")


@pytest.fixture(scope="module")
def test_photos(real_sample_dir: Path) -> list[Path]:
    return [real_sample_dir / "test" / f"{n}.jpg" for n in range(1, 101)]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, mobilenet_weights: Path,
            test_photos: list[Path]) -> Path:
    """A project holding the model in models/model.keras, after the export stage wrote
    every format."""
    import keras

    from finetune.core.params import load_params
    from finetune.dataset.decode import decode_pixels
    from finetune.model.assembly import build_model

    root = tmp_path_factory.mktemp("export") / "project"
    params = write_params(root, backbone="MobileNet", alpha=0.25, image_size=SIZE,
                          cut_layer="last", unfreeze_after="last", head="gap",
                          dense_units=0, export_formats=FORMATS)
    params = {**load_params(root / "params.yaml"), **params}
    keras.utils.set_random_seed(0)
    model = build_model(params, mobilenet_weights, fine_tune=False, classes=CLASSES)
    pixels = np.stack([decode_pixels(photo.read_bytes(), SIZE) for photo in test_photos])
    features = np.asarray(model.get_layer("head").layers[0](
        model.get_layer("frozen_base")(model.get_layer("preprocessing")(pixels))))
    output = model.get_layer("head").layers[-1]
    kernel, _ = output.get_weights()
    logits = features @ kernel
    scale = 2 / logits.std()
    output.set_weights([kernel * scale, -logits.mean(axis=0) * scale])
    (root / "models").mkdir()
    model.save(root / "models" / "model.keras")
    result = call_stage("export", root)
    assert result.returncode == 0, result.stderr
    assert "export: wrote models/export: saved_model, model.tflite, model.onnx" in result.stderr
    return root


def test_export_writes_every_format_with_the_classes_beside_them(project):
    export = project / "models" / "export"
    assert sorted(path.name for path in export.iterdir()) == [
        "classes.json", "formats.json", "model.onnx", "model.tflite", "saved_model"]
    assert json.loads((export / "classes.json").read_text()) == {
        "classes": CLASSES, "image_size": SIZE}
    assert (export / "saved_model" / "saved_model.pb").is_file()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(export / "model.onnx"))
    assert session.get_modelmeta().custom_metadata_map == {
        "class_names": json.dumps(CLASSES), "image_size": str(SIZE)}
    (image,) = session.get_inputs()
    assert image.name == "image" and image.shape[1:] == [SIZE, SIZE, 3]


def run_tflite(path: Path, pixels: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    (image,), (output,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(image["index"], pixels.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(image["index"], pixels)
    interpreter.invoke()
    return interpreter.get_tensor(output["index"])


def test_every_export_gives_the_keras_models_probabilities(project, test_photos):
    import onnxruntime
    import tensorflow as tf

    from finetune.dataset.decode import decode_pixels
    from finetune.model.probabilities import class_probabilities
    from finetune.model.saved import load_model, predict_probabilities

    export = project / "models" / "export"
    pixels = np.stack([decode_pixels(photo.read_bytes(), SIZE) for photo in test_photos])
    expected = predict_probabilities(load_model(project / "models" / "model.keras"), pixels)
    assert expected[:, 1].min() < 0.1 and expected[:, 1].max() > 0.9  # spread out
    onnx = onnxruntime.InferenceSession(str(export / "model.onnx"))
    saved_model = tf.saved_model.load(str(export / "saved_model"))  # kept: serve uses its variables
    outputs = {
        "tf_saved_model": saved_model.serve(pixels),
        "litert": run_tflite(export / "model.tflite", pixels),
        "onnx": onnx.run(None, {"image": pixels})[0],
    }
    for name, output in outputs.items():
        difference = np.abs(class_probabilities(np.asarray(output)) - expected).max()
        print(f"{name}: largest probability difference from model.keras on "
              f"{len(test_photos)} real photos: {difference:.2e}")
        assert difference <= PARITY, name


def predict_lines(result: subprocess.CompletedProcess[str]) -> dict[str, list[str]]:
    return {line.split("\t")[0]: line.split("\t")[1:] for line in result.stdout.splitlines()}


def run_predict(*args: str, tf_free: bool) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", TF_FREE] if tf_free else [
        sys.executable, "-m", "finetune.predict"]
    return subprocess.run([*command, *args], cwd=ROOT, env={**stage_env(), "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)


def test_onnx_predict_needs_no_tensorflow_and_answers_as_predict(project, test_photos,
                                                                 tmp_path):
    from PIL import Image

    pngs = []
    for photo in test_photos[:3]:  # lossless: every correct decoder gives the same pixels
        with Image.open(photo) as image:
            pngs.append(tmp_path / f"{photo.stem}.png")
            image.save(pngs[-1])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(test_photos[0].read_bytes()[:500])
    files = [str(path) for path in [*test_photos, *pngs, bad]]
    keras_run = run_predict("--all", "--model", str(project / "models/model.keras"), *files,
                            tf_free=False)
    onnx_run = run_predict("--all", "--model", str(project / "models/export/model.onnx"),
                           *files, tf_free=True)
    for run in (keras_run, onnx_run):
        assert run.returncode == 1, run.stderr  # one file failed
        assert "Traceback" not in run.stderr, run.stderr
        assert f"predict: 1 of {len(files)} file(s) could not be read as images" in run.stderr
    expected, got = predict_lines(keras_run), predict_lines(onnx_run)
    assert list(got) == files  # every file, in the order given
    assert got[str(bad)][0] == "error" and expected[str(bad)][0] == "error"
    differences, labels_changed = {}, 0
    for path in files[:-1]:
        label, best, *every = got[path]
        assert label in CLASSES and [field.split("=")[0] for field in every] == CLASSES
        probabilities = np.array([float(field.split("=")[1]) for field in every])
        assert float(best) == probabilities.max() and abs(probabilities.sum() - 1) < 2e-6
        keras_probabilities = np.array([float(field.split("=")[1])
                                        for field in expected[path][2:]])
        differences[path] = np.abs(probabilities - keras_probabilities).max()
        labels_changed += label != expected[path][0]
    png = max(differences[str(path)] for path in pngs)
    jpeg = max(differences[path] for path in files[:len(test_photos)])
    print(f"predict --model model.onnx vs model.keras: PNG {png:.1e}, JPEG largest "
          f"{jpeg:.4f} (mean {np.mean([differences[p] for p in files[:100]]):.4f}), "
          f"labels changed {labels_changed} of {len(files) - 1}")
    assert png <= PARITY + 1e-6  # printed with 6 decimals
    assert jpeg <= JPEG_TOLERANCE and labels_changed <= LABELS_CHANGED


def test_onnx_predict_tta_flip_answers_as_the_keras_predict(project, test_photos, tmp_path):
    """--tta flip on the ONNX export (the decoded pixels mirrored in NumPy, no TensorFlow)
    gives the Keras model's --tta flip probabilities on lossless images, which are not
    the plain ones."""
    from PIL import Image

    pngs = []
    for photo in test_photos[:3]:
        with Image.open(photo) as image:
            pngs.append(str(tmp_path / f"{photo.stem}.png"))
            image.save(pngs[-1])
    models = {"keras": str(project / "models/model.keras"),
              "onnx": str(project / "models/export/model.onnx")}
    runs = {(kind, tta): run_predict("--all", "--tta", tta, "--model", models[kind], *pngs,
                                     tf_free=kind == "onnx")
            for kind in models for tta in ("none", "flip")}
    for run in runs.values():
        assert run.returncode == 0, run.stderr

    def probabilities(run: subprocess.CompletedProcess[str]) -> np.ndarray:
        return np.array([[float(field.split("=")[1]) for field in fields[2:]]
                         for fields in predict_lines(run).values()])

    flipped = probabilities(runs["onnx", "flip"])
    assert np.abs(flipped - probabilities(runs["keras", "flip"])).max() <= PARITY + 1e-6
    assert np.abs(flipped - probabilities(runs["onnx", "none"])).max() > 1e-4


def test_onnx_predict_refuses_what_it_cannot_run_in_one_line(project, tmp_path, test_photos):
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"not a model")
    photo = str(test_photos[0])
    for args, hint in [
        (["--model", str(not_onnx), photo], "cannot load"),
        (["--model", str(project / "models/export/model.onnx"), str(tmp_path / "missing.jpg")],
         "no such file or folder"),
    ]:
        result = run_predict(*args, tf_free=True)
        assert result.returncode == 2 and result.stdout == "", result.stderr
        assert hint in error_line(result.stderr)
