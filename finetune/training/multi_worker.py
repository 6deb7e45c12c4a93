"""Training on several machines: `strategy: multi_worker`.

tf.distribute.MultiWorkerMirroredStrategy, configured the standard way: every process
reads its place in the cluster from the TF_CONFIG environment variable. Every worker
holds a copy of the weights; each step, worker i takes its share of the global batch
(`batch_size`), and the gradients are summed across workers, so the step is the one a
single process takes on the whole batch.

Keras 3.15.1's `fit` does not run under this strategy as shipped: see
finetune.training.keras_workarounds.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from finetune.core.errors import StageError

if TYPE_CHECKING:  # TensorFlow is imported only once a multi-worker training starts
    from finetune.training.batches import RowBatches

TF_CONFIG = "TF_CONFIG"
# Task types that take part in training under MultiWorkerMirroredStrategy.
TRAINING_TASKS = ("chief", "worker")


@dataclass(frozen=True)
class WorkerRole:
    """This process's place in the cluster, from TF_CONFIG."""

    task_type: str  # "chief" or "worker"
    index: int
    workers: int  # processes training, the chief included
    has_chief: bool

    @property
    def is_chief(self) -> bool:
        """The one process that writes outputs: the "chief" task, or worker 0 without one."""
        return self.task_type == "chief" or (self.index == 0 and not self.has_chief)


def _addresses(cluster: dict, task_type: str) -> list[str]:
    addresses = cluster.get(task_type, [])
    if not isinstance(addresses, list) or not all(
            isinstance(address, str) and address.rpartition(":")[2].isdigit()
            for address in addresses):
        raise StageError(f"TF_CONFIG: cluster['{task_type}'] must be a list of 'host:port' "
                         f"strings, got {addresses!r}")
    return addresses


def read_tf_config(environ: dict[str, str] | None = None) -> WorkerRole:
    """Parse and check TF_CONFIG, before TensorFlow reads it (its own errors are tracebacks)."""
    raw = (os.environ if environ is None else environ).get(TF_CONFIG, "")
    if not raw.strip():
        raise StageError("strategy multi_worker needs TF_CONFIG, e.g. TF_CONFIG='{\"cluster\": "
                         "{\"worker\": [\"host1:12345\", \"host2:12345\"]}, \"task\": "
                         "{\"type\": \"worker\", \"index\": 0}}' (see docs/scaling-out.md)")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise StageError(f"TF_CONFIG is not valid JSON: {error}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise StageError("TF_CONFIG: expected an object with a 'cluster' object and a 'task'")
    cluster, task = config["cluster"], config.get("task")
    other = sorted(set(cluster) - set(TRAINING_TASKS))
    if other:
        # ParameterServerStrategy and the side evaluator: unsupported in Keras 3
        # (keras-team/keras#18624).
        raise StageError(f"TF_CONFIG: task type '{other[0]}' is not supported; "
                         "multi_worker takes 'chief' and 'worker' tasks only")
    chiefs, workers = _addresses(cluster, "chief"), _addresses(cluster, "worker")
    if len(chiefs) > 1:
        raise StageError(f"TF_CONFIG: at most one chief, got {len(chiefs)}")
    if not isinstance(task, dict) or task.get("type") not in TRAINING_TASKS or not isinstance(
            task.get("index"), int) or isinstance(task.get("index"), bool):
        raise StageError(f"TF_CONFIG: 'task' must be {{\"type\": \"chief\" or \"worker\", "
                         f"\"index\": N}}, got {task!r}")
    members = chiefs if task["type"] == "chief" else workers
    if not 0 <= task["index"] < len(members):
        raise StageError(f"TF_CONFIG: task {task['type']} {task['index']} is not in the "
                         f"cluster ({len(members)} {task['type']} address(es))")
    return WorkerRole(task["type"], task["index"], len(chiefs) + len(workers), bool(chiefs))


def check_batch_split(batch_size: int, replicas: int, what: str = "workers") -> None:
    """`batch_size` is the global batch: each replica takes an equal share of it."""
    if batch_size % replicas:
        raise StageError(f"batch_size: {batch_size} does not split evenly across {replicas} "
                         f"{what}; use a multiple of {replicas}")


def make_strategy(batch_size: int) -> Any:
    """The strategy, made before TensorFlow runs any op (collectives are configured then).
    It waits for every worker of the cluster to start."""
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    # Workers with several GPUs hold a replica on each.
    check_batch_split(batch_size, strategy.num_replicas_in_sync, "replicas (all workers' devices)")
    return strategy


def check_same_training(strategy: Any, identity: Any) -> None:
    """Fail on every worker if the workers were not given the same training (params,
    classes, number of samples): each would apply its own settings to the summed
    gradients, and the model would silently be none of them."""
    import tensorflow as tf

    # 20 bits of a digest: its square and the sums below stay exact in float64.
    mine = float(int(hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
                     .hexdigest()[:5], 16))

    @tf.function  # eager collectives work too, with a warning about their overhead
    def spread() -> tf.Tensor:
        value = tf.constant(mine, tf.float64)
        mean = strategy.reduce("MEAN", strategy.run(lambda: value), axis=None)
        return strategy.reduce("SUM", strategy.run(lambda: tf.square(value - mean)), axis=None)

    if float(spread()) != 0:
        raise StageError("the workers were not given the same training: check that every "
                         "machine has the same commit, params.yaml and `dvc pull`ed data")


# --- each replica's share of each global batch --------------------------------------

# (batch positions, replicas, replica) -> that replica's positions and sample weights
Split = Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]


def share(positions: np.ndarray, replicas: int, replica: int) -> tuple[np.ndarray, np.ndarray]:
    """Replica `replica`'s samples of a global training batch, and their sample weights.

    Each replica takes ceil(b / replicas) consecutive samples of the batch of b, padded
    with repeats of the batch's first sample at weight 0 where the batch runs out (a last,
    partial batch), so no replica gets an empty batch. Keras averages each replica's loss
    over its share and divides by the number of replicas; weighting each real sample by
    replicas * share / b makes the summed gradient the mean over the b samples exactly,
    as one process computes it. A full batch gets weight 1 throughout."""
    size = len(positions)
    per_replica = math.ceil(size / replicas)
    mine = positions[replica * per_replica:(replica + 1) * per_replica]
    padding = per_replica - len(mine)
    weights = np.full(per_replica, replicas * per_replica / size, np.float32)
    weights[len(mine):] = 0
    return np.concatenate([mine, np.repeat(positions[:1], padding)]), weights


def evaluation_share(positions: np.ndarray, replicas: int,
                     replica: int) -> tuple[np.ndarray, np.ndarray]:
    """Replica `replica`'s samples of a validation batch, at weight 1, unpadded (shares
    differ by one sample at most): Keras sums the validation metrics' totals and counts
    across replicas, so the validation loss and accuracy are those of one process."""
    mine = np.array_split(positions, replicas)[replica]
    return mine, np.ones(len(mine), np.float32)


def evaluation_batches(batches: RowBatches, steps: int, replicas: int) -> list[np.ndarray]:
    """The `steps` validation batches' positions, a last batch smaller than `replicas`
    joined to the one before: no replica may get an empty batch (BatchNormalization fails
    on one), and the validation loss and accuracy, means over every sample, do not depend
    on the batching."""
    positions = [batches.positions(index) for index in range(steps)]
    if len(positions) > 1 and len(positions[-1]) < replicas:
        positions[-2:] = [np.concatenate(positions[-2:])]
    if len(positions[-1]) < replicas:
        raise StageError(f"val_split: {len(positions[-1])} validation images are fewer than "
                         f"the {replicas} replicas training; raise val_split or use fewer "
                         "workers")
    return positions


def shares(batches: RowBatches, batch_positions: Iterator[np.ndarray], split: Split,
           replicas: int, first_replica: int, local_replicas: int) -> Iterator[tuple]:
    """(inputs, labels, weights) of this worker's replicas, batch after batch: one element
    per local replica, in order, as the strategy hands them out (a worker with several
    GPUs has several local replicas; the tests run one per worker)."""
    for positions in batch_positions:
        for replica in range(first_replica, first_replica + local_replicas):
            mine, weights = split(positions, replicas, replica)
            inputs, labels = batches.take(mine)
            yield inputs, labels, weights


def distribute(strategy: Any, batches: RowBatches, steps: int | None) -> Any:
    """A dataset of `batches` that gives each replica its share of each batch and reads
    only that share: training batches (endless, as EpochBatches is: `steps` None), or
    `steps` validation batches."""
    import tensorflow as tf

    sample, labels = batches.take(batches.positions(0)[:1])
    signature = (tf.TensorSpec((None, *sample.shape[1:]), tf.float32),
                 tf.TensorSpec((None, *labels.shape[1:]), tf.as_dtype(labels.dtype)),
                 tf.TensorSpec((None,), tf.float32))
    training = steps is None
    validation = [] if training else evaluation_batches(batches, steps,
                                                        strategy.num_replicas_in_sync)

    def worker_dataset(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local = context.num_replicas_in_sync // context.num_input_pipelines
        dataset = tf.data.Dataset.from_generator(
            lambda: shares(batches,
                           map(batches.positions, itertools.count()) if training
                           else iter(validation),
                           share if training else evaluation_share,
                           context.num_replicas_in_sync, context.input_pipeline_id * local,
                           local),
            output_signature=signature)
        # A known length: Keras then starts each evaluation on a fresh iterator (with
        # `validation_steps` it would reuse the exhausted one, and stop).
        return dataset if training else dataset.apply(
            tf.data.experimental.assert_cardinality(len(validation) * local))

    return strategy.distribute_datasets_from_function(worker_dataset)
