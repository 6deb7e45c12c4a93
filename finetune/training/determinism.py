"""Reproducible to the bit: seeded, deterministic ops, and each epoch's random draws
(dropout, augmentation) a function of its number alone, so a resumed run draws as an
uninterrupted one."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


class EpochRandomness(keras.callbacks.Callback):
    """Makes each epoch's dropout and augmentation draws a function of its number
    alone: Keras does not save their seed states with the weights, so without this
    a resumed run would draw differently from an uninterrupted one."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        for state in self.model.variables:
            if state.path.endswith("seed_generator_state"):  # [seed, counter]
                seed = np.asarray(state)[0]
                state.assign(np.array([seed, epoch << 20], dtype=state.dtype))


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and ask TensorFlow for deterministic ops."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
