"""The plots page that renders offline (`make plots`): `dvc plots show` with its scripts.

DVC's own page loads Vega, Vega-Lite and Vega-Embed from a CDN, so on a machine without the
internet every chart on it is blank. `dvc plots show --html-template` takes a page of our
own instead: scripts/plots_page.html, DVC's page with the three loaded from `vega/` beside
it. Their builds, at the versions DVC's page names (PACKAGES), are fetched once from the
npm registry with `npm pack` into build/vega/ and copied into the page's folder, so that
the folder (index.html, DVC's static/ images, vega/) opens anywhere, offline, as it is.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from finetune.core.atomic import atomic_output

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "scripts" / "plots_page.html"
# The packages whose builds the template loads, in its order (vega-embed needs the other
# two): the versions DVC's own page loads (dvc_render's VegaRenderer.SCRIPTS, which
# tests/unit/test_plots_page.py compares), so the charts are drawn by the code DVC drew
# them with. npm never changes a published version's files: the version pins the build.
PACKAGES = {"vega": "5.20.2", "vega-lite": "5.2.0", "vega-embed": "6.18.2"}
SCRIPTS = tuple(f"{name}.min.js" for name in PACKAGES)  # each package's build/NAME.min.js
SCRIPTS_FOLDER = "vega"  # beside index.html, as the template's <script src> says
CACHE = ROOT / "build" / "vega"


def fetch_scripts(cache: Path = CACHE) -> Path:
    """The folder holding SCRIPTS at PACKAGES' versions (one per set of versions, under
    `cache`), fetched with `npm pack` if it is not there yet."""
    folder = cache / "_".join(f"{name}-{version}" for name, version in PACKAGES.items())
    if all((folder / script).is_file() for script in SCRIPTS):
        return folder
    if shutil.which("npm") is None:
        sys.exit("error: the plots page needs npm to fetch Vega's scripts once "
                 "(Debian: apt install npm)")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tarballs:
        packed = subprocess.run(
            ["npm", "pack", "--silent", "--pack-destination", tarballs,
             *(f"{name}@{version}" for name, version in PACKAGES.items())],
            capture_output=True, text=True, check=False)
        if packed.returncode != 0:
            said = packed.stderr.strip().splitlines()
            sys.exit(f"error: `npm pack` could not fetch {', '.join(PACKAGES)}"
                     + (f": {said[-1]}" if said else ""))
        for (name, version), script in zip(PACKAGES.items(), SCRIPTS, strict=True):
            with tarfile.open(Path(tarballs) / f"{name}-{version}.tgz") as tarball:
                member = f"package/build/{script}"
                build = tarball.extractfile(member) if member in tarball.getnames() else None
                if build is None:
                    sys.exit(f"error: {name}@{version} has no build/{script}: set PACKAGES "
                             "in scripts/plots_page.py to a version that has")
                # One file at a time, renamed when complete: a killed fetch is redone.
                with atomic_output(folder / script) as partial:
                    partial.write_bytes(build.read())
    return folder


def write_page(project: Path, out: Path, scripts: Path) -> Path:
    """Run `dvc plots show` in `project` with the offline template, writing the page into
    `out` (relative to `project`, as DVC takes it), and copy the `scripts` folder's
    SCRIPTS beside it. Returns the page (index.html)."""
    out = project / out
    page = out / "index.html"
    # DVC writes no page when there is nothing to draw: a page left from an earlier run
    # would pass for this one.
    page.unlink(missing_ok=True)
    shown = subprocess.run(
        ["dvc", "plots", "show", "--html-template", str(TEMPLATE), "-o", str(out)],
        cwd=project, env={**os.environ, "DVC_NO_ANALYTICS": "1"},
        capture_output=True, text=True, check=False)
    if shown.returncode != 0 or not page.is_file():
        said = (shown.stderr.strip() or shown.stdout.strip()).splitlines()
        sys.exit(f"error: `dvc plots show` in {project} wrote no page"
                 + (f": {said[-1]}" if said else ""))
    (out / SCRIPTS_FOLDER).mkdir(exist_ok=True)
    for script in SCRIPTS:
        shutil.copyfile(scripts / script, out / SCRIPTS_FOLDER / script)
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description="The plots page, rendering offline "
                                                 "(make plots).")
    parser.add_argument("--project", type=Path, default=Path(),
                        help="the DVC project whose plots to draw (default: here)")
    parser.add_argument("--out", type=Path, default=Path("dvc_plots"),
                        help="the page's folder, relative to the project (default: dvc_plots)")
    args = parser.parse_args()
    page = write_page(args.project.resolve(), args.out, fetch_scripts())
    print(page.resolve().as_uri())


if __name__ == "__main__":
    main()
