"""Stage split_classes: extract data/raw/train.zip into data/train/<class>/.

The archive holds one folder per class, or Kaggle's images named after their class
(finetune.dataset.classes). Unsafe archives are refused before anything is extracted
(finetune.dataset.archive); each image is decoded once on its way in, and an unreadable
one is skipped and listed in metrics/data.json (finetune.dataset.unpack). data/train.json
lists what data/train holds, for the stages that read it (finetune.dataset.manifest).
"""

from __future__ import annotations

import sys

from finetune.core.atomic import remove
from finetune.core.params import load_params
from finetune.core.paths import DATA_REPORT, TRAIN_DIR, TRAIN_MANIFEST, TRAIN_ZIP
from finetune.core.runner import run_main
from finetune.dataset.archive import check_expansion, open_train_archive, safe_members
from finetune.dataset.classes import classify
from finetune.dataset.manifest import write_manifest, write_report
from finetune.dataset.unpack import unpack_images


def main() -> None:
    params = load_params()
    # Outputs describe this run's archive or nothing: a failed run must not leave the
    # previous archive's images for a later train to pick up. (DVC removes them too.)
    for output in (TRAIN_DIR, TRAIN_MANIFEST, DATA_REPORT):
        remove(output)
    with open_train_archive() as archive:
        members = safe_members(archive)
        check_expansion(members, TRAIN_ZIP.stat().st_size)
        images, unlabelled = classify(members)  # in a second, before any decoding
        readable, counts, unreadable = unpack_images(archive, images,
                                                    params["max_unreadable_fraction"])
    write_manifest(readable)
    write_report(counts, unlabelled, unreadable)
    ignored = f", {unlabelled} images in no class folder ignored" if unlabelled else ""
    print(f"split_classes: {counts} images in {TRAIN_DIR}, {len(unreadable)} unreadable "
          f"skipped (listed in {DATA_REPORT}){ignored}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
