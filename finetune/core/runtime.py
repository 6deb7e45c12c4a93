"""How this process computes: TensorFlow's thread pools and Keras's float precision.

Each stage that runs the network calls `configure` first, before TensorFlow runs an op
(thread pools cannot change once it has). `threads` is an execution setting, tracked by
no stage: two queued experiments (`dvc queue start -j 2`) on a 4-core machine each get
`threads: 2` instead of both taking all 4 cores. `precision` changes the results, so the
stages that compute with the network track it.
"""

from __future__ import annotations

from typing import Any

from finetune.core.errors import StageError


def configure(params: dict[str, Any]) -> None:
    """Apply `threads` (0 = TensorFlow's default, all cores) and `precision`."""
    import keras
    import tensorflow as tf

    threading = tf.config.threading
    # Set already (a stage that configures before its checks, then runs the network): keep.
    if params["threads"] and (threading.get_intra_op_parallelism_threads(),
                              threading.get_inter_op_parallelism_threads()) != (
                                  params["threads"], params["threads"]):
        try:
            tf.config.threading.set_intra_op_parallelism_threads(params["threads"])
            tf.config.threading.set_inter_op_parallelism_threads(params["threads"])
        except RuntimeError as error:  # the caller ran an op first: a bug, not bad input
            raise StageError(f"threads: {error}") from None
    # float32, or a mixed policy: float16 (bfloat16) compute, float32 variables; the output
    # layers are float32 whatever the policy (finetune.model.layers), as the Keras guide says.
    keras.mixed_precision.set_global_policy(params["precision"])
