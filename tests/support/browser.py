"""A page opened as a person would, in headless Chromium (Debian's, driven by Playwright),
offline: what each Vega chart and image on it drew, and what went wrong on the way.

Offline by construction: every request for anything but a file:// URL is aborted before
it leaves (and listed), as it would fail on a machine without the internet.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# The charts `dvc plots show` puts on its page: a <div id=...> whose inline script calls
# vegaEmbed('#id', spec) (dvc_render's VegaRenderer.DIV), which replaces the script with the
# chart and marks the div with the class vega-embed. Each one's drawing: its <svg> or
# <canvas>, and how many of its pixels differ from the first (its background), so a chart
# left blank, or an empty canvas, counts 0.
DRAWN_CHARTS = """() => Object.fromEntries(
  [...document.querySelectorAll("div[id]")]
    .filter(div => div.classList.contains("vega-embed") || [...div.children].some(
      child => child.tagName === "SCRIPT" && child.textContent.includes("vegaEmbed(")))
    .map(div => {
      const drawing = div.querySelector("svg, canvas");
      if (!drawing) return [div.id, "nothing drawn"];
      const box = drawing.getBoundingClientRect();
      if (box.width === 0 || box.height === 0) return [div.id, "an empty " + drawing.tagName];
      if (drawing.tagName.toLowerCase() === "svg") {
        const marks = drawing.querySelectorAll("path, line, rect, text, circle").length;
        return [div.id, marks ? `svg ${box.width}x${box.height}, ${marks} marks`
                               : "an svg with no marks"];
      }
      const pixels = drawing.getContext("2d")
        .getImageData(0, 0, drawing.width, drawing.height).data;
      let inked = 0;
      for (let i = 0; i < pixels.length; i += 4) {
        if (pixels[i] !== pixels[0] || pixels[i + 1] !== pixels[1]
            || pixels[i + 2] !== pixels[2] || pixels[i + 3] !== pixels[3]) inked++;
      }
      return [div.id, inked ? `canvas ${drawing.width}x${drawing.height}, ${inked} inked pixels`
                            : "a blank canvas"];
    }))"""
# Each <img>'s source, relative to the page, and whether it loaded (decoded, non-empty).
IMAGES = """() => Object.fromEntries([...document.images].map(
  image => [image.getAttribute("src"), image.complete && image.naturalWidth > 0]))"""
DRAWN = re.compile(r"^(svg|canvas) ")


@dataclass
class Rendered:
    """What a page showed: `charts` (element id -> what it drew: "svg WxH, N marks",
    "canvas WxH, N inked pixels", or what is wrong), `images` (src -> loaded), and the
    trouble: requests for anything but a file:// URL (`outside`, all aborted), requests
    that failed (`failed`), and uncaught errors and console errors (`errors`)."""

    charts: dict[str, str] = field(default_factory=dict)
    images: dict[str, bool] = field(default_factory=dict)
    outside: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def undrawn(self) -> dict[str, str]:
        """The charts that drew nothing, with what they show instead."""
        return {name: drawn for name, drawn in self.charts.items() if not DRAWN.match(drawn)}


def chromium() -> str:
    """Debian's Chromium, which `make test-browser` installs."""
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("no chromium on PATH: `make test-browser` installs Debian's (apt)")
    return found


def open_offline(page_file: Path, timeout: float = 30.0) -> Rendered:
    """Open `page_file` in headless Chromium with no network, wait until every chart has
    drawn (or something failed, or `timeout` seconds passed) and say what it showed."""
    from playwright.sync_api import sync_playwright

    rendered = Rendered()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium())
        try:
            context = browser.new_context()
            context.route(re.compile(r"^(?!file:)"), lambda route: (
                rendered.outside.append(route.request.url), route.abort()))
            page = context.new_page()
            page.on("requestfailed", lambda request: rendered.failed.append(
                f"{request.url}: {request.failure}"))
            page.on("pageerror", lambda error: rendered.errors.append(f"uncaught: {error}"))
            page.on("console", lambda message: message.type == "error"
                    and rendered.errors.append(f"console: {message.text}"))
            page.goto(page_file.resolve().as_uri(), wait_until="load")
            # vegaEmbed draws after the page's load, asynchronously: poll until done.
            deadline = time.monotonic() + timeout
            while True:
                rendered.charts = page.evaluate(DRAWN_CHARTS)
                if (not rendered.undrawn() or rendered.failed or rendered.errors
                        or time.monotonic() > deadline):
                    break
                page.wait_for_timeout(100)
            rendered.images = page.evaluate(IMAGES)
        finally:
            browser.close()
    # Requests aborted by the route above fail too: listed once, as outside.
    rendered.failed = [failure for failure in rendered.failed
                       if not failure.startswith(tuple(rendered.outside))]
    return rendered
