"""The per-epoch log dvclive keeps in metrics/train: the Keras callback, stepping by the
true epoch number, and reading or trimming what it logged when a run resumes."""

from __future__ import annotations

from dvclive.keras import DVCLiveCallback

from finetune.training.outputs import Outputs


class EpochLogger(DVCLiveCallback):
    """dvclive's Keras callback, stepping by the true epoch number (after a resume too)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.live.step = epoch
        super().on_epoch_end(epoch, logs)


def logged_val_losses(outputs: Outputs) -> list[float]:
    """Validation loss per epoch, as dvclive logged it."""
    if not outputs.val_loss_log.is_file():
        return []
    return [float(row.split("\t")[1])
            for row in outputs.val_loss_log.read_text().splitlines()[1:]]


def forget_logged_epochs(since: int, outputs: Outputs) -> None:
    """Drop dvclive's rows of epochs that a resumed run redoes (logged, killed before
    their backup), so each epoch appears once in the plots."""
    for log in (outputs.live / "plots/metrics").rglob("*.tsv"):
        header, *rows = log.read_text().splitlines()
        kept = [row for row in rows if int(row.split("\t")[0]) < since]
        log.write_text("\n".join([header, *kept]) + "\n")
