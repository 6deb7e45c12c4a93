"""Keras 3.15.1 under MultiWorkerMirroredStrategy: its `fit` does not run there as shipped.

`keras_patched` works around the two bugs for the duration of a training only, each
linked to its upstream issue; `check_patched_sources` refuses a Keras whose patched
functions changed (the fix may be upstream, or the workaround may no longer fit).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

from finetune.core.errors import StageError


def _symbolic_build_on_local_batch(original: Callable) -> Callable:
    """keras-team/keras#20585 (also ray-project/ray#47464): `fit` builds the model's
    metrics and optimizer from a first batch, which it tries to reduce across replicas and
    then convert to a tensor; under MultiWorkerMirroredStrategy the batch stays a
    PerReplica value and the conversion fails ("Attempt to convert a value (PerReplica..."
    ). The build needs shapes only: build it from this replica's own batch instead."""
    import tensorflow as tf

    def _maybe_symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> None:
        if self._distribute_strategy is None or iterator is None:
            return original(self, iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            data_batch = tf.nest.map_structure(
                lambda value: (self.distribute_strategy.experimental_local_results(value)[0]
                               if isinstance(value, tf.distribute.DistributedValues)
                               else value),
                next(batches))
            break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    return _maybe_symbolic_build


def _mean_of_scalars(original: Callable) -> Callable:
    """tensorflow/tensorflow#72388: under MultiWorkerMirroredStrategy `fit` averages each
    step's logged metrics across workers with `strategy.reduce("MEAN", v, axis=0)`, which
    fails on scalars ("Invalid reduction dimension 0 for input with 0 dimensions"). Average
    the values themselves (axis=None) instead; other cases go to Keras's own code."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(
                strategy):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None),
                                         values)
        return original(values, strategy, reduction)

    return reduce_per_replica


def _patch_targets() -> dict[str, tuple[Any, str, Callable[[Callable], Callable]]]:
    """name -> (owner, attribute, workaround) of each function replaced."""
    from keras.src.backend.tensorflow import trainer

    return {
        "TensorFlowTrainer._maybe_symbolic_build":
            (trainer.TensorFlowTrainer, "_maybe_symbolic_build", _symbolic_build_on_local_batch),
        "reduce_per_replica": (trainer, "reduce_per_replica", _mean_of_scalars),
    }


# sha256 of inspect.getsource of each patched function in Keras 3.15.1: the workarounds were
# written, and tests/scale/test_multi_worker_training.py checked, against exactly this code
# (tests/unit/training/test_keras_workarounds.py holds Keras to these digests).
PATCHED_SOURCES = {
    "TensorFlowTrainer._maybe_symbolic_build":
        "92a504f5eba9b29f81f1bf26180bdd5bf5186b06b7bda426534b90d2d02bc1c2",
    "reduce_per_replica": "2e7d54b1e6edc29a8c6a7e6b66cd4c8be3ba7842412c93753ac3afe169fa7fb8",
}


def source_digest(function: Callable) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()


def check_patched_sources() -> None:
    """Fail if Keras changed a function the workarounds replace: the fix may be upstream
    now, or the workaround may no longer fit."""
    import keras

    for name, (owner, attribute, _) in _patch_targets().items():
        if source_digest(getattr(owner, attribute)) != PATCHED_SOURCES[name]:
            raise StageError(f"keras {keras.__version__} changed {name}, which "
                             "finetune/training/keras_workarounds.py patches for 3.15.1: "
                             "re-check the upstream issue named there, then update or drop "
                             "the patch and its recorded digest")


@contextlib.contextmanager
def keras_patched() -> Iterator[None]:
    """Keras's `fit` with the workarounds above, for the duration of the block only."""
    check_patched_sources()
    originals = {name: getattr(owner, attribute)
                 for name, (owner, attribute, _) in _patch_targets().items()}
    try:
        for name, (owner, attribute, workaround) in _patch_targets().items():
            setattr(owner, attribute, workaround(originals[name]))
        yield
    finally:
        for name, (owner, attribute, _) in _patch_targets().items():
            setattr(owner, attribute, originals[name])
