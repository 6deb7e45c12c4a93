"""Stage fetch_data: the data set's images to data/raw, as train.zip (plus the
competition's test.zip and sample_submission.csv, where there is a test set).

With `data_source: ""` the competition's bundle is downloaded with the official kaggle
client (finetune.sources.kaggle); an http(s):// URL is a zip to download, checked against
`data_source_hash` where set (finetune.sources.web); otherwise `data_source` is a local copy
of the competition's data, or a folder (or zip) of class folders (finetune.sources.local).
"""

from __future__ import annotations

from finetune.core.atomic import remove
from finetune.core.errors import StageError
from finetune.core.params import is_http_url, load_params
from finetune.core.paths import RAW_DIR, project_path
from finetune.core.runner import run_main
from finetune.sources.kaggle import fetch_competition, kaggle_api
from finetune.sources.local import copy_local
from finetune.sources.web import fetch_url


def main() -> None:
    params = load_params()
    competition, source = params["competition"], params["data_source"]
    source_hash = params["data_source_hash"]
    # Outputs of an earlier run would otherwise be cached by DVC as this run's.
    remove(RAW_DIR)
    if source_hash and not is_http_url(source):  # a check that would silently not happen
        raise StageError(f"data_source_hash checks the zip an http(s):// data_source downloads, "
                         f"and data_source is {source!r}: set data_source_hash to \"\"")
    api = None if source else kaggle_api(competition)  # no credentials: fail in a second
    # A backbone, size or layer name that cannot work fails now, not after the download
    # (imported here: it loads TensorFlow, which a missing credential need not wait for).
    from finetune.model.backbone import check_architecture

    check_architecture(params)
    try:
        if is_http_url(source):
            fetch_url(source, source_hash)
        elif source:
            copy_local(project_path(source))  # a queued run's copy too
        else:
            fetch_competition(api, competition)
    except BaseException:
        remove(RAW_DIR)  # every output, or none
        raise


if __name__ == "__main__":
    run_main(main)
