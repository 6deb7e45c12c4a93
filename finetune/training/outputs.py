"""Where training writes: the project's own paths, or, on a multi-worker cluster's other
workers, the same layout in a temporary folder that is deleted afterwards."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from finetune.core.paths import BACKUP_DIR, MODEL_FILE, TRAIN_LIVE_DIR
from finetune.training.multi_worker import WorkerRole


@dataclass(frozen=True)
class Outputs:
    """Where train writes: the project's own paths, or the same layout under a temporary
    folder (a worker other than the chief: every worker runs the same steps, and only the
    chief's files count)."""

    root: Path = Path()

    @property
    def model(self) -> Path:
        return self.root / MODEL_FILE

    @property
    def live(self) -> Path:
        return self.root / TRAIN_LIVE_DIR

    @property
    def backup(self) -> Path:
        return self.root / BACKUP_DIR

    @property
    def val_loss_log(self) -> Path:
        return self.live / "plots/metrics/eval/loss.tsv"  # dvclive's record of val_loss

    @property
    def best_weights(self) -> Path:
        return self.backup / "best.weights.h5"


@contextlib.contextmanager
def worker_outputs(cluster: WorkerRole) -> Iterator[Outputs]:
    """The project's paths on the chief; on another worker, a temporary folder deleted
    afterwards: it writes nothing that a DVC stage declares."""
    if cluster.is_chief:
        yield Outputs()
        return
    with tempfile.TemporaryDirectory(prefix=f"train-{cluster.task_type}-{cluster.index}-") as root:
        (Path(root) / MODEL_FILE).parent.mkdir(parents=True)
        yield Outputs(Path(root))
