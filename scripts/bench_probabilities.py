"""Calibration and test-time augmentation measured: `calibration` none / temperature
against `tta` none / flip, on the demo's and the flowers' configuration, side by side in
one run.

    python -m scripts.bench_probabilities [--configs demo flowers] [--out build/bench-probabilities]

For each configuration (docs/results.md; needs ../shared), a fresh copy of the project
(scripts.demo.copy_project) runs `dvc repro` once with the defaults (all stages, the
features once). The mirror images' features are then made once (the mirrored_features
stage with `tta: flip`, timed: TTA's one-off cost), and on those cached features the
train stage runs with each value of `calibration`, each followed by evaluate with each
value of `tta`, every stage run as a command and timed from start to exit. Both
calibration values train the same network (training reads neither param), so the four
rows differ only by the temperature and the mirror images.

Printed per row: validation accuracy, log loss (with `temperature`, the cross-fitted one
evaluate reports: each image scored with the temperature fitted on the other folds),
expected calibration error (10 bins), the temperature, the train and evaluate times, and
what the row adds: train's fit and evaluate's cross-fitting (as the stages print them),
and for TTA the mirrored_features stage's time. The figures go to OUT/results.json too,
and each run's metrics.json to OUT/<config>-<calibration>-<tta>-metrics.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from finetune.core.paths import PREDICTIONS_FILE
from finetune.evaluation.calibration import expected_calibration_error
from finetune.evaluation.predictions import read_predictions
from scripts.bench import child_env
from scripts.demo import MOBILENET_PARAMS, ROOT, SAMPLE, SHARED, copy_project

FLOWERS = SHARED / "data" / "flowers-sample"
# docs/results.md's configurations: the demo's (cats and dogs, MobileNet's last block
# fine-tuned) and the flowers' (five classes, the whole backbone frozen, a small head).
CONFIGS: dict[str, dict[str, Any]] = {
    "demo": {**MOBILENET_PARAMS, "data_source": str(SAMPLE)},
    "flowers": {**MOBILENET_PARAMS, "data_source": str(FLOWERS), "cut_layer": "last",
                "unfreeze_after": "last", "dense_units": 128, "dropout": 0.5, "epochs": 40},
}
CALIBRATIONS = ("none", "temperature")
TTAS = ("none", "flip")
SECONDS = re.compile(r"\((\d+\.\d+) s\)")


def run(command: list[str], project: Path, env: dict[str, str]) -> tuple[float, str]:
    """Run `command` in `project`; its wall time and stderr (exits on failure)."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"error: {' '.join(command)} failed in {project}:\n{done.stderr[-3000:]}")
    return elapsed, done.stderr


def run_stage(stage: str, project: Path, env: dict[str, str], **params: str
              ) -> tuple[float, str]:
    """Set `params` in the project's params.yaml, then run `stage` as a command."""
    params_file = project / "params.yaml"
    current = yaml.safe_load(params_file.read_text())
    params_file.write_text(yaml.safe_dump({**current, **params}, sort_keys=False))
    return run([sys.executable, "-m", f"stages.{stage}"], project, env)


def calibration_seconds(stderr: str, stage: str) -> float | None:
    """The seconds the stage says its calibration took (train's fit, evaluate's folds)."""
    lines = [line for line in stderr.splitlines()
             if line.startswith(f"{stage}:") and "temperature" in line]
    found = SECONDS.search(lines[-1]) if lines else None
    return float(found.group(1)) if found else None


def scores(project: Path, name: str) -> dict[str, Any]:
    """The evaluate stage's scores, its metrics.json kept as OUT/<name>-metrics.json."""
    metrics_file = project / "metrics/evaluate/metrics.json"
    metrics = json.loads(metrics_file.read_text())
    # Kept as written, to compare with other runs (`make demo`'s, for the demo's defaults).
    shutil.copy(metrics_file, project.parent / f"{name}-metrics.json")
    _, names, probabilities, classes = read_predictions(project / PREDICTIONS_FILE)
    labels = np.array([classes.index(label) for label in names])
    return {"images": metrics["images"], "accuracy": metrics["accuracy"],
            "log_loss": metrics["log_loss"],
            "ece": expected_calibration_error(labels, probabilities),
            "temperature": metrics.get("calibration", {}).get("temperature")}


def bench(name: str, out: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    project = out / name
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    copy_project(project, {**CONFIGS[name], "calibration": "none", "tta": "none"})
    print(f"bench_probabilities: {name}: dvc repro (features once) in {project}", flush=True)
    run(["dvc", "repro"], project, env)
    mirrored_s, _ = run_stage("mirrored_features", project, env, tta="flip")
    rows = []
    for calibration in CALIBRATIONS:
        train_s, train_log = run_stage("train", project, env, calibration=calibration)
        for tta in TTAS:
            evaluate_s, evaluate_log = run_stage("evaluate", project, env, tta=tta)
            rows.append({"config": name, "calibration": calibration, "tta": tta,
                         **scores(project, f"{name}-{calibration}-{tta}"),
                         "train_s": train_s, "evaluate_s": evaluate_s,
                         "fit_s": calibration_seconds(train_log, "train"),
                         "cross_fit_s": calibration_seconds(evaluate_log, "evaluate"),
                         "mirrored_features_s": mirrored_s if tta == "flip" else None})
            print(f"bench_probabilities: {name}: calibration {calibration}, tta {tta} done",
                  flush=True)
    return rows


def number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def added(row: dict[str, Any]) -> str:
    """What the row's choices cost on top of the plain one, as the stages report it."""
    parts = []
    if row["fit_s"] is not None:
        parts.append(f"calibration {row['fit_s']:.2f} + {row['cross_fit_s']:.2f} s")
    if row["mirrored_features_s"] is not None:
        parts.append(f"mirrored_features {row['mirrored_features_s']:.1f} s")
    return ", ".join(parts)


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ("config", "calibration", "tta", "images", "accuracy", "log loss", "ECE", "T",
              "train s", "evaluate s", "added")
    table = [header] + [
        (row["config"], row["calibration"], row["tta"], str(row["images"]),
         number(row["accuracy"], 3), number(row["log_loss"], 4), number(row["ece"], 4),
         number(row["temperature"], 3), number(row["train_s"], 1),
         number(row["evaluate_s"], 1), added(row))
        for row in rows]
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    print("(log loss with temperature: cross-fitted over 5 folds of the validation split; "
          "added: train's fit + evaluate's cross-fitting, and the mirror images' features, "
          "made once per configuration)")
    for config in dict.fromkeys(row["config"] for row in rows):
        plain, *others = (row for row in rows if row["config"] == config)
        for row in others:
            print(f"{config}: calibration {row['calibration']}, tta {row['tta']}: log loss "
                  f"{plain['log_loss']:.4f} -> {row['log_loss']:.4f} "
                  f"(x{row['log_loss'] / plain['log_loss']:.3f}), accuracy "
                  f"{plain['accuracy']:.3f} -> {row['accuracy']:.3f}, evaluate "
                  f"{plain['evaluate_s']:.1f} s -> {row['evaluate_s']:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench-probabilities")
    args = parser.parse_args()
    for needed in (SAMPLE, FLOWERS, Path(MOBILENET_PARAMS["weights_urls"][0])):
        if not needed.exists():
            sys.exit(f"error: {needed} not found: the benchmark needs ../shared")
    env = child_env()
    rows = [row for name in args.configs for row in bench(name, args.out.resolve(), env)]
    print_table(rows)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
