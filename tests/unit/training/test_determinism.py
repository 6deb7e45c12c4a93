"""finetune.training.determinism: each replica's dropout and augmentation draws. Replica 0
draws as one process; the others each draw their own masks, a function of the seed, the
epoch, the step and the replica, so a resumed run draws as an uninterrupted one. The
two-worker runs: tests/scale/test_multi_worker_training.py."""

from __future__ import annotations

import json
import subprocess
import sys

from finetune.training import determinism
from tests.support.commands import stage_env
from tests.support.shared import ROOT


def test_replica_zero_keeps_the_seed_and_no_two_replicas_or_nearby_seeds_share_a_stream():
    assert determinism.replica_seed(42, 0) == 42  # one process draws as it always did
    assert determinism.epoch_state(42, 3).tolist() == [42, 3 << 20]
    # The words as TensorFlow's stateless ops see them (Keras reduces them modulo
    # SEED_MODULUS): distinct for every seed below 1000 and replica below 1000.
    words = {determinism.replica_seed(seed, replica) % determinism.SEED_MODULUS
             for seed in range(1000) for replica in range(1000)}
    assert len(words) == 1000 * 1000
    far = determinism.SEED_MODULUS - 1  # the last replica before the words could repeat
    assert (determinism.replica_seed(7, far) - determinism.replica_seed(7, 0)
            ) % determinism.SEED_MODULUS != 0


# Two replicas on two logical CPUs of one process (MirroredStrategy): their copies of a
# seed state are the mirrored variables MultiWorkerMirroredStrategy makes across workers.
# A process of its own: logical devices must be set before TensorFlow starts.
MASKS = """
import json
import tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
from finetune.training.determinism import EpochRandomness

def masks(strategy):
    \"\"\"Each step's dropout mask on each replica, two steps an epoch, epochs 3, 4, 3.\"\"\"
    with strategy.scope():
        model = keras.Sequential([keras.Input((256,)), keras.layers.Dropout(0.5, seed=42)])
    step = tf.function(lambda: strategy.run(lambda: model(tf.ones((1, 256)), training=True)))
    randomness = EpochRandomness()
    randomness.set_model(model)
    steps = []
    for epoch in (3, 4, 3):
        randomness.on_epoch_begin(epoch)
        for _ in range(2):
            steps.append([np.flatnonzero(np.asarray(output)).tolist()
                          for output in strategy.experimental_local_results(step())])
    return steps

print(json.dumps({"one process": masks(tf.distribute.get_strategy()),
                  "two replicas": masks(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))}))
"""


def test_replicas_draw_different_dropout_masks_and_replica_zero_draws_as_one_process():
    result = subprocess.run([sys.executable, "-c", MASKS], capture_output=True, text=True,
                            timeout=300, env=stage_env(PYTHONPATH=str(ROOT),
                                                       CUDA_VISIBLE_DEVICES=""))
    assert result.returncode == 0, result.stderr[-3000:]
    masks = json.loads(result.stdout.splitlines()[-1])
    one, two = masks["one process"], masks["two replicas"]
    assert [len(replicas) for replicas in two] == [2] * 6
    for step, (first, second) in enumerate(two):
        assert first != second, f"step {step}: both replicas drew the same dropout mask"
    assert [replicas[0] for replicas in two] == [replicas[0] for replicas in one]
    # Each step draws anew, each epoch from its own start, on every replica: epoch 3
    # drawn again (a resumed run) draws as the first time.
    assert two[0] != two[1] and two[0] != two[2]
    assert two[4:] == two[:2] and one[4:] == one[:2]
