"""The plots page that renders offline (`make plots`, scripts/plots_page.py), opened in
headless Chromium with no network (marker `browser`: `make test-browser` installs Debian's
Chromium and Playwright). The project is the session's class-folder run: the real
dvc.yaml's plots (training curves, confusion matrix, ROC, precision-recall, mistakes.png)
after a real `dvc repro`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.plots_page import PACKAGES, SCRIPTS, SCRIPTS_FOLDER, fetch_scripts
from tests.support.browser import open_offline
from tests.support.commands import charts, dvc, stage_env
from tests.support.shared import ROOT

# With `make test`'s two processes (`-m browser -n 2` too), in the one that makes the
# shared class-folder run.
pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("class_folder_run")]


def plots_page(project: Path, out: Path, env: dict[str, str]) -> Path:
    """`make plots`' command on `project`, its page written into `out`; the page."""
    made = subprocess.run(
        [sys.executable, "-m", "scripts.plots_page", "--project", str(project),
         "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    page = out / "index.html"
    assert made.stdout == f"{page.as_uri()}\n"
    return page


@pytest.fixture(scope="module")
def offline_page(class_folder_run, tmp_path_factory) -> Path:
    """The class-folder run's plots page, as `make plots` writes it (a folder of its own:
    the shared project is left as it is)."""
    fetch_scripts()  # `make plots` fetches them from the npm registry once: not timed below
    out = tmp_path_factory.mktemp("plots") / "dvc_plots"
    return plots_page(class_folder_run.project, out, class_folder_run.env)


def test_every_chart_renders_offline(offline_page, class_folder_run):
    rendered = open_offline(offline_page)
    print(*(f"{name}: {drawn}" for name, drawn in rendered.charts.items()), sep="\n")
    assert rendered.outside == []
    assert rendered.failed == []
    assert rendered.errors == []
    # One drawing per Vega chart `dvc plots show` lists: the two training curves, the
    # reliability diagram, the confusion matrix, ROC and precision-recall; and the
    # mistakes' grid as an image.
    listed = charts(class_folder_run.project, class_folder_run.env)
    vega = [name for name, (title, _) in listed.items() if title]
    assert len(vega) == 6
    assert len(rendered.charts) == len(vega)
    assert rendered.undrawn() == {}
    assert rendered.images == {
        "static/workspace_metrics_evaluate_plots_images_mistakes.png": True}
    # The page's own folder holds all it loads: it can be moved or sent as it is.
    assert sorted(path.name for path in (offline_page.parent / SCRIPTS_FOLDER).iterdir()) == (
        sorted(SCRIPTS))


def test_a_missing_script_is_caught(offline_page, tmp_path):
    """The check itself: a page whose Vega-Embed did not load shows its failed request,
    the error it caused and every chart undrawn."""
    page = shutil.copytree(offline_page.parent, tmp_path / "dvc_plots") / "index.html"
    (page.parent / SCRIPTS_FOLDER / "vega-embed.min.js").unlink()
    rendered = open_offline(page)
    assert [failure.split(": ")[0] for failure in rendered.failed] == [
        (page.parent / SCRIPTS_FOLDER / "vega-embed.min.js").as_uri()]
    assert "uncaught: vegaEmbed is not defined" in rendered.errors
    assert len(rendered.charts) == 6
    assert set(rendered.undrawn().values()) == {"nothing drawn"}


def test_dvc_s_own_page_is_blank_offline(class_folder_run, tmp_path):
    """Why `make plots`: DVC's own page asks a CDN for its scripts, so offline it draws no
    chart (and the check sees those requests, aborted before they left)."""
    out = tmp_path / "dvc_plots"
    dvc(class_folder_run.project, class_folder_run.env, "plots", "show", "-o", str(out))
    rendered = open_offline(out / "index.html")
    assert sorted(rendered.outside) == sorted(
        f"https://cdn.jsdelivr.net/npm/{name}@{version}" for name, version in PACKAGES.items())
    assert set(rendered.undrawn().values()) == {"nothing drawn"}


def test_a_project_with_no_plots_gets_one_line(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    env = stage_env()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    dvc(project, env, "init", "-q")
    fetch_scripts()
    made = subprocess.run(
        [sys.executable, "-m", "scripts.plots_page", "--project", str(project)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert made.returncode == 1
    assert made.stderr == (
        f"error: `dvc plots show` in {project} wrote no page: No plots were loaded, "
        "visualization file will not be created.\n")
    assert not (project / "dvc_plots").exists()
