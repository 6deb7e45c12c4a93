"""finetune.evaluation.heat_maps: Grad-CAM of the saved model's layout, and its overlay.

The model is the project's own (build_model: MobileNet alpha 0.25 at 96 px, random
weights, cut at conv_pw_5_relu, a 12 x 12 map; conv_pw_4 fine-tuned, so the head's input
is trainable_base's output) with its output layer hand-set, so that the class signal is
known and nothing is trained (deterministic, about a second): class "dog" is a
checkerboard patch on a grey background, anywhere. The output layer is a linear probe,
the difference between the mean features of a photo with the patch in its centre and of
a plain grey one. A photo with the patch in one quadrant must then have its heat map peak
in that quadrant, whichever quadrant (a map that always peaks in one corner fails).
"""

from __future__ import annotations

import io
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from finetune.evaluation.heat_maps import grad_cam, head_input, overlay
from finetune.evaluation.mistakes import mistakes_figure, most_confident_mistakes
from finetune.model.assembly import build_model, with_temperature
from tests.support.networks import SIZE, mobilenet_params

HALF = SIZE // 2
QUADRANTS = {"top left": (0, 0), "top right": (0, 1), "bottom left": (1, 0),
             "bottom right": (1, 1)}


def patch_photo(row: float, column: float) -> np.ndarray:
    """Grey 0-255 pixels with a checkerboard patch (HALF / 2 wide, 4 px squares) centred
    at (row, column) in units of half the photo: (0.5, 0.5) is the top left quadrant's
    centre, (1, 1) the photo's."""
    photo = np.full((SIZE, SIZE, 3), 128, np.float32)
    side = HALF // 2
    top, left = int(row * HALF) - side // 2, int(column * HALF) - side // 2
    squares = np.add.outer(np.arange(side) // 4, np.arange(side) // 4) % 2
    photo[top:top + side, left:left + side] = squares[..., None] * 255.0
    return photo


def quadrant_photos() -> np.ndarray:
    return np.stack([patch_photo(row + 0.5, column + 0.5)
                     for row, column in QUADRANTS.values()])


def quadrant_means(heat_map: np.ndarray) -> dict[tuple[int, int], float]:
    return {(row, column): float(heat_map[row * HALF:(row + 1) * HALF,
                                          column * HALF:(column + 1) * HALF].mean())
            for row, column in QUADRANTS.values()}


def probe_model(random_mobilenet_file: Path, classes: list[str], head: str = "gap") -> keras.Model:
    """The model whose score for "dog" (the last class) is the patch's evidence (see the
    module docstring); with three classes, "bird"'s is its negation, "cat"'s 0."""
    params = mobilenet_params(cut_layer="conv_pw_5_relu", unfreeze_after="conv_pw_4_relu",
                              dense_units=0, head=head)
    keras.utils.set_random_seed(0)
    model = build_model(params, random_mobilenet_file, fine_tune=False, classes=classes)
    features = np.asarray(head_input(model, np.stack([patch_photo(1, 1),
                                                      np.full((SIZE, SIZE, 3), 128.0)])))
    patch, plain = features.mean(axis=(1, 2))
    probe = patch - plain
    bias = -(plain + patch) @ probe / 2  # logit 0 halfway between the two
    if head == "flatten":  # the same probe at every position: global average pooling's
        cells = features.shape[1] * features.shape[2]
        probe = np.tile(probe, cells) / cells
    columns = {2: [probe], 3: [-probe, np.zeros_like(probe), probe]}[len(classes)]
    biases = {2: [bias], 3: [-bias, 0.0, bias]}[len(classes)]
    model.get_layer("head").layers[-1].set_weights(
        [np.stack(columns, axis=1).astype("float32"), np.array(biases, "float32")])
    return model


@pytest.fixture(scope="module")
def sigmoid_model(random_mobilenet_file: Path) -> keras.Model:
    return probe_model(random_mobilenet_file, ["cat", "dog"])


@pytest.fixture(scope="module")
def softmax_model(random_mobilenet_file: Path) -> keras.Model:
    return probe_model(random_mobilenet_file, ["bird", "cat", "dog"], head="flatten")


@pytest.mark.parametrize("model_name", ["sigmoid_model", "softmax_model"])
def test_the_map_peaks_in_the_quadrant_holding_the_class_signal(request, model_name):
    model = request.getfixturevalue(model_name)
    heat_maps, explained = grad_cam(model, quadrant_photos())
    dog = len(model.get_layer("class_names").names) - 1
    assert explained.tolist() == [dog] * len(QUADRANTS)  # the class predicted
    assert heat_maps.shape == (len(QUADRANTS), SIZE, SIZE)
    assert heat_maps.min() >= 0 and np.allclose(heat_maps.max(axis=(1, 2)), 1)
    for (name, quadrant), heat_map in zip(QUADRANTS.items(), heat_maps, strict=True):
        row, column = np.unravel_index(heat_map.argmax(), heat_map.shape)
        assert (row // HALF, column // HALF) == quadrant, name
        means = quadrant_means(heat_map)
        assert means[quadrant] > 5 * max(v for q, v in means.items() if q != quadrant), name


def test_a_calibrated_models_map_is_the_uncalibrated_ones(sigmoid_model):
    photos = quadrant_photos()
    heat_maps, explained = grad_cam(sigmoid_model, photos)
    for temperature in (0.4, 2.5):
        calibrated, calibrated_classes = grad_cam(with_temperature(sigmoid_model, temperature),
                                                  photos)
        np.testing.assert_allclose(calibrated, heat_maps, atol=1e-6)
        assert calibrated_classes.tolist() == explained.tolist()


def test_a_sigmoids_class_0_map_is_of_the_negative_logit(sigmoid_model):
    photos = quadrant_photos()
    dog, _ = grad_cam(sigmoid_model, photos, np.ones(len(photos), int))
    cat, _ = grad_cam(sigmoid_model, photos, np.zeros(len(photos), int))
    # "cat" is the evidence against the patch: the grey background, not the patch.
    for quadrant, dog_map, cat_map in zip(QUADRANTS.values(), dog, cat, strict=True):
        assert not np.allclose(dog_map, cat_map, atol=0.1)
        assert quadrant_means(cat_map)[quadrant] < quadrant_means(dog_map)[quadrant] / 5
    # A plain grey photo is predicted "cat" (logit below 0) and explained as such.
    plain = np.full((1, SIZE, SIZE, 3), 128, np.float32)
    np.testing.assert_allclose(grad_cam(sigmoid_model, plain)[0],
                               grad_cam(sigmoid_model, plain, np.zeros(1, int))[0])
    assert grad_cam(sigmoid_model, plain)[1].tolist() == [0]


def test_overlay_blends_the_stretched_map_at_the_photos_size():
    photo = np.zeros((30, 50, 3), np.uint8)
    heat_map = np.zeros((4, 4), np.float32)
    heat_map[:, 2:] = 1.0  # the right half hot
    blended = overlay(photo, heat_map, alpha=0.5, colormap="gray")
    assert blended.shape == (30, 50, 3) and blended.dtype == np.uint8
    # Bilinear: the quarters away from the edge between the map's cold and hot halves are
    # the photo's black, and half of the colormap's white (0.5 * 255, rounded).
    assert blended[:, :15].max() == 0 and (blended[:, 35:] == 128).all()
    assert 0 < blended[0, 24, 0] < 128


def test_the_mistakes_grid_overlays_a_map_per_photo(tmp_path):
    labels = np.array([0, 1, 1, 0, 1])
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.45, 0.55]])
    shown = most_confident_mistakes(labels, probabilities)
    assert shown == [1, 3]  # wrong, most confident first
    names, photos = [], []
    for index in shown:
        names.append(f"{['cat', 'dog'][labels[index]]}/{index}.jpg")
        encoded = io.BytesIO()
        Image.new("L" if index == 1 else "RGB", (40 + index, 30), 90).save(encoded, "JPEG")
        photos.append(encoded.getvalue())
    heat_maps = np.zeros((len(shown), SIZE, SIZE), np.float32)
    figure = mistakes_figure(names, photos, labels[shown], probabilities[shown],
                             ["cat", "dog"], heat_maps)
    assert "Grad-CAM of the predicted class" in figure._suptitle.get_text()
    titles = [axis.get_title() for axis in figure.axes if axis.get_title()]
    assert titles == ["1.jpg\ntrue dog, said cat (0.800)", "3.jpg\ntrue cat, said dog (0.700)"]
    figure.savefig(tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.format == "PNG"


def test_no_mistakes_no_maps(sigmoid_model):
    heat_maps, explained = grad_cam(sigmoid_model, np.zeros((0, SIZE, SIZE, 3), np.float32))
    assert heat_maps.shape == (0, SIZE, SIZE) and explained.shape == (0,)
    labels = np.array([0, 1])
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert most_confident_mistakes(labels, probabilities) == []
    figure = mistakes_figure([], [], labels[[]], probabilities[[]], ["cat", "dog"], heat_maps)
    assert "no misclassified validation images" in [text.get_text() for text in
                                                    figure.axes[0].texts]
