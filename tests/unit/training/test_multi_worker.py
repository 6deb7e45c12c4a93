"""finetune.training.multi_worker: TF_CONFIG read and checked (read_tf_config, one line
per mistake; who is the chief), the training batch shares (share) and the validation
shares (evaluation_batches, evaluation_share). The two-worker runs themselves:
tests/scale/test_multi_worker_training.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from finetune.core.errors import StageError
from finetune.training.multi_worker import (
    evaluation_batches,
    evaluation_share,
    read_tf_config,
    share,
)
from tests.support.tf_config import TWO, tf_config


@pytest.mark.parametrize(("config", "message"), [
    ("", "strategy multi_worker needs TF_CONFIG"),
    ("{not json", "TF_CONFIG is not valid JSON"),
    ("[]", "expected an object with a 'cluster' object"),
    (tf_config({"worker": "127.0.0.1:1"}, "worker", 0), "cluster['worker'] must be a list"),
    (tf_config({"worker": ["127.0.0.1"]}, "worker", 0), "'host:port' strings"),
    (tf_config({**TWO, "ps": ["127.0.0.1:3"]}, "worker", 0), "task type 'ps' is not supported"),
    (tf_config({**TWO, "chief": ["a:1", "b:2"]}, "chief", 0), "at most one chief"),
    (tf_config(TWO, "worker", 2), "task worker 2 is not in the cluster (2 worker address(es))"),
    (tf_config(TWO, "evaluator", 0), "'task' must be"),
    (json.dumps({"cluster": TWO}), "'task' must be"),
])
def test_bad_tf_config_is_one_line(config, message):
    with pytest.raises(StageError) as error:
        read_tf_config({"TF_CONFIG": config})
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("cluster", "task_type", "index", "chief"), [
    (TWO, "worker", 0, True),
    (TWO, "worker", 1, False),
    ({**TWO, "chief": ["127.0.0.1:3"]}, "chief", 0, True),
    ({**TWO, "chief": ["127.0.0.1:3"]}, "worker", 0, False),
])
def test_the_chief_is_the_chief_task_or_worker_0(cluster, task_type, index, chief):
    read = read_tf_config({"TF_CONFIG": tf_config(cluster, task_type, index)})
    assert read.is_chief == chief
    assert read.workers == sum(len(addresses) for addresses in cluster.values())


@pytest.mark.parametrize("size", [8, 7, 5, 3, 1])
@pytest.mark.parametrize("replicas", [2, 3, 4])
def test_shares_weighted_give_the_mean_over_the_whole_batch(size, replicas):
    """Keras's loss on a replica: sum(weight * loss) / share size, divided by the number of
    replicas; summed over replicas (the gradient all-reduce) it must be the batch's mean,
    each sample counted once, whether the batch splits evenly or not."""
    positions = np.random.default_rng(size).permutation(100)[:size]
    losses = np.random.default_rng(replicas).random(100)
    total, seen = 0.0, []
    for replica in range(replicas):
        mine, weights = share(positions, replicas, replica)
        assert len(mine) == -(-size // replicas)  # every replica the same shape, never empty
        total += np.sum(weights * losses[mine]) / len(mine) / replicas
        seen += list(mine[weights > 0])
    assert sorted(seen) == sorted(positions)
    assert total == pytest.approx(losses[positions].mean(), rel=1e-6)
    if size % replicas == 0:
        assert all((share(positions, replicas, r)[1] == 1).all() for r in range(replicas))


class Positions:
    """Batches of `size` samples: batch i holds positions i*size .. (i+1)*size - 1."""

    def __init__(self, count: int, size: int) -> None:
        self.count, self.size = count, size

    def positions(self, index: int) -> np.ndarray:
        return np.arange(index * self.size, min((index + 1) * self.size, self.count))


@pytest.mark.parametrize(("count", "replicas", "sizes"), [
    (9, 2, [[5, 4]]),  # the last batch (1) would leave a replica empty: joined
    (10, 2, [[4, 4], [1, 1]]),
    (17, 4, [[2, 2, 2, 2], [3, 2, 2, 2]]),
])
def test_validation_shares_are_never_empty_and_cover_every_sample(count, replicas, sizes):
    batches = evaluation_batches(Positions(count, 8), -(-count // 8), replicas)
    got = [[len(evaluation_share(batch, replicas, r)[0]) for r in range(replicas)]
           for batch in batches]
    assert got == sizes
    seen = [p for batch in batches for r in range(replicas) for p in
            evaluation_share(batch, replicas, r)[0]]
    assert sorted(seen) == list(range(count))


def test_fewer_validation_images_than_replicas_is_one_line():
    with pytest.raises(StageError, match="val_split: 1 validation images are fewer than the 2"):
        evaluation_batches(Positions(1, 8), 1, 2)
