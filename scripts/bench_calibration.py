"""Calibration measured: `calibration: none` against `temperature`, on the demo's and the
flowers' configuration, side by side in one run.

    python -m scripts.bench_calibration [--configs demo flowers] [--out build/bench-calibration]

For each configuration (docs/results.md; needs ../shared), a fresh copy of the project
(scripts.demo.copy_project) runs `dvc repro` once with `calibration: none` (all stages);
then, on the same cached features, the train and evaluate stages run again as commands
with each value of `calibration`, each timed from start to exit. Both values train the
same network (training does not read `calibration`), so the rows differ only by the
temperature. Printed per row: validation accuracy, log loss (for `temperature`, the
cross-fitted one evaluate reports: each image scored with the temperature fitted on the
other folds), expected calibration error (10 bins), the temperature, the stage times, and
the seconds the calibration itself took (train's fit, evaluate's cross-fitting, as the
stages print them). The figures go to OUT/results.json too, and each run's metrics.json
to OUT/<config>-<calibration>-metrics.json.
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
SECONDS = re.compile(r"\((\d+\.\d+) s\)")


def run(command: list[str], project: Path, env: dict[str, str]) -> tuple[float, str]:
    """Run `command` in `project`; its wall time and stderr (exits on failure)."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"error: {' '.join(command)} failed in {project}:\n{done.stderr[-3000:]}")
    return elapsed, done.stderr


def calibration_seconds(stderr: str, stage: str) -> float | None:
    """The seconds the stage says its calibration took (train's fit, evaluate's folds)."""
    lines = [line for line in stderr.splitlines()
             if line.startswith(f"{stage}:") and "temperature" in line]
    found = SECONDS.search(lines[-1]) if lines else None
    return float(found.group(1)) if found else None


def measure(project: Path, calibration: str, env: dict[str, str]) -> dict[str, Any]:
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params_file.write_text(yaml.safe_dump({**params, "calibration": calibration},
                                          sort_keys=False))
    train_s, train_log = run([sys.executable, "-m", "stages.train"], project, env)
    evaluate_s, evaluate_log = run([sys.executable, "-m", "stages.evaluate"], project, env)
    metrics_file = project / "metrics/evaluate/metrics.json"
    metrics = json.loads(metrics_file.read_text())
    # Kept as written, to compare with other runs (`make demo`'s, for the demo with none).
    shutil.copy(metrics_file, project.parent / f"{project.name}-{calibration}-metrics.json")
    _, names, probabilities, classes = read_predictions(project / PREDICTIONS_FILE)
    labels = np.array([classes.index(name) for name in names])
    extra = metrics.get("calibration", {})
    return {"calibration": calibration, "images": metrics["images"],
            "accuracy": metrics["accuracy"], "log_loss": metrics["log_loss"],
            "ece": expected_calibration_error(labels, probabilities),
            "temperature": extra.get("temperature"),
            "train_s": train_s, "evaluate_s": evaluate_s,
            "fit_s": calibration_seconds(train_log, "train"),
            "cross_fit_s": calibration_seconds(evaluate_log, "evaluate")}


def bench(name: str, out: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    project = out / name
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    copy_project(project, {**CONFIGS[name], "calibration": "none"})
    print(f"bench_calibration: {name}: dvc repro (features once) in {project}", flush=True)
    run(["dvc", "repro"], project, env)
    rows = []
    for calibration in ("none", "temperature"):
        rows.append({"config": name, **measure(project, calibration, env)})
        print(f"bench_calibration: {name}: {calibration} done", flush=True)
    return rows


def number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ("config", "calibration", "images", "accuracy", "log loss", "ECE", "T",
              "train s", "evaluate s", "calibration s")
    table = [header] + [
        (row["config"], row["calibration"], str(row["images"]), number(row["accuracy"], 3),
         number(row["log_loss"], 4), number(row["ece"], 4), number(row["temperature"], 3),
         number(row["train_s"], 1), number(row["evaluate_s"], 1),
         "" if row["fit_s"] is None else f"{row['fit_s']:.2f} + {row['cross_fit_s']:.2f}")
        for row in rows]
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    print("(log loss with temperature: cross-fitted over 5 folds of the validation split; "
          "calibration s: train's fit + evaluate's cross-fitting)")
    for config in dict.fromkeys(row["config"] for row in rows):
        none, scaled = (row for row in rows if row["config"] == config)
        seconds = [row["train_s"] + row["evaluate_s"] for row in (none, scaled)]
        print(f"{config}: log loss {none['log_loss']:.4f} -> {scaled['log_loss']:.4f} "
              f"(x{scaled['log_loss'] / none['log_loss']:.3f}), ECE {none['ece']:.4f} -> "
              f"{scaled['ece']:.4f}, accuracy {none['accuracy']:.3f} -> "
              f"{scaled['accuracy']:.3f}; train + evaluate {seconds[0]:.1f} s -> "
              f"{seconds[1]:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench-calibration")
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
