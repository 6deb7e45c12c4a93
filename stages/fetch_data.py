"""Stage fetch_data: the data set's images to data/raw, as train.zip (plus the
competition's test.zip and sample_submission.csv, where there is a test set).

With `data_source: ""` the competition's bundle is downloaded with the official kaggle
client (finetune.sources.kaggle); otherwise `data_source` is a local copy of the
competition's data, or a folder (or zip) of class folders (finetune.sources.local).
"""

from __future__ import annotations

from finetune.core.atomic import remove
from finetune.core.params import load_params
from finetune.core.paths import RAW_DIR, project_path
from finetune.core.runner import run_main
from finetune.sources.kaggle import fetch_competition, kaggle_api
from finetune.sources.local import copy_local


def main() -> None:
    params = load_params()
    competition, source = params["competition"], params["data_source"]
    # Outputs of an earlier run would otherwise be cached by DVC as this run's.
    remove(RAW_DIR)
    api = None if source else kaggle_api(competition)  # no credentials: fail in a second
    # A backbone, size or layer name that cannot work fails now, not after the download
    # (imported here: it loads TensorFlow, which a missing credential need not wait for).
    from finetune.model.backbone import check_architecture

    check_architecture(params)
    try:
        if source:
            copy_local(project_path(source))  # a queued run's copy too
        else:
            fetch_competition(api, competition)
    except BaseException:
        remove(RAW_DIR)  # every output, or none
        raise


if __name__ == "__main__":
    run_main(main)
