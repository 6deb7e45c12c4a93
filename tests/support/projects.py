"""Project folders laid out as the stages leave them, and the features stage's output
that several tests read."""

from __future__ import annotations

import csv
import random
import shutil
import subprocess
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.commands import call_stage, run_stage
from tests.support.photos import CLASSES, gray_png
from tests.support.shared import ROOT


def write_yaml(path: Path, params: dict[str, Any]) -> Path:
    """`params` as YAML at `path` (any mapping, valid or not: for the params checks)."""
    import yaml

    path.write_text(yaml.safe_dump(params))
    return path


def write_params(project: Path, **changes: object) -> dict[str, Any]:
    """project/params.yaml: the project's own params.yaml with `changes`; returns it."""
    import yaml

    params = {**yaml.safe_load((ROOT / "params.yaml").read_text()), **changes}
    project.mkdir(parents=True, exist_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return params


def write_zip(path: Path,
              entries: Iterable[tuple[str | zipfile.ZipInfo, bytes]] | Mapping[str, bytes],
              compression: int = zipfile.ZIP_STORED) -> Path:
    """`path`, a new zip archive (its folder made), holding `entries` in order; returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in (entries.items() if isinstance(entries, Mapping) else entries):
            archive.writestr(name, data)
    return path


def write_train_images(project: Path, images: dict[str, bytes]) -> None:
    """project/data/raw/train.zip holding `images` ("<class>/<path>" -> bytes: an entry
    each, in class folders, in this order) and project/data/train.json listing them all,
    as fetch_data and split_classes leave them (split_classes' own listing code: these
    tests are not about it)."""
    import contextlib

    from finetune.dataset.classes import classify
    from finetune.dataset.manifest import write_manifest

    train_zip = write_zip(project / "data" / "raw" / "train.zip", images)
    with zipfile.ZipFile(train_zip) as archive, contextlib.chdir(project):
        labelled, unlabelled = classify(archive.infolist())
        assert unlabelled == 0, "every image needs a class folder"
        write_manifest(labelled)


def train_images(project: Path) -> dict[str, bytes]:
    """"<class>/<path>" -> bytes of every image project/data/train.json lists, read from
    project/data/raw/train.zip, in the manifest's order (class by class, by name)."""
    import contextlib

    from finetune.dataset.manifest import open_train_images, read_manifest

    with contextlib.chdir(project):
        listed = read_manifest()
        with open_train_images(listed) as read:
            return {name: read(name) for name, _ in listed.samples}


def lay_out_project(root: Path, sample_dir: Path, weights_file: Path, per_class: int,
                    test_images: int = 4, **params: object) -> Path:
    """A project folder as fetch_data, split_classes and fetch_weights leave it:
    data/raw/{train.zip, test.zip, sample_submission.csv} (the first `per_class` training
    photos of each class, as cat/cat.0.jpg..., the first `test_images` test photos),
    data/train.json, models/backbone_notop.h5, and params.yaml with `params`."""
    write_train_images(root, {f"{label}/{label}.{number}.jpg":
                              (sample_dir / "train" / f"{label}.{number}.jpg").read_bytes()
                              for label in CLASSES for number in range(per_class)})
    raw = root / "data" / "raw"
    with zipfile.ZipFile(raw / "test.zip", "w") as archive:
        for number in range(1, test_images + 1):
            archive.write(sample_dir / "test" / f"{number}.jpg", f"test/{number}.jpg")
    (raw / "sample_submission.csv").write_text(
        "id,label\n" + "".join(f"{number},0.5\n" for number in range(1, test_images + 1)))
    (root / "models").mkdir()
    shutil.copy(weights_file, root / "models" / "backbone_notop.h5")
    write_params(root, **params)
    return root


def extract_features(project: Path) -> None:
    """Run the features stage in `project` (laid out by lay_out_project): in this process,
    or as a command where params.yaml sets `threads` (TensorFlow fixes a process's thread
    pools at its first op, and this one has run many)."""
    import yaml

    threads = yaml.safe_load((project / "params.yaml").read_text())["threads"]
    result = (run_stage("features", project, timeout=600) if threads
              else call_stage("features", project))
    assert result.returncode == 0, result.stderr[-3000:]


# The small network of the features and submit tests: MobileNet (alpha 0.25) at 96 px,
# split at conv_pw_3_relu (24 x 24 x 32 activations), a linear head on their average.
SMALL_NETWORK = {
    "backbone": "MobileNet", "alpha": 0.25, "image_size": 96, "preprocessing": "backbone",
    "cut_layer": "conv_pw_3_relu", "unfreeze_after": "conv_pw_3_relu",
    "head": "gap", "dense_units": 0, "batch_size": 8,
}


def write_test_set(project: Path, entries: list[tuple[str, bytes]], ids: list[str]) -> None:
    """project/data/raw/test.zip holding `entries` ((name, bytes), in this order) and
    project/data/raw/sample_submission.csv listing `ids` in this order."""
    raw = project / "data" / "raw"
    write_zip(raw / "test.zip", entries)
    with (raw / "sample_submission.csv").open("w", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["id", "label"])
        writer.writerows([image_id, 0.5] for image_id in ids)


class Extracted:
    """A project where the features stage ran (see `extracted_features`). Tests must not
    change `project`: copy it (shutil.copytree) to run other stages in it."""

    def __init__(self, project: Path, photos: dict[str, Path], ids: list[str], corrupt: str,
                 result: subprocess.CompletedProcess[str]) -> None:
        self.project, self.photos, self.ids, self.corrupt = project, photos, ids, corrupt
        self.result = result  # the features stage's run


EXTRACTED_TEST_PHOTOS = 20  # the drawn test photos 1..20, then a grayscale PNG and a corrupt JPEG
EXTRACTED_PER_CLASS = 8  # training photos per class: colour and grayscale JPEGs, colour PNGs


def extract_sample_features(root: Path, sample_dir: Path, weights_file: Path) -> Extracted:
    """The features stage, run once with SMALL_NETWORK and `weights_file` on: train.zip
    with the first EXTRACTED_PER_CLASS drawn photos of each class; test.zip holding, in
    reverse order, test/1.jpg .. test/20.jpg (the drawn test photos), test/21.jpg (a
    grayscale PNG) and test/22.jpg (a JPEG truncated to 500 bytes: the corrupt one);
    sample_submission.csv listing their ids shuffled (neither the archive's order nor
    sorted). `photos` maps each id to the file stored for it."""
    project = lay_out_project(root / "project", sample_dir, weights_file,
                              EXTRACTED_PER_CLASS, **SMALL_NETWORK)
    sources = root / "test"
    sources.mkdir()
    photos = {str(n): sample_dir / "test" / f"{n}.jpg"
              for n in range(1, EXTRACTED_TEST_PHOTOS + 1)}
    gray = str(EXTRACTED_TEST_PHOTOS + 1)
    photos[gray] = gray_png(photos["1"], sources / f"{gray}.jpg")
    corrupt = str(EXTRACTED_TEST_PHOTOS + 2)
    photos[corrupt] = sources / f"{corrupt}.jpg"
    photos[corrupt].write_bytes(photos["4"].read_bytes()[:500])
    ids = list(photos)
    random.Random(0).shuffle(ids)
    write_test_set(project, [(f"test/{n}.jpg", photos[n].read_bytes())
                             for n in reversed(photos)], ids)
    result = call_stage("features", project)
    assert result.returncode == 0, result.stderr[-3000:]
    return Extracted(project, photos, ids, corrupt, result)


@dataclass(frozen=True)
class FinishedRun:
    """A project after one `dvc repro`: `project` is shared by the tests that read it;
    `pristine` is a copy taken right after the run, for tests that change what they run
    on (copy it with `copy_of`)."""

    project: Path
    pristine: Path
    env: dict[str, str]
    stdout: str
    stderr: str

    def copy_of(self, destination: Path) -> Path:
        """A copy of the finished run, git history and DVC cache included."""
        return shutil.copytree(self.pristine, destination, symlinks=True)
