"""Stage fetch_weights: download the backbone's pretrained weights and verify them.

Mirrors in `weights_urls` are tried in order; an entry that is not an http(s) URL is a
local file, for offline use (finetune.sources.weights). The file reaches
models/backbone_notop.h5 only once it is complete and its checksum matches
`weights_hash`. "keras" for either key stands for the file keras.applications publishes
for the configured backbone, or its checksum (finetune.sources.keras_weights).
"""

from __future__ import annotations

from finetune.core.params import load_params, parse_hash
from finetune.core.runner import run_main
from finetune.sources.keras_weights import published_weights
from finetune.sources.weights import fetch_first


def main() -> None:
    params = load_params()
    # A backbone, size or layer name that cannot work fails now, not after the download.
    from finetune.model.backbone import check_architecture

    check_architecture(params)
    sources, expected_hash = published_weights(params)  # "keras" read from keras.applications
    algorithm, expected = parse_hash(expected_hash) if expected_hash else ("sha256", "")
    fetch_first(sources, algorithm, expected)


if __name__ == "__main__":
    run_main(main)
