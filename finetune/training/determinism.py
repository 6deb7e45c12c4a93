"""Reproducible to the bit: seeded, deterministic ops, and each epoch's random draws
(dropout, augmentation) a function of the seed, the epoch, the step and the replica
alone, so a resumed run draws as an uninterrupted one, and the replicas of a
multi-worker training each draw their own."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

# Keras's TensorFlow backend reduces each word of a [seed, counter] state modulo
# 2**31 - 2 before a stateless random op (keras.src.backend.tensorflow.random._cast_seed),
# which hashes the pair (Philox) into the key and start of its stream: two states draw
# alike exactly when their words are equal modulo this.
SEED_MODULUS = 2**31 - 2
# A prime, coprime with SEED_MODULUS: replicas r and s get the same seed word only if
# r - s is a multiple of SEED_MODULUS, so never within a run; and the replicas of nearby
# seeds (42, 43) do not reuse each other's streams.
REPLICA_STRIDE = 1_000_003
# The counter word: the epoch in the bits above 20, the draws of the epoch below (up to
# 2**20 steps an epoch; 2**11 epochs before the modulus wraps it).
EPOCH_SHIFT = 20


def replica_seed(seed: int, replica: int) -> int:
    """The seed word of replica `replica`'s draws: `seed` itself for replica 0, so one
    process, and a multi-worker training's first replica, draw as they always did."""
    return seed + replica * REPLICA_STRIDE


def epoch_state(seed: int, epoch: int, replica: int = 0) -> np.ndarray:
    """The [seed, counter] state a seed generator starts `epoch` with on `replica`; the
    counter then advances by one a draw (a step)."""
    return np.array([replica_seed(seed, replica), epoch << EPOCH_SHIFT], np.int64)


def local_replicas(strategy: tf.distribute.Strategy) -> tuple[int, ...]:
    """The global ids (replica_id_in_sync_group) of this process's replicas, in the order
    of their copies of a variable: (0,) without a strategy; under
    MultiWorkerMirroredStrategy the worker's place in the cluster times its devices, plus
    the device."""
    ids = strategy.experimental_distribute_values_from_function(
        lambda context: context.replica_id_in_sync_group)
    return tuple(int(replica) for replica in strategy.experimental_local_results(ids))


class EpochRandomness(keras.callbacks.Callback):
    """Starts each epoch's dropout and augmentation draws at `epoch_state` of the seed,
    the epoch and the replica. Keras does not save the seed states with the weights, so
    without this a resumed run would draw differently from an uninterrupted one; and
    every replica of a multi-worker training would draw the same masks (each its own copy
    of a mirrored state, set alike), regularising in lockstep.

    One instance for a model's whole training (both fits): it remembers the seeds the
    model was built with, as the states of replicas past the first no longer hold them."""

    def __init__(self) -> None:
        super().__init__()
        self._seeds: dict[str, int] = {}

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        strategy = self.model.distribute_strategy
        replicas = local_replicas(strategy)
        for state in self.model.variables:
            if state.path.endswith("seed_generator_state"):  # [seed, counter]
                seed = self._seeds.setdefault(state.path, int(np.asarray(state)[0]))
                # A mirrored state's copies are set one by one: in a step each replica
                # draws from, and advances, its own copy (aggregation "none").
                copies = strategy.experimental_local_results(state.value)
                for copy, replica in zip(copies, replicas, strict=True):
                    copy.assign(epoch_state(seed, epoch, replica).astype(state.dtype))


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and ask TensorFlow for deterministic ops."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
