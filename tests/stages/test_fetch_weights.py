"""Tests of stages/fetch_weights.py: real downloads from loopback HTTP mirrors.

Each test runs the stage as DVC does (`python -m stages.fetch_weights` in a project
folder) against servers on 127.0.0.1 (tests.support.servers.Mirror): one that can break
a transfer off, honour or ignore Range, and logs every request it answers. The "keras"
values of weights_urls and weights_hash (finetune/sources/keras_weights.py) are tested by
calling their resolution: Keras's own URLs are on the internet, which the tests never reach.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune.core.errors import StageError
from finetune.core.params import load_params
from finetune.sources.keras_weights import published_weights
from tests.support.commands import assert_stage_error, call_stage
from tests.support.projects import SMALL_NETWORK, write_params
from tests.support.servers import Mirror, closed_port
from tests.support.shared import ROOT
from tests.support.weights import md5

WEIGHTS = "models/backbone_notop.h5"
NAME = "weights_notop.h5"
BODY = os.urandom(1 << 20)  # 1 MiB: several of the stage's 64 KiB chunks
BODY_MD5 = hashlib.md5(BODY).hexdigest()


@pytest.fixture
def serve() -> Iterator:
    """Start mirrors of BODY at /NAME (tests.support.servers.Mirror's options); all stop
    at the end of the test."""
    with contextlib.ExitStack() as stack:
        yield lambda **options: stack.enter_context(Mirror(BODY, NAME, **options))


def closed_port_url() -> str:
    return f"http://127.0.0.1:{closed_port()}/{NAME}"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    return project


def fetch(project: Path, urls: list[str], weights_hash: str = f"md5:{BODY_MD5}"):
    write_params(project, weights_urls=urls, weights_hash=weights_hash)
    return call_stage("fetch_weights", project)


def assert_fetched(result: subprocess.CompletedProcess, project: Path) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert (project / WEIGHTS).read_bytes() == BODY
    assert [p.name for p in (project / "models").iterdir()] == ["backbone_notop.h5"], "no .part"


def assert_fails(result: subprocess.CompletedProcess, project: Path, *hints: str) -> str:
    last = assert_stage_error(result, *hints)
    assert not (project / WEIGHTS).exists()
    assert not list(project.glob("models/*")), "no .part file left"
    return last


def test_download(project: Path, serve) -> None:
    mirror = serve()
    result = fetch(project, [mirror.url()])
    assert_fetched(result, project)
    assert mirror.requests == [(f"/{NAME}", None, 200)]
    assert f"md5 {BODY_MD5}" in result.stdout


def test_empty_hash_skips_the_check(project: Path, serve) -> None:
    mirror = serve()
    assert_fetched(fetch(project, [mirror.url()], weights_hash=""), project)


def test_checksum_mismatch(project: Path, serve) -> None:
    (project / "models").mkdir()
    (project / WEIGHTS).write_bytes(BODY)  # an earlier run's file must not survive a failure
    mirror = serve()
    expected = "0" * 32
    result = fetch(project, [mirror.url()], weights_hash=f"md5:{expected}")
    assert_fails(result, project, mirror.url(), BODY_MD5, expected,
                 f"set weights_hash: md5:{BODY_MD5} in params.yaml")


def test_dead_mirrors_then_a_good_one(project: Path, serve) -> None:
    mirror = serve()
    refused, missing = closed_port_url(), mirror.url("no-such-file.h5")
    result = fetch(project, [refused, missing, mirror.url()])
    assert_fetched(result, project)
    assert mirror.requests == [("/no-such-file.h5", None, 404), (f"/{NAME}", None, 200)]
    assert f"{refused} failed" in result.stderr and f"{missing} failed" in result.stderr


def test_all_mirrors_fail(project: Path, serve) -> None:
    mirror = serve()
    refused, missing, local = closed_port_url(), mirror.url("gone.h5"), "nowhere/weights.h5"
    last = assert_fails(fetch(project, [refused, missing, local]), project,
                        "could not fetch the backbone weights from any of weights_urls")
    assert re.search(rf"{re.escape(refused)}: [^;]*Connection refused", last), last
    assert re.search(rf"{re.escape(missing)}: HTTP 404", last), last
    assert re.search(rf"{re.escape(local)}: [^;]*No such file", last), last


def test_unsupported_scheme(project: Path) -> None:
    assert_fails(fetch(project, ["ftp://example.com/weights.h5"]), project,
                 "ftp://example.com/weights.h5: only http://, https:// and file://")


@pytest.mark.parametrize("form", ["relative", "file-url"])
def test_local_path(project: Path, form: str) -> None:
    local = project / "offline" / NAME
    local.parent.mkdir()
    local.write_bytes(BODY)
    source = f"offline/{NAME}" if form == "relative" else f"file://{local}"
    assert_fetched(fetch(project, [source]), project)
    assert local.read_bytes() == BODY, "a local source is copied, never moved"


def test_broken_transfer_is_resumed(project: Path, serve) -> None:
    broken_at = 300_000
    mirror = serve(break_after=broken_at)
    result = fetch(project, [mirror.url()])
    assert_fetched(result, project)
    assert len(mirror.requests) == 2, mirror.requests
    assert mirror.requests[0] == (f"/{NAME}", None, 200)
    _, requested, status = mirror.requests[1]
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", requested or "").group(1))
    # The client keeps what it wrote before the break: at most its last read is lost.
    assert 0 < resumed_at <= broken_at and status == 206


def test_server_ignoring_range_restarts_from_zero(project: Path, serve) -> None:
    mirror = serve(break_after=300_000, honour_range=False)
    result = fetch(project, [mirror.url()])
    assert_fetched(result, project)
    assert len(mirror.requests) == 2, mirror.requests
    _, requested, status = mirror.requests[1]
    assert requested and requested.startswith("bytes=") and status == 200
    assert md5(project / WEIGHTS) == BODY_MD5


def test_transfer_that_always_breaks_gives_up(project: Path, serve) -> None:
    flaky = serve(break_after=0, break_every_time=True)  # headers, then nothing
    assert_fails(fetch(project, [flaky.url()]), project, flaky.url())
    assert 2 <= len(flaky.requests) <= 5, "retried a few times, then moved on"


# --- weights_urls: keras / weights_hash: keras --------------------------------------

INCEPTION_NOTOP = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
RECIPE_URLS = [  # the reference recipe's mirror, then Keras's own URL
    f"https://storage.googleapis.com/mledu-datasets/{INCEPTION_NOTOP}",
    f"https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/{INCEPTION_NOTOP}",
]
RECIPE_MD5 = "bcbd6486424b2319ff4ef7d526e38f63"
KERAS_MOBILENET = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
HASH_SPEC = re.compile(r"md5:[0-9a-f]{32}|sha256:[0-9a-f]{64}")


def keras_params(**changes: Any) -> dict[str, Any]:
    """The shipped params.yaml with `changes`, both weights keys "keras" unless changed."""
    params = load_params(ROOT / "params.yaml")
    return {**params, "weights_urls": "keras", "weights_hash": "keras", **changes}


def test_default_params_resolve_to_the_reference_recipe_urls_and_md5() -> None:
    params = load_params(ROOT / "params.yaml")
    assert (params["weights_urls"], params["weights_hash"]) == ("keras", "keras")
    assert published_weights(params) == (RECIPE_URLS, f"md5:{RECIPE_MD5}")


@pytest.mark.parametrize("size", [128, 224])
def test_mobilenet_file_follows_alpha_and_size_and_has_no_hash(
        size: int, capsys: pytest.CaptureFixture[str]) -> None:
    name = f"mobilenet_2_5_{size}_tf_no_top.h5"
    urls, hash_spec = published_weights(keras_params(backbone="MobileNet", alpha=0.25,
                                                     image_size=size))
    assert (urls, hash_spec) == ([KERAS_MOBILENET + name], "")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"fetch_weights: Keras publishes no checksum for {name}; not checking it "
        "(to pin it, set weights_hash: sha256:<the digest printed once it is written>)"]


def test_mobilenet_at_a_size_keras_has_no_file_for_takes_the_224_file_and_says_so(
        capsys: pytest.CaptureFixture[str]) -> None:
    urls, _ = published_weights(keras_params(backbone="MobileNet", alpha=0.5, image_size=150))
    assert urls == [KERAS_MOBILENET + "mobilenet_5_0_224_tf_no_top.h5"]
    captured = capsys.readouterr()
    assert captured.out == ""
    warned, no_hash = captured.err.splitlines()  # one line each, nothing of Keras's own
    assert warned.startswith("fetch_weights: MobileNet at 150 px loads "
                             "mobilenet_5_0_224_tf_no_top.h5; Keras warns: "), warned
    assert "(224, 224)" in warned
    assert no_hash.startswith("fetch_weights: Keras publishes no checksum")


@pytest.mark.parametrize(("backbone", "notop"), [
    ("EfficientNetB0", "efficientnetb0_notop.h5"),
    ("ResNet50", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
])
def test_other_backbones_resolve_to_their_notop_file_and_keras_checksum(
        backbone: str, notop: str) -> None:
    [url], hash_spec = published_weights(keras_params(backbone=backbone, image_size=150))
    assert url.startswith("https://") and url.endswith(f"/{notop}"), url
    assert HASH_SPEC.fullmatch(hash_spec), hash_spec


def test_a_64_digit_keras_checksum_is_sha256() -> None:
    # ConvNeXt's published checksums are sha256 digests; Keras tells them by their length.
    _, hash_spec = published_weights(keras_params(backbone="ConvNeXtTiny"))
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", hash_spec), hash_spec


@pytest.mark.parametrize(("backbone", "alpha", "accepted"), [
    ("MobileNet", 0.3, "use one of 0.25, 0.50, 0.75, 1.0 or set weights_urls"),
    ("MobileNetV2", 0.25, "use one of 0.35, 0.50, 0.75, 1.0, 1.3, 1.4 or set weights_urls"),
])
def test_alpha_keras_has_no_weights_for_is_one_line_saying_what_to_use(
        backbone: str, alpha: float, accepted: str) -> None:
    with pytest.raises(StageError) as refused:
        published_weights(keras_params(backbone=backbone, alpha=alpha, image_size=128))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"alpha: Keras publishes no ImageNet weights for {backbone} "
                              f"alpha {alpha}; {accepted}"), message


def test_explicit_urls_take_keras_checksum_of_the_configured_backbone() -> None:
    mirrors = ["https://example.com/mirror.h5", "offline/weights.h5"]
    assert published_weights(keras_params(weights_urls=mirrors)) == (mirrors, f"md5:{RECIPE_MD5}")


def test_explicit_urls_and_hash_resolve_to_themselves_without_tensorflow() -> None:
    # The stage's own download path must not wait for TensorFlow to learn what it was told.
    code = ("import sys; from finetune.sources.keras_weights import published_weights; "
            "print(published_weights({'weights_urls': ['a.h5', 'b.h5'], 'weights_hash': ''})); "
            "print(sorted({'keras', 'tensorflow'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["(['a.h5', 'b.h5'], '')", "[]"]


def test_resolution_reads_only_the_params_the_stage_tracks() -> None:
    # A key it read but dvc.yaml did not list would leave a stale file after `-S key=...`.
    tracked = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["fetch_weights"]["params"]
    params = keras_params(backbone="MobileNet", alpha=0.25, image_size=128)
    only_tracked = {key: params[key] for key in tracked}
    assert published_weights(only_tracked) == published_weights(params)


def test_stage_with_keras_hash_checks_the_file_against_keras_checksum(
        project: Path, serve) -> None:
    mirror = serve()
    assert_fails(fetch(project, [mirror.url()], weights_hash="keras"), project,
                 f"md5 is {BODY_MD5}, expected {RECIPE_MD5}")


def test_stage_with_keras_urls_unreachable_fails_in_one_line(project: Path) -> None:
    # Keras's URL made unreachable for certain, here or on a machine with internet access:
    # the downloads go through a proxy on a closed loopback port.
    network = {**SMALL_NETWORK, "image_size": 128}
    write_params(project, weights_urls="keras", weights_hash="keras", **network)
    proxy = f"http://127.0.0.1:{closed_port()}"
    result = call_stage("fetch_weights", project, HTTPS_PROXY=proxy)
    url = KERAS_MOBILENET + "mobilenet_2_5_128_tf_no_top.h5"
    assert_fails(result, project, "could not fetch the backbone weights from any of weights_urls",
                 f"{url}: ")
    assert f"fetch_weights: fetching {url}" in result.stdout
    assert "Keras publishes no checksum for mobilenet_2_5_128_tf_no_top.h5" in result.stderr
