"""stages/export.py's refusals, each one line before the model loads (the formats
themselves are checked on real photos in tests/slow/test_export.py, with the extra they
need)."""

from __future__ import annotations

from tests.support.commands import assert_stage_error, call_stage, stage_env
from tests.support.projects import write_params
from tests.support.shared import ROOT


def test_an_unknown_or_repeated_format_is_refused_by_name(tmp_path):
    for formats, hint in [(["onnx", "coreml"], "coreml"), (["litert", "litert"], "litert")]:
        write_params(tmp_path, export_formats=formats)
        assert_stage_error(call_stage("export", tmp_path), "export_formats", hint,
                           "tf_saved_model, litert, onnx")


def test_no_model_is_refused_with_the_command_that_makes_it(tmp_path):
    write_params(tmp_path, export_formats=["litert"])
    assert_stage_error(call_stage("export", tmp_path), "models/model.keras not found",
                       "dvc repro train")


def test_by_default_nothing_is_exported_and_tensorflow_is_not_loaded(tmp_path):
    """export_formats: [] (params.yaml's): an empty models/export at once, no model read
    (there is none here) and no TensorFlow started, so experiments do not pay for it."""
    import json
    import subprocess
    import sys

    write_params(tmp_path)
    probe = ("import runpy, sys; sys.argv = ['export']; "
             "runpy.run_module('stages.export', run_name='__main__', alter_sys=True)")
    done = subprocess.run([sys.executable, "-c", probe + "\nimport sys; "
                           "print('tensorflow' in sys.modules)"],
                          cwd=tmp_path, env=stage_env(PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert [path.name for path in (tmp_path / "models/export").iterdir()] == ["formats.json"]
    assert json.loads((tmp_path / "models/export/formats.json").read_text()) == {"formats": []}
    assert "export: nothing to export (export_formats: [])" in done.stderr
