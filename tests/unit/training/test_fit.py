"""finetune.training.fit: the line that says training diverged."""

from __future__ import annotations

import math

from finetune.training.fit import diverged


def test_a_diverged_last_epoch_with_keep_last_names_the_best_one():
    params = {"lr": 0.3, "head_lr": 1e-3, "head_epochs": 1}
    assert diverged(params, [0.41, 0.38, math.nan], best=2) == (
        "training diverged: the validation loss is not finite in the last epoch, 3 (nan), "
        "which keep: last keeps (epoch 2 had 0.3800); nothing saved. Lower `lr` (0.3) or "
        "`head_lr` (0.001), or set keep: best and run again")
    assert diverged({**params, "head_epochs": 0}, [math.nan, math.inf], best=None) == (
        "training diverged: the validation loss is not finite in all 2 epochs (last: inf); "
        "nothing saved. Lower `lr` (0.3) and run again")
