"""The package's shape, held by the code: layers with no upward arrows, stage scripts
that only call the library, light package __init__ files (docs/architecture.md)."""

from __future__ import annotations

import ast
from collections.abc import Callable

import pytest

from tests.support.imports import imported_modules, packages_of, project_files
from tests.support.shared import ROOT

# Each layer imports only from itself and the layers before it.
LAYERS = ("core", "dataset", "model", "sources", "features", "training", "evaluation",
          "predict")
STAGE_SCRIPT_LINES = 120


def layer(file: str) -> int:
    """finetune/model/saved.py -> the index of "model"; finetune/predict.py -> "predict";
    finetune/__init__.py belongs with core (it installs core's quiet start)."""
    parts = file.removesuffix(".py").split("/")
    if parts[:2] == ["finetune", "__init__"]:
        return LAYERS.index("core")
    return LAYERS.index(parts[1])


def library_files() -> list[str]:
    return [file for file in project_files() if file.startswith("finetune/")]


def stage_scripts() -> list[str]:
    return [file for file in project_files()
            if file.startswith("stages/") and not file.endswith("__init__.py")]


def upward_imports(files: list[str], imports: Callable[[str], set[str]] = imported_modules
                   ) -> list[str]:
    return [f"{file} imports {module}" for file in files
            for module in sorted(imports(file))
            if module.startswith("finetune/") and layer(module) > layer(file)]


def test_every_library_module_belongs_to_a_layer():
    for file in library_files():
        assert 0 <= layer(file) < len(LAYERS), file


def test_no_module_imports_from_a_layer_above_its_own():
    assert upward_imports(library_files()) == []


def test_an_upward_import_is_caught():
    # The check above is not vacuous: the model importing training would be reported.
    file = "finetune/model/saved.py"
    imports = {file: imported_modules(file) | {"finetune/training/fit.py"}}
    assert upward_imports([file], imports.__getitem__) == [
        "finetune/model/saved.py imports finetune/training/fit.py"]


def test_the_library_never_imports_a_stage_script():
    for file in library_files():
        assert not any(module.startswith("stages/") for module in imported_modules(file)), file


@pytest.mark.parametrize("script", stage_scripts())
def test_a_stage_script_is_short_defines_no_class_and_imports_no_other_stage(script):
    source = (ROOT / script).read_text()
    assert len(source.splitlines()) <= STAGE_SCRIPT_LINES, script
    tree = ast.parse(source)
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)], script
    assert {node.name for node in tree.body if isinstance(node, ast.FunctionDef)} == {"main"}
    others = {module for module in imported_modules(script) | packages_of(script)
              if module.startswith("stages/")}
    assert others <= {"stages/__init__.py"}, others


def test_there_is_a_script_for_every_stage_of_dvc_yaml_and_no_other():
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert {f"stages/{name}.py" for name in stages} == set(stage_scripts())


def test_package_init_files_import_nothing_heavy():
    # The quiet start and the fail-before-TensorFlow paths rely on it: importing any
    # subpackage runs its __init__.py.
    for file in project_files():
        if file.endswith("__init__.py"):
            modules = imported_modules(file)
            assert modules <= {"finetune/core/__init__.py", "finetune/core/quiet_start.py"}, (
                file, modules)
