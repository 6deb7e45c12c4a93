"""Tests of stages/fetch_data.py: the real kaggle client against a loopback Kaggle API.

Each test runs the stage's `main` in a project folder, in this process
(tests.support.commands.call_stage), with the environment set for the call: the kaggle
client reads its credentials when the stage authenticates, so each call reads its own.
A download killed mid-way runs `python -m stages.fetch_data` in a subprocess. HOME and
KAGGLE_CONFIG_DIR point at empty folders, so a developer's own Kaggle credentials never
take part. The competition bundle is built from the drawn sample photos (conftest's
`sample_dir`). A `data_source` URL is served on loopback (tests.support.servers) with a
zip in the layout of Microsoft's copy of the photos (tests.support.photos).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import time
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from finetune.core.params import load_params
from finetune.core.paths import URL_DOWNLOAD_DIR
from finetune.sources.web import PET_IMAGES_URL, partial_path
from tests.support.commands import (
    assert_stage_error,
    call_stage,
    stage_command,
    stage_env,
)
from tests.support.kaggle_server import (
    COMPETITION,
    FAKE_KEY,
    KaggleServer,
    build_competition_bundle,
    proxy_env,
)
from tests.support.photos import PET_IMAGES_CLASSES, make_pet_images_zip
from tests.support.projects import train_images, write_params
from tests.support.servers import Mirror, closed_port
from tests.support.shared import ROOT

OUTPUTS = ("data/raw/train.zip", "data/raw/test.zip", "data/raw/sample_submission.csv")
DOWNLOAD_DIR = "data/.kaggle-download"
PER_CLASS, TEST_IMAGES = 20, 10
CLIENT_CHUNK = 1 << 20  # the kaggle client writes the download in 1 MiB chunks


# --- helpers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("kaggle")
    return build_competition_bundle(sample_dir, folder, per_class=PER_CLASS,
                                    test_images=TEST_IMAGES)


def noisy_jpeg(width: int, height: int, seed: int) -> bytes:
    """A photo of pure noise: JPEG cannot compress it, so it is large (~1.5 MB at 1200 x 1000)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    stream = io.BytesIO()
    Image.fromarray(pixels).save(stream, format="JPEG", quality=95)
    return stream.getvalue()


@pytest.fixture(scope="module")
def large_bundle(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    """The same layout and counts as `bundle`, over 2 MiB: two drawn photos are replaced
    by large noisy ones (the drawn photos are a few KB each)."""
    folder = tmp_path_factory.mktemp("large")
    shutil.copytree(sample_dir, folder / "sample")
    for seed, label in enumerate(("cat", "dog")):
        (folder / "sample" / "train" / f"{label}.0.jpg").write_bytes(noisy_jpeg(1200, 1000, seed))
    return build_competition_bundle(folder / "sample", folder / "bundle", per_class=PER_CLASS,
                                    test_images=TEST_IMAGES)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    set_params(project)
    return project


def set_params(project: Path, data_source: str = "", competition: str = COMPETITION,
               **overrides: object) -> None:
    write_params(project, competition=competition, data_source=data_source, **overrides)


def kaggle_settings(project: Path, extra: dict[str, str]) -> dict[str, str]:
    """An empty HOME and Kaggle config folder, plus `extra`."""
    home, config = project.parent / "home", project.parent / "kaggle-config"
    home.mkdir(exist_ok=True)
    config.mkdir(exist_ok=True)
    return {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
            "KAGGLE_CONFIG_DIR": str(config), **extra}


def kaggle_env(project: Path, extra: dict[str, str]) -> dict[str, str]:
    """stage_env() (no Kaggle settings, no proxies) with kaggle_settings()."""
    return stage_env(PYTHONPATH=str(ROOT), **kaggle_settings(project, extra))


def fetch_data(project: Path, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return call_stage("fetch_data", project, **kaggle_settings(project, extra or {}))


def member(archive: Path, name: str) -> bytes:
    with zipfile.ZipFile(archive) as opened:
        return opened.read(name)


def names(archive: Path) -> list[str]:
    with zipfile.ZipFile(archive) as opened:
        return opened.namelist()


def plant_stale_outputs(project: Path) -> None:
    """Outputs of an earlier run, which the stage must not leave for DVC to cache."""
    for output in OUTPUTS:
        (project / output).parent.mkdir(parents=True, exist_ok=True)
        (project / output).write_text("stale")


def assert_outputs_match(project: Path, bundle: Path) -> None:
    for output in OUTPUTS:
        assert (project / output).read_bytes() == member(bundle, Path(output).name), output
    train = names(project / OUTPUTS[0])
    assert len(train) == 2 * PER_CLASS
    assert all(re.fullmatch(r"train/(cat|dog)\.\d+\.jpg", name) for name in train), train
    assert sum(name.startswith("train/cat.") for name in train) == PER_CLASS


def assert_downloaded(result: subprocess.CompletedProcess, project: Path, bundle: Path) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert_outputs_match(project, bundle)
    leftovers = list((project / DOWNLOAD_DIR).iterdir())
    assert leftovers == [], "the bundle (and any .kaggle-partial marker) must be removed"


def assert_fails(
    result: subprocess.CompletedProcess, project: Path, *hints: str, secret: str = FAKE_KEY
) -> str:
    """A one-line "error: ..." with every hint, no traceback, no key, no outputs."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert secret not in output
    line = assert_stage_error(result, *hints)
    for output_path in OUTPUTS:
        assert not (project / output_path).exists(), output_path
    return line


# --- download from Kaggle ----------------------------------------------------------


def test_download(project: Path, bundle: Path) -> None:
    plant_stale_outputs(project)
    with KaggleServer(bundle) as server:
        result = fetch_data(project, server.env())
    assert_downloaded(result, project, bundle)
    assert [(method, status) for method, _, status in server.requests] == [
        ("POST", 302),
        ("GET", 200),
    ]
    assert f"wrote data/raw/train.zip ({2 * PER_CLASS} entries)" in result.stdout
    assert FAKE_KEY not in result.stdout + result.stderr


def test_broken_transfer_is_resumed(project: Path, bundle: Path) -> None:
    broken_at = bundle.stat().st_size // 3
    with KaggleServer(bundle, break_after_bytes=broken_at) as server:
        result = fetch_data(project, server.env())
    assert_downloaded(result, project, bundle)
    statuses = [status for method, _, status in server.requests if method == "GET"]
    assert statuses == [200, 206], "the client retries with a Range request"


def test_interrupted_download_resumes_on_next_run(project: Path, large_bundle: Path) -> None:
    # The client writes 1 MiB at a time: stall past the first chunk, so one is on disk.
    bundle = large_bundle
    assert bundle.stat().st_size > 2 * CLIENT_CHUNK
    partial = project / DOWNLOAD_DIR / f"{COMPETITION}.zip"
    with KaggleServer(bundle, hang_after_bytes=CLIENT_CHUNK + 1000) as server:
        process = subprocess.Popen(
            stage_command("fetch_data"),
            cwd=project,
            env=kaggle_env(project, server.env()),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not (partial.is_file() and partial.stat().st_size >= CLIENT_CHUNK):
                assert process.poll() is None, "the stage ended instead of stalling"
                assert time.monotonic() < deadline, "no partial download appeared"
                time.sleep(0.05)
        finally:
            process.kill()  # like a lost connection or a killed job: no cleanup runs
            process.wait()
    assert 0 < partial.stat().st_size < bundle.stat().st_size
    assert not any((project / output).exists() for output in OUTPUTS)

    with KaggleServer(bundle) as server:
        result = fetch_data(project, server.env())
    assert_downloaded(result, project, bundle)
    # The client opens the download (200), sees its verified partial, asks for the rest.
    assert [status for method, _, status in server.requests if method == "GET"] == [200, 206]


def test_corrupt_download_is_deleted(project: Path, tmp_path: Path) -> None:
    not_a_zip = tmp_path / "served" / f"{COMPETITION}.zip"
    not_a_zip.parent.mkdir()
    not_a_zip.write_bytes(b"<html>an error page, not a zip</html>")
    with KaggleServer(not_a_zip) as server:
        result = fetch_data(project, server.env())
    assert_fails(result, project, "not a valid zip file", "run the stage again")
    assert list((project / DOWNLOAD_DIR).iterdir()) == [], "the next run must download afresh"


def test_missing_credentials(project: Path, bundle: Path) -> None:
    plant_stale_outputs(project)
    with KaggleServer(bundle) as server:
        env = server.env()
        del env["KAGGLE_USERNAME"], env["KAGGLE_KEY"]
        result = fetch_data(project, env)
    assert_fails(
        result,
        project,
        "KAGGLE_USERNAME",
        "KAGGLE_KEY",
        "kaggle.json",
        f"https://www.kaggle.com/competitions/{COMPETITION}/rules",
    )
    assert server.requests == []
    assert "Authentication required" not in result.stdout  # the client's help page


def test_wrong_credentials(project: Path, bundle: Path) -> None:
    plant_stale_outputs(project)
    wrong = "wr0ng-k3y-that-must-not-leak"
    with KaggleServer(bundle) as server:
        result = fetch_data(project, server.env(key=wrong))
    assert_fails(result, project, "401", "KAGGLE_KEY", secret=wrong)


def test_rules_not_accepted(project: Path, bundle: Path) -> None:
    plant_stale_outputs(project)
    with KaggleServer(bundle, rules_accepted=False) as server:
        result = fetch_data(project, server.env())
    assert_fails(
        result, project, "403", "rules", f"https://www.kaggle.com/competitions/{COMPETITION}/rules"
    )


def test_unknown_competition(project: Path, bundle: Path) -> None:
    set_params(project, competition="no-such-competition")
    plant_stale_outputs(project)
    with KaggleServer(bundle) as server:
        result = fetch_data(project, server.env())
    assert_fails(result, project, "404", "no-such-competition")


def test_bad_layer_name_fails_before_the_download(project: Path, bundle: Path) -> None:
    set_params(project, cut_layer="mixed77")
    with KaggleServer(bundle) as server:
        result = fetch_data(project, server.env())
        assert server.requests == []  # not even authenticated: nothing downloaded
    line = assert_fails(result, project, "cut_layer", "mixed7")
    assert "closest" in line


def test_unreachable_server(project: Path) -> None:
    plant_stale_outputs(project)
    env = {**proxy_env(closed_port()), "KAGGLE_USERNAME": "tester", "KAGGLE_KEY": FAKE_KEY}
    result = fetch_data(project, env)
    assert_fails(result, project, "reach")


# --- local data_source -------------------------------------------------------------


def test_local_unpacked_folder(project: Path, sample_dir: Path) -> None:
    source = project.parent / "unpacked"
    photos = [f"train/{label}.{n}.jpg" for label in ("cat", "dog") for n in range(5)]
    photos += [f"test/{n}.jpg" for n in range(1, 6)]
    for photo in photos:
        (source / photo).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample_dir / photo, source / photo)
    shutil.copyfile(sample_dir / "sample_submission.csv", source / "sample_submission.csv")
    set_params(project, data_source=str(source))

    result = fetch_data(project)
    assert result.returncode == 0, result.stdout + result.stderr
    train, test = project / OUTPUTS[0], project / OUTPUTS[1]
    assert sorted(names(train)) == sorted(p for p in photos if p.startswith("train/"))
    assert sorted(names(test)) == sorted(p for p in photos if p.startswith("test/"))
    assert member(train, "train/dog.3.jpg") == (sample_dir / "train/dog.3.jpg").read_bytes()
    with zipfile.ZipFile(train) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}
    submission = (sample_dir / "sample_submission.csv").read_bytes()
    assert (project / OUTPUTS[2]).read_bytes() == submission

    # A rerun builds byte-identical archives, so DVC sees no change downstream.
    first = train.read_bytes()
    assert fetch_data(project).returncode == 0
    assert train.read_bytes() == first


def test_local_bundle_zip(project: Path, bundle: Path) -> None:
    set_params(project, data_source=str(bundle))
    result = fetch_data(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_outputs_match(project, bundle)
    assert bundle.is_file(), "a local source is never deleted"


def test_local_folder_of_zips(project: Path, bundle: Path) -> None:
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(project / "local")
    set_params(project, data_source="local")  # relative to the project root
    result = fetch_data(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_outputs_match(project, bundle)


def class_folders(folder: Path, sample_dir: Path) -> dict[str, bytes]:
    """A data set of class folders (nested images, a non-image): name -> bytes of its images."""
    files = {"daisy/1.jpg": sample_dir / "train/cat.0.jpg",
             "daisy/2019/2.png": sample_dir / "train/cat.1.jpg",
             "rose/3.jpeg": sample_dir / "train/dog.0.jpg"}
    for name, photo in files.items():
        _write(folder / name, photo.read_bytes())
    _write(folder / "rose" / "notes.txt", b"not an image")
    return {name: photo.read_bytes() for name, photo in files.items()}


def test_local_class_folders(project: Path, sample_dir: Path) -> None:
    # Any labelled image set: train.zip alone (no test set), the images under their
    # paths relative to the data set's folder; split_classes reads the classes from it.
    images = class_folders(project.parent / "flowers", sample_dir)
    set_params(project, data_source=str(project.parent / "flowers"))
    plant_stale_outputs(project)
    result = fetch_data(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(path.name for path in (project / "data" / "raw").iterdir()) == ["train.zip"]
    train = project / OUTPUTS[0]
    assert sorted(names(train)) == sorted(images)
    assert all(member(train, name) == data for name, data in images.items())
    first = train.read_bytes()
    assert fetch_data(project).returncode == 0
    assert train.read_bytes() == first  # byte-identical: DVC sees no change downstream


def test_local_zip_of_class_folders(project: Path, sample_dir: Path) -> None:
    images = class_folders(project.parent / "flowers", sample_dir)
    archive = project.parent / "flowers.zip"
    with zipfile.ZipFile(archive, "w") as writer:
        for name in images:
            writer.write(project.parent / "flowers" / name, f"flowers/{name}")
    set_params(project, data_source=str(archive))
    result = fetch_data(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(path.name for path in (project / "data" / "raw").iterdir()) == ["train.zip"]
    assert (project / OUTPUTS[0]).read_bytes() == archive.read_bytes()  # copied as it is


@pytest.mark.parametrize(
    ("make", "hint"),
    [
        (lambda folder, _: folder / "missing", "does not exist"),
        (lambda folder, _: _write(folder / "notes.txt", b"not a zip"), "not a zip file"),
        (lambda folder, bundle: _truncated(folder, bundle), "not a zip file"),
        (lambda folder, _: _write(folder / "other" / "readme.txt", b"").parent,
         "holds no .bmp/.gif/.jpeg/.jpg/.png images: expected a folder with one sub-folder"),
    ],
    ids=["nonexistent", "not-a-zip", "truncated-zip", "unknown-layout"],
)
def test_bad_local_source(project: Path, bundle: Path, make, hint: str) -> None:
    source = make(project.parent, bundle)
    set_params(project, data_source=str(source))
    plant_stale_outputs(project)
    message = assert_fails(fetch_data(project), project, hint)
    assert str(source) in message


def test_missing_relative_source_is_named_normalised(project: Path) -> None:
    # Read against the project: the message names the folder itself, no "project/../"
    # and no "copying the data from" a path that is not there.
    set_params(project, data_source="../nowhere/photos")
    result = fetch_data(project)
    line = assert_fails(result, project)
    missing = project.resolve().parent / "nowhere" / "photos"
    assert f"data_source {missing} does not exist" in line, line
    assert "/../" not in line, line
    assert "copying" not in result.stdout


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _truncated(folder: Path, bundle: Path) -> Path:
    return _write(folder / "truncated.zip", bundle.read_bytes()[: bundle.stat().st_size // 2])


# --- data_source: an http(s) URL of a zip ------------------------------------------

PETS_PER_CLASS = 10
PETS_NAME = Path(urlsplit(PET_IMAGES_URL).path).name  # kagglecatsanddogs_5340.zip
PETS_PARAMS = {"max_unreadable_fraction": 0.2}  # 3 of 23 images are unreadable


@pytest.fixture(scope="module")
def pet_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[str]]:
    """The bytes of a zip in the layout of Microsoft's archive, and its unreadable images."""
    archive = tmp_path_factory.mktemp("pets") / PETS_NAME
    unreadable = make_pet_images_zip(archive, PETS_PER_CLASS)
    return archive.read_bytes(), unreadable


def fetch_url(project: Path, url: str, data_source_hash: str = ""
              ) -> subprocess.CompletedProcess:
    set_params(project, data_source=url, data_source_hash=data_source_hash, **PETS_PARAMS)
    return fetch_data(project)


def downloads(project: Path) -> list[str]:
    """What the scratch folder of URL downloads holds."""
    folder = project / URL_DOWNLOAD_DIR
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def assert_url_fetched(result: subprocess.CompletedProcess, project: Path, body: bytes) -> None:
    """train.zip is the served zip, as it is (a zip of class folders), and nothing else
    is left: data/raw holds it alone, the download is deleted."""
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(path.name for path in (project / "data" / "raw").iterdir()) == ["train.zip"]
    assert (project / OUTPUTS[0]).read_bytes() == body
    assert downloads(project) == []


def assert_url_fails(result: subprocess.CompletedProcess, project: Path, *hints: str) -> str:
    """One error line, data/raw gone (stale outputs too) and no download left behind."""
    line = assert_fails(result, project, *hints)
    assert not (project / "data" / "raw").exists()
    assert downloads(project) == [], "a bad download must not be resumed"
    return line


def test_url_of_pet_images_gives_class_folders_cat_and_dog(
        project: Path, pet_images: tuple[bytes, list[str]],
        file_server: tuple[str, Path]) -> None:
    body, unreadable = pet_images
    base, served = file_server  # a plain file server: no Range support needed
    (served / PETS_NAME).write_bytes(body)
    url = f"{base}/{PETS_NAME}"
    plant_stale_outputs(project)
    result = fetch_url(project, url)
    assert_url_fetched(result, project, body)
    digest = hashlib.sha256(body).hexdigest()
    assert f"fetch_data: downloading {url}\n" in result.stdout
    assert (f"fetch_data: downloaded {url} ({len(body):,} bytes, sha256 {digest}; to pin it, "
            f"set data_source_hash: sha256:{digest})") in result.stdout

    split = call_stage("split_classes", project)
    assert split.returncode == 0, split.stderr
    report = json.loads((project / "metrics" / "data.json").read_text())
    assert report["classes"] == list(PET_IMAGES_CLASSES)
    assert report["images"] == dict.fromkeys(PET_IMAGES_CLASSES, PETS_PER_CLASS)
    assert (report["unreadable"], report["unlabelled"]) == (len(unreadable), 0)
    assert sorted(report["unreadable_files"]) == sorted(unreadable)
    # data/train.json lists the photos of each class and nothing else (no Thumbs.db, no
    # empty or corrupt photo), each read back from train.zip as it was served.
    with zipfile.ZipFile(io.BytesIO(body)) as served_zip:
        assert train_images(project) == {
            f"{label}/{number}.jpg": served_zip.read(f"PetImages/{label}/{number}.jpg")
            for label in PET_IMAGES_CLASSES for number in range(PETS_PER_CLASS)}


def test_url_transfer_broken_off_is_resumed(project: Path,
                                            pet_images: tuple[bytes, list[str]]) -> None:
    body, _ = pet_images
    broken_at = len(body) // 2
    with Mirror(body, PETS_NAME, break_after=broken_at) as mirror:
        result = fetch_url(project, mirror.url())
    assert_url_fetched(result, project, body)
    assert len(mirror.requests) == 2, mirror.requests
    assert mirror.requests[0] == (f"/{PETS_NAME}", None, 200)
    _, requested, status = mirror.requests[1]
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", requested or "").group(1))
    assert 0 < resumed_at <= broken_at and status == 206
    assert "fetch_data: transfer broke off" in result.stderr


@pytest.mark.parametrize(("left", "status"), [(0.5, 206), (1.0, 416)], ids=["half", "all"])
def test_url_download_of_a_killed_run_is_resumed(
        project: Path, pet_images: tuple[bytes, list[str]], left: float, status: int) -> None:
    # What a killed run leaves (no cleanup runs): part of the file, or all of it when it
    # was killed after the download. The rerun asks for the rest only; another URL's
    # leftover download is deleted.
    body, _ = pet_images
    kept = int(len(body) * left)
    with Mirror(body, PETS_NAME) as mirror:
        partial = project / partial_path(mirror.url())
        partial.parent.mkdir(parents=True)
        partial.write_bytes(body[:kept])
        (partial.parent / "0123456789abcdef-other.zip.partial").write_bytes(b"another URL's")
        result = fetch_url(project, mirror.url())
    assert_url_fetched(result, project, body)
    assert mirror.requests == [(f"/{PETS_NAME}", f"bytes={kept}-", status)]
    assert f"fetch_data: downloading {mirror.url()}, resuming at byte {kept:,}" in result.stdout


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_url_checksum_that_matches(project: Path, pet_images: tuple[bytes, list[str]],
                                   algorithm: str) -> None:
    body, _ = pet_images
    digest = hashlib.new(algorithm, body).hexdigest()
    with Mirror(body, PETS_NAME) as mirror:
        result = fetch_url(project, mirror.url(), f"{algorithm}:{digest.upper()}")
    assert_url_fetched(result, project, body)
    assert f"({len(body):,} bytes, {algorithm} {digest})" in result.stdout  # no "to pin it"


def test_url_checksum_mismatch_deletes_the_download(
        project: Path, pet_images: tuple[bytes, list[str]]) -> None:
    body, _ = pet_images
    expected, actual = "0" * 32, hashlib.md5(body).hexdigest()
    plant_stale_outputs(project)
    with Mirror(body, PETS_NAME) as mirror:
        line = assert_url_fails(fetch_url(project, mirror.url(), f"md5:{expected}"), project,
                                mirror.url(), f"md5 is {actual}, expected {expected}",
                                f"set data_source_hash: md5:{actual} in params.yaml")
        assert "deleted it" in line
        # The rerun downloads it afresh (no Range): nothing of the bad file is kept.
        assert_url_fetched(fetch_url(project, mirror.url(), f"md5:{actual}"), project, body)
    assert [requested for _, requested, _ in mirror.requests] == [None, None]


def test_url_that_is_missing(project: Path, pet_images: tuple[bytes, list[str]]) -> None:
    body, _ = pet_images
    plant_stale_outputs(project)
    with Mirror(body, PETS_NAME) as mirror:
        missing = mirror.url("gone.zip")
        assert_url_fails(fetch_url(project, missing), project,
                         f"cannot download data_source {missing}: HTTP 404")


def test_url_that_serves_no_zip(project: Path) -> None:
    plant_stale_outputs(project)
    with Mirror(b"<html><body>Download will begin shortly</body></html>", PETS_NAME) as mirror:
        line = assert_url_fails(fetch_url(project, mirror.url()), project,
                                f"the file downloaded from {mirror.url()} is not a zip file")
    assert "deleted it" in line


def test_url_on_a_dead_port(project: Path) -> None:
    plant_stale_outputs(project)
    url = f"http://127.0.0.1:{closed_port()}/{PETS_NAME}"
    assert_url_fails(fetch_url(project, url), project, f"cannot download data_source {url}: ",
                     "Connection refused")


def test_checksum_without_a_url_is_refused(project: Path, bundle: Path) -> None:
    # It would check nothing: a local copy or Kaggle's download is not what it names.
    set_params(project, data_source=str(bundle), data_source_hash="md5:" + "0" * 32)
    plant_stale_outputs(project)
    assert_fails(fetch_data(project), project, "data_source_hash checks the zip an http(s)://",
                 'set data_source_hash to ""')


def test_the_documented_one_liner_sets_the_microsoft_url(tmp_path: Path) -> None:
    # docs/data-sources.md, "Without a Kaggle account": the command as typed there, with
    # the URL of the code, is one DVC's -S parses into that very value (no quoting needed).
    from dvc.utils.hydra import apply_overrides

    docs = (ROOT / "docs" / "data-sources.md").read_text()
    commands = re.findall(r"dvc exp run -S (data_source=\S+)", docs)
    assert commands == [f"data_source={PET_IMAGES_URL}"], commands
    params = tmp_path / "params.yaml"
    shutil.copyfile(ROOT / "params.yaml", params)
    apply_overrides(params, commands)
    assert load_params(params)["data_source"] == PET_IMAGES_URL
