"""The batches `fit` reads, each a function of its index alone: shuffled training
batches whose order depends on (seed, epoch) only, and validation batches in order."""

from __future__ import annotations

from typing import Protocol

import keras
import numpy as np


class Rows(Protocol):
    """What batches are read from: `inputs[rows]` gives those rows as an array (decoded
    pixels in memory, or activations read from disk by finetune.features.store.FeatureFile)."""

    def __getitem__(self, rows: np.ndarray) -> np.ndarray: ...


class RowBatches(keras.utils.PyDataset):
    """Batches of `inputs[rows]`, labelled `labels` (one per row): batch i is
    `take(positions(i))`, a subclass saying which samples make each batch."""

    def __init__(self, inputs: Rows, rows: np.ndarray, labels: np.ndarray,
                 batch_size: int) -> None:
        super().__init__()  # one worker, no processes: batches are made in order
        self.inputs, self.rows, self.labels = inputs, np.asarray(rows), labels
        self.batch_size = batch_size

    def positions(self, index: int) -> np.ndarray:
        """Which samples (positions in `rows`) make batch `index`, in order."""
        raise NotImplementedError

    def take(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The inputs and labels of these samples: a batch, or a worker's share of one."""
        return np.asarray(self.inputs[self.rows[positions]], np.float32), self.labels[positions]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.take(self.positions(index))


class EpochBatches(RowBatches):
    """Shuffled training batches of epochs `first_epoch`, `first_epoch` + 1, ... as one
    endless stream, each epoch's order a function of (seed, epoch) alone.

    Batch i is batch i % steps of epoch first_epoch + i // steps. Given to `fit` with
    `steps_per_epoch=steps`, it is read through one iterator across epochs, so the
    read-ahead cannot mix epochs up, and a run resumed at epoch k sees exactly the
    batches an uninterrupted run saw there. The samples are `inputs[rows]`, labelled
    `labels` (one per row).
    """

    def __init__(self, inputs: Rows, rows: np.ndarray, labels: np.ndarray, batch_size: int,
                 seed: int) -> None:
        super().__init__(inputs, rows, labels, batch_size)
        self.seed = seed
        self.steps = -(-len(self.rows) // batch_size)
        self.first_epoch = 0
        # (epoch, its order), one attribute: under multi_worker two tf.data threads may
        # read batches at once (an abandoned iterator still prefetching), and a pair of
        # attributes could then be seen half updated.
        self._order: tuple[int, np.ndarray] = (-1, np.arange(len(self.rows)))

    @property
    def num_batches(self) -> None:
        return None  # endless: fit's steps_per_epoch marks the epochs

    def positions(self, index: int) -> np.ndarray:
        epoch, step = divmod(index, self.steps)
        epoch += self.first_epoch
        order_epoch, order = self._order
        if epoch != order_epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
            self._order = (epoch, order)
        return order[step * self.batch_size:(step + 1) * self.batch_size]


class Batches(RowBatches):
    """`inputs[rows]` and their labels in order, `batch_size` at a time (validation)."""

    @property
    def num_batches(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def positions(self, index: int) -> np.ndarray:
        return np.arange(index * self.batch_size, min((index + 1) * self.batch_size,
                                                      len(self.rows)))
