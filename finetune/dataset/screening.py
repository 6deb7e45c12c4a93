"""Screening train.zip's images: each decoded once, with TensorFlow's own decoder (the one
every stage uses), so that an unreadable image is left out of data/train.json and listed
in metrics/data.json instead of crashing training later. TensorFlow's JPEG decoder
refuses a truncated file ("Premature end of JPEG data"), so a cut-off download is caught
by the decode alone. The images stay in the archive: nothing is extracted.
"""

from __future__ import annotations

import os
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor

from finetune.core.errors import StageError
from finetune.core.paths import TRAIN_ZIP
from finetune.dataset.archive import read_entry
from finetune.dataset.classes import LabelledEntry

CHUNK = 64  # images per task of the thread pool


def workers() -> int:
    """Threads to check images with: one per CPU this process may use (decoding is
    CPU-bound; more threads only contend for the cores and the GIL)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def screen_images(archive: zipfile.ZipFile, images: list[LabelledEntry], max_unreadable: float
                  ) -> tuple[list[LabelledEntry], dict[str, int], dict[str, str]]:
    """Decode every image; return the readable ones, how many each class has, and why
    each unreadable one is."""
    # Imported here, once (not from several threads at once), after the cheap checks.
    from finetune.dataset.decode import decode_error

    labels = sorted({image.label for image in images})
    counts = dict.fromkeys(labels, 0)
    readable: list[LabelledEntry] = []
    unreadable: dict[str, str] = {}
    with ThreadPoolExecutor(workers()) as pool:

        def check(chunk: list[LabelledEntry]) -> list[tuple[LabelledEntry, str]]:
            """Read and decode each image of `chunk`: (image, why it is unreadable or "")."""
            return [(image, decode_error(read_entry(archive, image.info))) for image in chunk]

        # Each worker reads and decodes its own images, one at a time (bounded memory),
        # and nothing waits on the main thread. Decoding releases the GIL; so do the
        # reads (one shared archive handle, locked per entry: cheaper than a handle per
        # worker, each parsing the directory again).
        chunks = [images[start:start + CHUNK] for start in range(0, len(images), CHUNK)]
        futures = [pool.submit(check, chunk) for chunk in chunks]
        try:
            done = 0
            for future in futures:  # in order, for the progress lines
                checked = future.result()
                for image, reason in checked:
                    if reason:
                        unreadable[image.listed_as] = reason
                    else:
                        counts[image.label] += 1
                        readable.append(image)
                before, done = done, done + len(checked)
                if done * 10 // len(images) > before * 10 // len(images):  # every 10%
                    print(f"split_classes: {done}/{len(images)} images checked",
                          file=sys.stderr)
        except BaseException:
            # A damaged entry (refused as a whole) or ^C: stop now, not after the rest.
            pool.shutdown(cancel_futures=True)
            raise

        empty = [label for label, count in counts.items() if count == 0]
        if empty:
            raise StageError(f"{TRAIN_ZIP}: no readable '{empty[0]}' images; "
                             "a class with no images cannot be learned")
        fraction = len(unreadable) / len(images)
        if fraction > max_unreadable:
            raise StageError(f"{TRAIN_ZIP}: {len(unreadable)} of {len(images)} images "
                             f"({fraction:.1%}) are unreadable, over max_unreadable_fraction "
                             f"{max_unreadable}; fetch the data again")
    return readable, counts, unreadable
