"""Fixtures: test material made once per session (tests/support builds it). Only claims
that need real photos or real pretrained weights read ../shared (`real_sample_dir`,
`flowers_dir`, `mobilenet_weights`); they skip where it is absent, and fail instead
under CI (REQUIRE_SHARED=1, set by .ci/run)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import weights
from tests.support.photos import make_sample
from tests.support.projects import Extracted, extract_sample_features
from tests.support.servers import serving
from tests.support.shared import FLOWERS, MOBILENET_WEIGHTS, REAL_SAMPLE, ROOT, needs_shared


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`make test` runs the suite on two processes (pytest-xdist, `--dist loadgroup`): each
    test file runs whole in one of them, so its module fixtures are made once; files that
    read one session fixture made at great cost share an `xdist_group` mark instead."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.path.relative_to(ROOT).as_posix()))


@pytest.fixture(scope="session")
def real_sample_dir() -> Path:
    """The 1,000 real Kaggle photos in ../shared: only for claims about real photos."""
    return needs_shared(REAL_SAMPLE, "the shared sample photos")


@pytest.fixture(scope="session")
def flowers_dir() -> Path:
    """Real flower photos in five class folders: only for claims about other data sets."""
    return needs_shared(FLOWERS, "the shared flowers sample")


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    """Real ImageNet-pretrained MobileNet (alpha 0.25) weights: only for claims about transfer."""
    return needs_shared(MOBILENET_WEIGHTS, "the shared MobileNet weights")


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Drawn photos in the sample's layout: 60 per class for training, 20 for the test set."""
    return make_sample(tmp_path_factory.mktemp("sample") / "dogs-vs-cats", 60, 20)


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """InceptionV3 without top, random weights, in the layout of the real notop file."""
    return weights.inception_random_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="session")
def mobilenet_random_weights(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    """MobileNet (alpha 0.25), random weights calibrated on the drawn photos (see
    tests.support.weights.mobilenet_random_weights)."""
    return weights.mobilenet_random_weights(tmp_path_factory.mktemp("weights"), sample_dir)


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server; yields (base URL, folder it serves)."""
    folder = tmp_path / "served"
    folder.mkdir()
    with serving(folder) as url:
        yield url, folder


@pytest.fixture(scope="session")
def extracted_features(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path,
                       mobilenet_random_weights: Path) -> Extracted:
    """The features stage, run once on a small project (see
    tests.support.projects.extract_sample_features). Tests must not change its project:
    copy it (shutil.copytree) to run other stages in it."""
    return extract_sample_features(tmp_path_factory.mktemp("extracted"), sample_dir,
                                   mobilenet_random_weights)
