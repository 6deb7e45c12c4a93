"""The offline plots page's template and pins against DVC's own page (scripts/plots_page.py;
the page opened in a browser is tests/e2e/test_plots_page.py, `make test-browser`)."""

from __future__ import annotations

import re

from dvc_render.html import HTML
from dvc_render.vega import VegaRenderer

from scripts.plots_page import PACKAGES, SCRIPTS, SCRIPTS_FOLDER, TEMPLATE


def test_the_pins_are_the_versions_dvc_s_page_loads():
    """The charts are drawn by the code DVC draws them with: when a dvc-render upgrade
    changes its page's versions, this says to change PACKAGES."""
    loaded = re.findall(r'src="https://cdn\.jsdelivr\.net/npm/([\w-]+)@([\d.]+)"',
                        VegaRenderer.SCRIPTS)
    assert dict(loaded) == PACKAGES
    assert [name for name, _ in loaded] == list(PACKAGES)  # vega-embed last: it needs both


def test_the_template_loads_the_local_scripts_and_no_cdn():
    """Filled as `dvc plots show` fills it, the page loads the three scripts from beside
    it, in order, and DVC's CDN tags have nowhere to go."""
    page = (HTML(TEMPLATE.read_text(encoding="utf8"))
            .with_scripts(VegaRenderer.SCRIPTS).with_element("<div id='chart'></div>").embed())
    assert re.findall(r'<script src="([^"]+)"', page) == [
        f"{SCRIPTS_FOLDER}/{script}" for script in SCRIPTS]
    assert "http" not in page
    assert "<div id='chart'></div>" in page
