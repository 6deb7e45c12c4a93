"""stages/export.py's refusals, each one line before the model loads (the formats
themselves are checked on real photos in tests/slow/test_export.py, with the extra they
need)."""

from __future__ import annotations

from tests.support.commands import assert_stage_error, call_stage
from tests.support.projects import write_params


def test_an_unknown_or_repeated_format_is_refused_by_name(tmp_path):
    for formats, hint in [(["onnx", "coreml"], "coreml"), (["litert", "litert"], "litert")]:
        write_params(tmp_path, export_formats=formats)
        assert_stage_error(call_stage("export", tmp_path), "export_formats", hint,
                           "tf_saved_model, litert, onnx")


def test_no_model_is_refused_with_the_command_that_makes_it(tmp_path):
    write_params(tmp_path)
    assert_stage_error(call_stage("export", tmp_path), "models/model.keras not found",
                       "dvc repro train")
