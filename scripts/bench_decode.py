"""Decoding alone: how fast the features stage's decoder turns a folder's JPEGs into
network inputs, to set beside the network's own rate.

    python -m scripts.bench_decode FOLDER [--image-size 150] [--limit 2000] [--repeats 3]

Reads the first --limit photos of FOLDER (sorted) into memory, then decodes and resizes
them with finetune.dataset.decode.decode_batches, the features stage's own pipeline
(tf.data, all cores), --repeats times, and prints one JSON line: images, the photos'
mean size, and images/s of each repeat with their median. Where this rate is well above
the features stage's images/s, decoding is hidden behind the network; where it nears it,
decoding is the bottleneck (scripts/bench.py runs this on its layout).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from PIL import Image

BATCH = 64  # the features stage's EXTRACT_BATCH order of size: decoding is per image anyway


def decode_rates(paths: list[Path], image_size: int, repeats: int) -> list[float]:
    """images/s of each repeat of decoding `paths` (held in memory: no disk in the figure)."""
    from finetune.dataset.decode import decode_batches

    blobs = [path.read_bytes() for path in paths]
    rates = []
    for _ in range(repeats):
        failures: dict[int, str] = {}
        start = time.perf_counter()
        decoded = sum(len(indices) for indices, _ in
                      decode_batches(blobs.__getitem__, len(blobs), image_size, BATCH, failures))
        rates.append(decoded / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--image-size", type=int, default=150)
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    paths = sorted(path for path in args.folder.rglob("*.jpg"))[:args.limit]
    sizes = [Image.open(path).size for path in paths]
    rates = decode_rates(paths, args.image_size, args.repeats)
    print(json.dumps({
        "images": len(paths), "image_size": args.image_size,
        "mean_width": sum(w for w, _ in sizes) / len(sizes),
        "mean_height": sum(h for _, h in sizes) / len(sizes),
        "images_per_s": rates, "median_images_per_s": statistics.median(rates)}))


if __name__ == "__main__":
    main()
