"""How this process computes: TensorFlow's thread pools and Keras's float precision.

Each stage that runs the network calls `configure` first, before TensorFlow runs an op
(thread pools cannot change once it has). `threads` is an execution setting, tracked by
no stage: two queued experiments (`dvc queue start -j 2`) on a 4-core machine each get
`threads: 2` instead of both taking all 4 cores. `precision` changes the results, so the
stages that compute with the network track it. A mixed policy is fast on a CPU only where
it has units for the 16-bit type; elsewhere TensorFlow emulates it, slower than float32,
and the stage says so once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from finetune.core.errors import StageError

# The CPU flags (Linux's /proc/cpuinfo names) of units that compute a mixed policy's
# 16-bit type: AVX512-BF16 and AMX for bfloat16 (current Xeons), AVX512-FP16 and AMX-FP16
# for float16 (rarer still).
CPU_UNITS = {"mixed_bfloat16": ("avx512_bf16", "amx_bf16"),
             "mixed_float16": ("avx512_fp16", "amx_fp16")}
CPUINFO = Path("/proc/cpuinfo")
_SAID: set[str] = set()  # the warnings this process has printed


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str] | None:
    """The CPU's feature flags, or None where they cannot be read (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


def slow_precision(precision: str, flags: set[str] | None, gpu: bool) -> str | None:
    """Why `precision` will be slower than float32 here, or None: a mixed policy on a CPU
    without units for its 16-bit type (unknown flags: no claim)."""
    units = CPU_UNITS.get(precision)
    if gpu or units is None or flags is None or flags & set(units):
        return None
    return (f"precision: {precision} on a CPU without units for it ({' or '.join(units)}): "
            "TensorFlow emulates it, slower than float32 (docs/performance.md)")


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
    slow = slow_precision(params["precision"], cpu_flags(),
                          gpu=bool(tf.config.list_physical_devices("GPU")))
    if slow and slow not in _SAID:
        _SAID.add(slow)
        print(f"warning: {slow}", file=sys.stderr)
