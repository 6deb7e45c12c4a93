"""Decoding, and the features stage's whole loop, on photos of different sizes side by side:
does decoding keep up with the network when the photos are real-size?

    python -m scripts.bench_decode FOLDER [FOLDER ...] [--limit 500]
        [--repeats 5] [--network WEIGHTS [--precisions float32 mixed_bfloat16]]
        [--param KEY=VALUE ...]

Reads the first --limit photos of each FOLDER (sorted) into memory (no disk in the
figures), then, --repeats times, each folder in turn (interleaved, so that a change in
the machine's load hits every folder alike), times:

- decoding alone: finetune.dataset.decode.decode_batches, the features stage's decoder
  and resizer (tf.data, all cores), in the stage's batches;
- with --network (the notop weights file of params.yaml's backbone), the features stage's
  own loop for each of --precisions: finetune.features.extract.extract, which decodes,
  runs the frozen part and writes the rows to a feature file, built as the stage builds it
  (finetune.model.assembly.build_feature_extractor, params.yaml's recipe, or with a key
  set by --param, e.g. `--param backbone=MobileNet --param unfreeze_after=conv_pw_5_relu`).

It prints each rate's median and each folder's median relative to the first folder's,
then one JSON line (scripts/bench.py reads it). Where decoding alone is well above the
loop's rate, it is hidden behind the network; where the loop on bigger photos runs slower
than on small ones, decoding holds the network back.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from finetune.core.params import load_params


def read_photos(folder: Path, limit: int) -> tuple[list[bytes], dict[str, float]]:
    """The first `limit` JPEGs of `folder` (sorted, subfolders too), and their mean size."""
    paths = sorted(folder.rglob("*.jpg"))[:limit]
    if not paths:
        sys.exit(f"error: no .jpg photo in {folder}")
    sizes = [Image.open(path).size for path in paths]
    return [path.read_bytes() for path in paths], {
        "mean_width": statistics.fmean(width for width, _ in sizes),
        "mean_height": statistics.fmean(height for _, height in sizes)}


def decode_rate(blobs: list[bytes], image_size: int) -> float:
    """images/s of decoding and resizing `blobs` as the features stage does."""
    from finetune.dataset.decode import decode_batches
    from finetune.features.extract import EXTRACT_BATCH

    failures: dict[int, str] = {}
    start = time.perf_counter()
    decoded = sum(len(indices) for indices, _ in
                  decode_batches(blobs.__getitem__, len(blobs), image_size, EXTRACT_BATCH,
                                 failures))
    return decoded / (time.perf_counter() - start)


def loop_rate(extractor: Any, blobs: list[bytes], scratch: Path) -> float:
    """images/s of the features stage's loop over `blobs` (decode, frozen part, rows written)."""
    from finetune.features.extract import extract

    start = time.perf_counter()
    extract(extractor, blobs.__getitem__, len(blobs), scratch / "rows.npy", "bench_decode")
    return len(blobs) / (time.perf_counter() - start)


def extractors(params: dict[str, Any], weights: Path, precisions: list[str]
               ) -> dict[str, Any]:
    """The features stage's extractor in each precision (Keras's policy is global: each is
    built under its own, and keeps it)."""
    from finetune.core.runtime import configure
    from finetune.model.assembly import build_feature_extractor

    built = {}
    for precision in precisions:
        configure({**params, "precision": precision})
        built[precision] = build_feature_extractor({**params, "precision": precision}, weights)
    return built


def measure(folders: list[Path], limit: int, repeats: int, weights: Path | None,
            precisions: list[str], params: dict[str, Any]) -> dict[str, Any]:
    """Every folder's rates, each kind measured `repeats` times, folders interleaved."""
    image_size = params["image_size"]
    photos = [read_photos(folder, limit) for folder in folders]
    built = extractors(params, weights, precisions) if weights else {}
    kinds: dict[str, Callable[[list[bytes], Path], float]] = {
        "decode": lambda blobs, _: decode_rate(blobs, image_size)}
    for precision, extractor in built.items():
        kinds[f"features {precision}"] = (
            lambda blobs, scratch, extractor=extractor: loop_rate(extractor, blobs, scratch))
    rates: dict[str, list[list[float]]] = {kind: [[] for _ in folders] for kind in kinds}
    with tempfile.TemporaryDirectory() as scratch:
        for rate in kinds.values():  # warm-up: tf.data's and Keras's first traces
            rate(photos[0][0][:64], Path(scratch))
        for _ in range(repeats):
            for kind, rate in kinds.items():
                for number, (blobs, _) in enumerate(photos):
                    rates[kind][number].append(rate(blobs, Path(scratch)))
    measured = []
    for number, (folder, (blobs, sizes)) in enumerate(zip(folders, photos, strict=True)):
        found = {kind: {"images_per_s": rates[kind][number],
                        "median": statistics.median(rates[kind][number])} for kind in kinds}
        measured.append({"folder": str(folder), "images": len(blobs), **sizes, "rates": found})
    return {"image_size": image_size, "repeats": repeats,
            "network": params["backbone"] if weights else None, "folders": measured}


def size_label(folder: dict[str, Any]) -> str:
    """A measured folder's mean photo size, "WxH"."""
    return f"{folder['mean_width']:.0f}x{folder['mean_height']:.0f}"


def print_table(result: dict[str, Any]) -> None:
    folders = result["folders"]
    network = f", {result['network']}'s frozen part" if result["network"] else ""
    print(f"bench_decode: {folders[0]['images']:,} photos per folder to "
          f"{result['image_size']} px{network}; images/s, median of {result['repeats']} "
          "repeats (folders interleaved); x: relative to the first folder")
    print(f"{'':<26}" + "".join(f"{size_label(f):>18}" for f in folders))
    for kind in folders[0]["rates"]:
        first = folders[0]["rates"][kind]["median"]
        cells = [f"{f['rates'][kind]['median']:,.0f}" +
                 (f" ({f['rates'][kind]['median'] / first:.2f}x)" if number else "")
                 for number, f in enumerate(folders)]
        print(f"{kind:<26}" + "".join(f"{cell:>18}" for cell in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+", metavar="FOLDER")
    parser.add_argument("--limit", type=int, default=500, help="photos per folder")
    parser.add_argument("--repeats", type=int, default=5,
                        help="runs of each kind per folder (default: 5; a stall of a few "
                             "seconds on a shared machine halves a short run's rate)")
    parser.add_argument("--network", type=Path, metavar="WEIGHTS",
                        help="notop weights of params.yaml's backbone: time the features "
                             "stage's loop too")
    parser.add_argument("--precisions", nargs="+", default=["float32"],
                        help="the loop's precisions (default: float32)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a params.yaml key for the network and the image size (YAML value)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    params = load_params()
    for setting in args.param:
        key, equals, value = setting.partition("=")
        if not equals or key not in params:
            parser.error(f"--param {setting}: expected KEY=VALUE with a key of params.yaml")
        params[key] = yaml.safe_load(value)
    result = measure(args.folders, args.limit, args.repeats, args.network, args.precisions,
                     params)
    print_table(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
