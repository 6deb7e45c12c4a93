"""finetune.core.runtime: a mixed precision on a CPU without units for it is named as slow,
once per process."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.core import runtime
from finetune.core.runtime import cpu_flags, slow_precision

BF16_UNITS = {"avx512_bf16", "amx_bf16"}


def test_the_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\n"
                       "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") is None
    (tmp_path / "flagless").write_text("processor\t: 0\n")
    assert cpu_flags(tmp_path / "flagless") is None


@pytest.mark.parametrize(("precision", "flags", "gpu", "slow"), [
    ("mixed_bfloat16", {"avx2", "avx512f"}, False, True),   # no bfloat16 unit
    ("mixed_bfloat16", {"avx2", "amx_bf16"}, False, False),
    ("mixed_bfloat16", {"avx512_bf16"}, False, False),
    ("mixed_bfloat16", {"avx2"}, True, False),              # a GPU computes it
    ("mixed_bfloat16", None, False, False),                 # flags unknown: no claim
    ("mixed_float16", {"avx512_bf16"}, False, True),        # bfloat16 units are not float16's
    ("mixed_float16", {"avx512_fp16"}, False, False),
    ("float32", {"avx2"}, False, False),
])
def test_a_mixed_precision_without_its_units_is_slow(precision, flags, gpu, slow) -> None:
    message = slow_precision(precision, flags, gpu)
    assert (message is not None) == slow
    if slow:
        assert message.startswith(f"precision: {precision} on a CPU without units for it (")
        assert "slower than float32" in message


def test_the_stage_says_it_once(capsys, monkeypatch) -> None:
    """configure (each stage calls it, features twice) warns once per process, where this
    CPU lacks bfloat16 units, and says nothing where it has them."""
    import keras

    monkeypatch.setattr(runtime, "_SAID", set())
    params = {"threads": 0, "precision": "mixed_bfloat16"}
    try:
        runtime.configure(params)
        runtime.configure(params)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    flags = cpu_flags()
    has_units = flags is None or bool(flags & BF16_UNITS)
    import tensorflow as tf

    expected = 0 if has_units or tf.config.list_physical_devices("GPU") else 1
    assert capsys.readouterr().err.count("warning: precision: mixed_bfloat16") == expected
