"""The data set as a zip at an http(s):// URL (`data_source: https://...zip`): downloaded
with resume and progress (finetune.sources.download), checked against `data_source_hash`
where it is set, then read exactly as a local zip is (finetune.sources.local.copy_zip):
the competition's bundle, or a zip of class folders, with the same archive checks.

The download goes to URL_DOWNLOAD_DIR, not to data/raw: DVC deletes a stage's outputs
before running it, and the stage empties data/raw itself, so a partial file there could
not survive a killed run. There it stays while the transfer is incomplete (the next run
resumes it with a Range request) and is deleted once copied into data/raw (which DVC
caches: a second copy of hundreds of MB is of no use) or once found bad (a checksum that
does not match, not a zip: the next run downloads it afresh).
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

from finetune.core.atomic import remove
from finetune.core.errors import StageError
from finetune.core.params import parse_hash
from finetune.core.paths import URL_DOWNLOAD_DIR
from finetune.sources.checksum import check_digest
from finetune.sources.download import BROKEN, describe, download, size_of
from finetune.sources.local import copy_zip

# Microsoft's copy of the photos of Kaggle's Dogs vs. Cats, the archive Keras's "image
# classification from scratch" example downloads: PetImages/Cat/*.jpg and PetImages/Dog/*.jpg,
# no test set, no Kaggle account needed (docs/data-sources.md, "Without a Kaggle account").
PET_IMAGES_URL = (
    "https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip"
)


def partial_path(url: str) -> Path:
    """Where `url` downloads to: named after the whole URL (a digest of it, then its file
    name), so that the bytes of one URL never resume another's."""
    name = re.sub(r"[^\w.-]", "_", Path(urlsplit(url).path).name)[-80:] or "download"
    return URL_DOWNLOAD_DIR / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}.partial"


def fetch_url(url: str, hash_spec: str) -> None:
    """Download the zip at `url` (resuming an earlier run's partial file), check it against
    `hash_spec` ("algorithm:hex", or "" not to), and copy it into data/raw as a local zip."""
    algorithm, expected = parse_hash(hash_spec) if hash_spec else ("sha256", "")
    partial = partial_path(url)
    # Another URL's download (data_source changed since): hundreds of MB nothing will resume.
    for other in URL_DOWNLOAD_DIR.glob("*"):
        if other != partial:
            remove(other)
    partial.parent.mkdir(parents=True, exist_ok=True)
    resumed = size_of(partial)
    print(f"fetch_data: downloading {url}"
          + (f", resuming at byte {resumed:,}" if resumed else ""), flush=True)
    try:
        download(url, partial, stage="fetch_data")
    except OSError as error:  # requests' errors are OSErrors too
        if isinstance(error, BROKEN) and size_of(partial):
            raise StageError(f"the download of {url} broke off at byte {size_of(partial):,} "
                             f"({describe(error)}): run the stage again to resume it") from None
        raise StageError(f"cannot download data_source {url}: {describe(error)} (check the URL, "
                         "the network connection and proxy settings)") from None
    # A bad file, not an incomplete one, is deleted: the next run must download it afresh.
    try:
        actual = check_digest(partial, algorithm, expected, "data_source_hash")
    except StageError as error:
        remove(partial)
        raise StageError(f"the file downloaded from {url} does not match data_source_hash: "
                         f"{error}") from None
    if not zipfile.is_zipfile(partial):
        remove(partial)
        raise StageError(f"the file downloaded from {url} is not a zip file; deleted it (does "
                         "the URL name the file itself, not a page about it?)")
    try:
        copy_zip(partial)
    except StageError as error:
        remove(partial)
        raise StageError(f"{error} (downloaded from {url}; deleted it: run the stage again)"
                         ) from None
    size = partial.stat().st_size
    remove(partial)  # copied into data/raw
    pin = "" if expected else f"; to pin it, set data_source_hash: {algorithm}:{actual}"
    print(f"fetch_data: downloaded {url} ({size:,} bytes, {algorithm} {actual}{pin})",
          flush=True)
