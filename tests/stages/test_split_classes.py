"""Tests of stages/split_classes.py: small train.zip archives built from drawn photos,
in both layouts (Kaggle's flat `train/cat.0.jpg`, and one folder per class).

Each test writes data/raw/train.zip in a project folder and runs the stage as DVC
does (`python -m stages.split_classes`). Archives the stage must refuse are checked
before TensorFlow is imported, so those runs take well under a second.
"""

from __future__ import annotations

import io
import json
import stat
import subprocess
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from finetune.dataset.archive import MAX_EXPANSION, SMALL_ENTRY
from finetune.dataset.screening import CHUNK
from tests.support.commands import assert_stage_error, call_stage, run_stage
from tests.support.projects import train_images, write_params, write_zip

TRAIN_ZIP = "data/raw/train.zip"
Entry = tuple[str | zipfile.ZipInfo, bytes]


@pytest.fixture(scope="module")
def photos(sample_dir: Path) -> dict[str, bytes]:
    """A few drawn photos, by their Kaggle name (cat.2.jpg and dog.2.jpg are PNG files)."""
    return {f"{label}.{n}.jpg": (sample_dir / "train" / f"{label}.{n}.jpg").read_bytes()
            for label in ("cat", "dog") for n in range(3)}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "data" / "raw").mkdir(parents=True)
    write_params(project, max_unreadable_fraction=0.01)
    return project


def split(project: Path) -> subprocess.CompletedProcess:
    return call_stage("split_classes", project)


def good_entries(photos: dict[str, bytes]) -> list[Entry]:
    return [(f"train/{name}", data) for name, data in photos.items()]


def report(project: Path) -> dict:
    return json.loads((project / "metrics" / "data.json").read_text())


def assert_refused(result: subprocess.CompletedProcess, project: Path, *hints: str) -> str:
    """Exit 1, one `error:` line with every hint, no traceback, and no output at all."""
    last = assert_stage_error(result, *hints)
    assert sorted(path.name for path in (project / "data").iterdir()) == ["raw"], \
        "no data/train.json and no staging folder: data/ holds only raw"
    assert not (project / "metrics" / "data.json").exists()
    return last


# --- good archives --------------------------------------------------------------


def test_good_archive(project: Path, photos: dict[str, bytes]) -> None:
    write_zip(project / TRAIN_ZIP, [
        *good_entries(photos),
        ("train/", b""),  # a folder entry
        ("train/readme.txt", b"not an image"),
        ("train/catalog.jpg", photos["cat.0.jpg"]),  # "cat" but not "cat.<id>."
        ("__MACOSX/train/._cat.0.jpg", b"resource fork"),
    ], zipfile.ZIP_DEFLATED)
    result = split(project)
    assert result.returncode == 0, result.stderr
    assert train_images(project) == {
        f"{name.split('.')[0]}/{name}": data for name, data in photos.items()
    }
    assert report(project) == {"classes": ["cat", "dog"], "images": {"cat": 3, "dog": 3},
                               "unlabelled": 1,  # catalog.jpg
                               "unreadable": 0, "unreadable_files": {}}
    # data/train.json lists each image: its name in its class, size, CRC-32 and entry.
    manifest = json.loads((project / "data" / "train.json").read_text())
    assert manifest == {"classes": ["cat", "dog"], "images": {
        label: [[name, len(data), zlib.crc32(data), f"train/{name}"]
                for name, data in sorted(photos.items()) if name.startswith(label)]
        for label in ("cat", "dog")}}
    assert sorted(path.name for path in (project / "data").iterdir()) == ["raw", "train.json"]
    assert result.stderr.splitlines()[-1] == (
        "split_classes: {'cat': 3, 'dog': 3} images listed in data/train.json, 0 unreadable "
        "skipped (listed in metrics/data.json), 1 images in no class folder ignored")


def test_stale_output_is_replaced_not_merged(project: Path, photos: dict[str, bytes]) -> None:
    # An earlier run's manifest and report, of an archive with a class "bird" and an image
    # cat.999.jpg: nothing of them may survive.
    photo = photos["cat.0.jpg"]
    stale = [["cat.999.jpg", len(photo), zlib.crc32(photo), "train/cat.999.jpg"]]
    (project / "data" / "train.json").write_text(json.dumps(
        {"classes": ["bird", "cat"], "images": {"bird": stale, "cat": stale}}))
    (project / "metrics").mkdir()
    (project / "metrics" / "data.json").write_text(json.dumps(
        {"classes": ["bird", "cat"], "images": {"bird": 1, "cat": 1}, "unlabelled": 7,
         "unreadable": 1, "unreadable_files": {"bird/bird.2.jpg": "empty file"}}))
    kept = {name: data for name, data in photos.items() if name != "dog.2.jpg"}
    write_zip(project / TRAIN_ZIP, good_entries(kept))
    assert split(project).returncode == 0
    assert train_images(project) == {f"{name.split('.')[0]}/{name}": data
                                     for name, data in kept.items()}
    assert report(project) == {"classes": ["cat", "dog"], "images": {"cat": 3, "dog": 2},
                               "unlabelled": 0, "unreadable": 0, "unreadable_files": {}}
    assert json.loads((project / "data" / "train.json").read_text())["classes"] == [
        "cat", "dog"]
    assert sorted(path.name for path in (project / "data").iterdir()) == ["raw", "train.json"]


def test_many_images_in_several_chunks(project: Path, photos: dict[str, bytes]) -> None:
    # Over two chunks of the thread pool's work: every image is written, counted and
    # reported once, an unreadable one in the last chunk is listed, and the progress
    # lines count up to the total.
    drawn = list(photos.values())
    entries: list[Entry] = [(f"train/{label}.{n}.jpg", drawn[n % len(drawn)])
                            for n in range(CHUNK + 3) for label in ("cat", "dog")]
    entries.append(("train/dog.999.jpg", b"GIF89a, cut off"))
    write_zip(project / TRAIN_ZIP, entries)
    result = split(project)
    assert result.returncode == 0, result.stderr
    total = len(entries)
    assert total > 2 * CHUNK
    assert train_images(project) == {
        f"{name.split('/')[1].split('.')[0]}/{name.split('/')[1]}": data
        for name, data in entries[:-1]}
    assert report(project)["images"] == {"cat": CHUNK + 3, "dog": CHUNK + 3}
    assert list(report(project)["unreadable_files"]) == ["dog/dog.999.jpg"]
    progress = [line for line in result.stderr.splitlines() if line.endswith("images checked")]
    done = [int(line.split()[1].split("/")[0]) for line in progress]
    assert done == sorted(done) and done[-1] == total and len(done) >= 2, progress
    assert all(line.split()[1].endswith(f"/{total}") for line in progress)


def test_class_folders(project: Path, photos: dict[str, bytes]) -> None:
    # A zip of a data set's folder: its own top folder is not a class; images may be
    # nested in a class folder; hidden files, __MACOSX and non-images are skipped; an
    # image beside the class folders has no class and is counted, not used.
    drawn = list(photos.values())
    write_params(project, max_unreadable_fraction=0.2)  # 1 of 6
    write_zip(project / TRAIN_ZIP, [
        ("flowers/daisy/1.jpg", drawn[0]),
        ("flowers/daisy/2019/june/2.jpg", drawn[1]),
        ("flowers/daisy/2020/2.jpg", drawn[2]),  # same file name, another sub-folder
        ("flowers/rose/3.png", drawn[3]),
        ("flowers/rose/.4.jpg", drawn[4]),  # hidden
        ("flowers/rose/notes.txt", b"x"),
        ("flowers/tulip/5.JPEG", drawn[5]),
        ("flowers/tulip/6.jpg", b"not an image"),
        ("flowers/cover.jpg", drawn[0]),  # in no class folder
        ("flowers/.git/x.jpg", drawn[0]),
        ("__MACOSX/flowers/daisy/._1.jpg", b"resource fork"),
    ], zipfile.ZIP_DEFLATED)
    result = split(project)
    assert result.returncode == 0, result.stderr
    assert train_images(project) == {
        "daisy/1.jpg": drawn[0], "daisy/2019/june/2.jpg": drawn[1], "daisy/2020/2.jpg": drawn[2],
        "rose/3.png": drawn[3], "tulip/5.JPEG": drawn[5]}
    listed = report(project)
    assert list(listed.pop("unreadable_files")) == ["tulip/6.jpg"]
    assert listed == {"classes": ["daisy", "rose", "tulip"], "unreadable": 1, "unlabelled": 1,
                      "images": {"daisy": 3, "rose": 1, "tulip": 1}}
    assert "1 images in no class folder ignored" in result.stderr


def test_class_folders_at_the_top_of_the_archive(project: Path, photos: dict[str, bytes]) -> None:
    label = {"cat": "a", "dog": "b"}
    write_zip(project / TRAIN_ZIP,
              [(f"{label[name[:3]]}/{name}", data) for name, data in photos.items()])
    assert split(project).returncode == 0
    assert sorted(train_images(project)) == sorted(f"{label[name[:3]]}/{name}" for name in photos)
    assert report(project)["classes"] == ["a", "b"]


# --- refused archives -------------------------------------------------------------


def symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def zip_bomb() -> list[Entry]:
    # 50 MB of zeros deflate to ~50 KB: far beyond what any photo expands by.
    return [("train/cat.100.jpg", bytes(50_000_000))]


def with_photos(*bad: Entry) -> Callable[[dict[str, bytes]], list[Entry]]:
    return lambda photos: [*good_entries(photos), *bad]


# case -> (the archive's entries, given the photos; what the error must say)
REFUSED: dict[str, tuple[Callable[[dict[str, bytes]], list[Entry]], str]] = {
    "dotdot": (with_photos(("train/../../cat.9.jpg", b"x")),
               "points outside the archive's folder"),
    "backslash-dotdot": (with_photos(("train\\..\\..\\cat.9.jpg", b"x")),
                         "points outside the archive's folder"),
    "absolute": (with_photos(("/etc/x.jpg", b"x")),
                 "'/etc/x.jpg' points outside the archive's folder"),
    "drive": (with_photos(("C:/cat.9.jpg", b"x")), "points outside the archive's folder"),
    "symlink": (with_photos((symlink("train/cat.9.jpg"), b"/etc/passwd")), "is a symbolic link"),
    # One file on a case-insensitive file system.
    "same-name-twice": (with_photos(("train/DOG.1.jpg", b"y")), "have the same file name"),
    "no-classes": (lambda _: [("train/1.jpg", b"x"), ("readme.txt", b"x")],
                   "holds one folder of images, 'train', neither named <class>.<id>.<ext> (as "
                   "Kaggle's train.zip) nor in class folders"),
    "no-classes-at-the-top": (lambda _: [("1.jpg", b"x"), ("2.jpg", b"x")],
                              "holds images neither named <class>.<id>.<ext>"),
    "no-images": (lambda _: [("train/readme.txt", b"x")], "holds no .bmp/.gif/.jpeg/.jpg/.png"),
    "only-cats": (lambda photos: [entry for entry in good_entries(photos) if "/cat." in entry[0]],
                  "holds images of one class, 'cat': a classifier needs two or more"),
    "one-class-folder": (lambda photos: [(f"flowers/daisy/{n}.jpg", data) for n, data in
                                         enumerate(photos.values())],
                         "holds one folder of images, 'daisy', neither named"),
    "classes-differ-in-case": (lambda photos: [("Rose/1.jpg", photos["cat.0.jpg"]),
                                               ("rose/2.jpg", photos["cat.1.jpg"]),
                                               ("tulip/3.jpg", photos["dog.0.jpg"])],
                               "classes 'Rose' and 'rose' differ only in case; rename one"),
    "control-character": (lambda photos: [("a\tb/1.jpg", photos["cat.0.jpg"]),
                                          ("tulip/3.jpg", photos["dog.0.jpg"])],
                          "class 'a\\tb' has a control character in its name"),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_refused_archive(project: Path, photos: dict[str, bytes], case: str) -> None:
    entries, hint = REFUSED[case]
    write_zip(project / TRAIN_ZIP, entries(photos))
    assert_refused(split(project), project, hint)


def test_zip_bomb(project: Path, photos: dict[str, bytes]) -> None:
    archive = write_zip(project / TRAIN_ZIP, [*good_entries(photos), *zip_bomb()],
                        zipfile.ZIP_DEFLATED)
    assert archive.stat().st_size < 1 << 20  # under the 1 MiB floor of the whole-archive check
    assert_refused(split(project), project, "'train/cat.100.jpg' claims to expand",
                   "50,000,000 bytes")


def test_archive_expanding_too_much_in_all_is_refused(project: Path,
                                                       photos: dict[str, bytes]) -> None:
    # Every entry passes the per-entry check (no more than SMALL_ENTRY, 1 MiB, each), but
    # together they claim over MAX_EXPANSION (50) times the archive: the whole-archive check.
    filler = [(f"train/cat.{1000 + n}.jpg", bytes(SMALL_ENTRY)) for n in range(MAX_EXPANSION + 10)]
    archive = write_zip(project / TRAIN_ZIP, [*good_entries(photos), *filler], zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(archive) as opened:
        infos = opened.infolist()
    assert all(info.file_size <= max(MAX_EXPANSION * info.compress_size, SMALL_ENTRY)
               for info in infos), "an entry would trip the per-entry check first"
    total = sum(info.file_size for info in infos)
    assert archive.stat().st_size < SMALL_ENTRY < total / MAX_EXPANSION
    line = assert_refused(split(project), project,
                          f"data/raw/train.zip claims to expand to {total:,} bytes",
                          f"over {MAX_EXPANSION}x its size")
    assert "entry" not in line


@pytest.mark.parametrize("kind", ["not-a-zip", "truncated"])
def test_not_a_zip(project: Path, photos: dict[str, bytes], kind: str) -> None:
    archive = project / TRAIN_ZIP
    if kind == "not-a-zip":
        archive.write_text("<html>an error page</html>")
    else:
        write_zip(archive, good_entries(photos))
        archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    assert_refused(split(project), project, "is not a zip archive", "dvc repro -f fetch_data")


def test_missing_archive(project: Path) -> None:
    assert_refused(split(project), project, "not found", "dvc repro fetch_data")


def test_damaged_entry(project: Path, photos: dict[str, bytes]) -> None:
    # The directory is intact, one photo's stored bytes are not: its CRC no longer matches.
    archive = write_zip(project / TRAIN_ZIP, good_entries(photos))
    data = bytearray(archive.read_bytes())
    at = data.index(photos["dog.1.jpg"]) + len(photos["dog.1.jpg"]) // 2
    data[at] ^= 0xFF
    archive.write_bytes(bytes(data))
    assert_refused(split(project), project, "cannot read entry 'train/dog.1.jpg'")


def test_failed_run_leaves_no_stale_output(project: Path, photos: dict[str, bytes]) -> None:
    # A previous run's list of images must not outlive a refused archive for train to
    # pick up.
    write_zip(project / TRAIN_ZIP, good_entries(photos))
    assert split(project).returncode == 0
    assert (project / "data" / "train.json").is_file()
    assert (project / "metrics" / "data.json").is_file()
    write_zip(project / TRAIN_ZIP, [("train/../cat.0.jpg", b"x")])
    assert_refused(split(project), project, "points outside the archive's folder")


# --- unreadable images --------------------------------------------------------------


def image_bytes(jpeg: bytes, fmt: str, mode: str) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).convert(mode).save(out, fmt)
    return out.getvalue()


def mixed_entries(photos: dict[str, bytes]) -> list[Entry]:
    """The 6 good photos (2 of them PNG named .jpg), 2 more odd but readable images, 3
    unreadable ones."""
    return [
        *good_entries(photos),
        ("train/cat.3.jpg", image_bytes(photos["cat.0.jpg"], "PNG", "RGB")),  # PNG named .jpg
        ("train/cat.4.jpg", image_bytes(photos["cat.1.jpg"], "JPEG", "L")),  # grayscale
        ("train/cat.5.jpg", photos["cat.1.jpg"][: len(photos["cat.1.jpg"]) // 2]),  # truncated
        ("train/cat.6.jpg", b""),
        ("train/dog.7.jpg", b"this is text, not a JPEG\n"),
    ]


def test_unreadable_images_are_skipped_and_listed(project: Path, photos: dict[str, bytes]) -> None:
    write_params(project, max_unreadable_fraction=0.3)  # 3 of 11 is 27%
    entries = mixed_entries(photos)
    write_zip(project / TRAIN_ZIP, entries)
    # A real process: TensorFlow's decoder writes past Python, on fd 2, about the cut-off
    # JPEG ("E0000 ... jpeg_mem.cc:331] Premature end of JPEG data"), which must not show.
    result = run_stage("split_classes", project)
    assert result.returncode == 0, result.stderr
    assert all(line.startswith("split_classes: ") for line in result.stderr.splitlines()), (
        result.stderr)

    readable = {name.removeprefix("train/"): data for name, data in entries[:8]}
    assert train_images(project) == {
        f"{name.split('.')[0]}/{name}": data for name, data in readable.items()
    }
    metrics = report(project)
    assert metrics["images"] == {"cat": 5, "dog": 3}
    assert metrics["unreadable"] == 3
    reasons = metrics["unreadable_files"]
    assert sorted(reasons) == ["cat/cat.5.jpg", "cat/cat.6.jpg", "dog/dog.7.jpg"]
    assert reasons["cat/cat.6.jpg"] == "empty file"
    for name in ("cat/cat.5.jpg", "dog/dog.7.jpg"):  # TensorFlow's reason, without op noise
        assert reasons[name] and "{{" not in reasons[name] and "[Op:" not in reasons[name]
    assert "JPEG" in reasons["cat/cat.5.jpg"] and "format" in reasons["dog/dog.7.jpg"]


def test_too_many_unreadable_images_fail(project: Path, photos: dict[str, bytes]) -> None:
    write_params(project, max_unreadable_fraction=0.25)
    write_zip(project / TRAIN_ZIP, mixed_entries(photos))
    assert_refused(split(project), project, "3 of 11 images (27.3%) are unreadable",
                   "max_unreadable_fraction 0.25")
