"""Stage split_classes: list data/raw/train.zip's labelled images in data/train.json.

The archive holds one folder per class, or Kaggle's images named after their class
(finetune.dataset.classes). Unsafe archives are refused before any image is read
(finetune.dataset.archive); each image is decoded once, and an unreadable one is left
out and listed in metrics/data.json (finetune.dataset.screening). data/train.json lists
each readable image's class, name and entry: the stages read the images from the archive
through it (finetune.dataset.manifest), so nothing is extracted.
"""

from __future__ import annotations

import sys

from finetune.core.atomic import remove
from finetune.core.params import load_params
from finetune.core.paths import DATA_REPORT, TRAIN_MANIFEST, TRAIN_ZIP
from finetune.core.runner import run_main
from finetune.dataset.archive import check_expansion, open_train_archive, safe_members
from finetune.dataset.classes import classify
from finetune.dataset.manifest import write_manifest, write_report
from finetune.dataset.screening import screen_images


def main() -> None:
    params = load_params()
    # Outputs describe this run's archive or nothing: a failed run must not leave the
    # previous archive's list for a later train to pick up. (DVC removes them too.)
    for output in (TRAIN_MANIFEST, DATA_REPORT):
        remove(output)
    with open_train_archive() as archive:
        members = safe_members(archive)
        check_expansion(members, TRAIN_ZIP.stat().st_size)
        images, unlabelled = classify(members)  # in a second, before any decoding
        readable, counts, unreadable = screen_images(archive, images,
                                                     params["max_unreadable_fraction"])
    write_manifest(readable)
    write_report(counts, unlabelled, unreadable)
    ignored = f", {unlabelled} images in no class folder ignored" if unlabelled else ""
    print(f"split_classes: {counts} images listed in {TRAIN_MANIFEST}, {len(unreadable)} "
          f"unreadable skipped (listed in {DATA_REPORT}){ignored}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
