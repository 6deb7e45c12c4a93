"""dvc.yaml and the code agree, so that DVC's cache is right about what changed.

- Each stage's deps list every project module whose code can change its outputs: the
  modules its script imports, directly or through other modules, found by reading the
  code (a static scan, imports inside functions included), less the exemptions below.
  Otherwise an edit there reruns nothing and DVC keeps serving outputs the new code would
  not produce.
- Each path a stage reads or writes is a constant of finetune/core/paths.py, and the
  paths dvc.yaml declares are those constants.
"""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path, PurePosixPath

import pytest
import yaml

from finetune.core import paths
from tests.support.imports import (
    PACKAGES,
    imported_modules,
    module_file,
    packages_of,
    project_files,
)
from tests.support.shared import ROOT

PATHS_MODULE = "finetune.core.paths"

# Modules a stage imports that cannot change its outputs: dvc.yaml leaves them out of
# the stage's deps, so that editing them reruns nothing (above all, no download).
# The one list of exemptions, each with its reason.
EXEMPT_EVERYWHERE = {
    "stages/__init__.py": "the stage scripts' package: a docstring",
    "finetune/__init__.py": "makes TensorFlow's start quiet; computes nothing",
    "finetune/core/quiet_start.py": "silences TensorFlow's start-up log lines; computes nothing",
    "finetune/core/errors.py": "the StageError class: a failed stage leaves no output",
    "finetune/core/runner.py": "turns a failure into one `error:` line; a failed stage leaves "
                               "no output",
    "finetune/core/timings.py": "writes the benchmark's timestamps where FINETUNE_TIMINGS asks "
                                "(scripts/bench.py); computes nothing a stage outputs",
    "finetune/core/params.py": "reads and checks params.yaml; the values a stage uses are "
                               "tracked by DVC itself, under the stage's `params:`",
    "finetune/core/paths.py": "names the paths, which dvc.yaml declares too (tied by the tests "
                              "below): moving an output changes dvc.yaml, and so the stage; "
                              "`project_path` only finds the project a relative params path "
                              "is read from (a queued run's copy: the project it came from)",
    "finetune/core/progress.py": "prints progress lines on stderr; computes nothing",
    **{f"finetune/{package}/__init__.py": "a subpackage's docstring; computes nothing"
       for package in ("core", "dataset", "model", "sources", "features", "training",
                       "evaluation")},
}
EXEMPT_FOR_STAGE = {
    ("fetch_data", "finetune/model/backbone.py"):
        "checks backbone and layer names before the download, so a typo fails in seconds; "
        "the downloaded data does not depend on the model",
    ("fetch_weights", "finetune/model/backbone.py"):
        "checks backbone and layer names before the download, and names the backbone whose "
        "published file `weights_urls: keras` takes; the file is pinned by the params "
        "(backbone, alpha, image_size) and its checksum, not by the model code",
}
# Paths of finetune/core/paths.py that DVC does not track, and why.
UNTRACKED_PATHS = {
    paths.PARAMS_FILE: "DVC reads it itself, key by key, under each stage's `params:`",
    paths.DOWNLOAD_DIR: "scratch: the kaggle client resumes a broken download from it",
    paths.URL_DOWNLOAD_DIR: "scratch: a data_source URL's partial download, resumed by the "
                            "next run",
    paths.BACKUP_DIR: "scratch: a killed training resumes from it",
    paths.EXPS_DIR: "DVC's own: where a queued experiment runs its copy of the project",
    paths.DEMO_DIR: "another project: the offline demo's (scripts/demo.py), which predict "
                    "offers when this one has no model",
}


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def stage_script(stage: dict) -> str:
    match = re.fullmatch(r"python -m ([\w.]+)", stage["cmd"].strip())
    assert match, f"stage command is not `python -m <module>`: {stage['cmd']}"
    return module_file(match.group(1))


def required_modules(name: str, stage: dict) -> set[str]:
    """Every project module the stage's script reaches through imports, less exemptions
    (whose own imports are not followed: they are reached only through them)."""
    script = stage_script(stage)
    required, queue = {script}, [script]
    while queue:
        file = queue.pop()
        for module in imported_modules(file) | packages_of(file):
            exempt = module in EXEMPT_EVERYWHERE or (name, module) in EXEMPT_FOR_STAGE
            if not exempt and module not in required:
                required.add(module)
                queue.append(module)
    return required


def code_deps(stage: dict) -> set[str]:
    return {dep for dep in stage.get("deps", []) if dep.endswith(".py")}


def dependency_errors(stages: dict[str, dict]) -> list[str]:
    errors = []
    for name, stage in stages.items():
        required, declared = required_modules(name, stage), code_deps(stage)
        errors += [f"{name}: dvc.yaml misses dep {m}" for m in sorted(required - declared)]
        errors += [f"{name}: dvc.yaml lists {m}, which the stage does not import"
                   for m in sorted(declared - required)]
    return errors


def test_every_stage_depends_on_exactly_the_modules_it_imports():
    assert dependency_errors(dvc_stages()) == []


def test_removing_any_module_from_deps_is_caught():
    # The check above is not vacuous: each module dep it wants is really checked.
    stages = dvc_stages()
    checked = 0
    for name, stage in stages.items():
        for dep in sorted(code_deps(stage)):
            broken = copy.deepcopy(stages)
            broken[name]["deps"].remove(dep)
            assert f"{name}: dvc.yaml misses dep {dep}" in dependency_errors(broken)
            checked += 1
    assert checked >= 2 * len(stages)


def test_the_scan_follows_imports_inside_functions_and_through_modules():
    # fetch_data imports the backbone inside main() (exempt); split_classes reaches
    # dataset/screening.py directly and dataset/decode.py only inside its function;
    # submit reaches dataset/split.py only through features/store.py.
    assert "finetune/model/backbone.py" in imported_modules("stages/fetch_data.py")
    assert "finetune/dataset/screening.py" in imported_modules("stages/split_classes.py")
    assert "finetune/dataset/decode.py" in imported_modules("finetune/dataset/screening.py")
    assert "finetune/dataset/split.py" not in imported_modules("stages/submit.py")
    assert "finetune/dataset/split.py" in required_modules("submit", dvc_stages()["submit"])
    # `from package import module` is a module import
    assert "finetune/model/layers.py" in imported_modules("finetune/model/saved.py")
    # a type hint's import is not: the manifest's reader does not depend on the archive
    assert "finetune/dataset/classes.py" not in imported_modules("finetune/dataset/manifest.py")


def test_model_code_is_not_a_dependency_of_the_data_stages():
    # An edit of the network must not rerun split_classes, or download anything again.
    stages = dvc_stages()
    for name in ("fetch_data", "split_classes", "fetch_weights"):
        for dep in code_deps(stages[name]):
            assert not dep.startswith(("finetune/model/", "finetune/training/",
                                       "finetune/features/")), (name, dep)


def test_every_exemption_is_a_module_some_stage_imports():
    stages = dvc_stages()
    reached = set().union(*(imported_modules(file) | packages_of(file) for file in
                            {stage_script(stage) for stage in stages.values()}
                            | set(project_files())))
    for module in EXEMPT_EVERYWHERE:
        assert module in reached, f"stale exemption {module}"
    for name, module in EXEMPT_FOR_STAGE:
        assert module in imported_modules(stage_script(stages[name])), (name, module)


# --- paths ------------------------------------------------------------------------

def path_constants() -> dict[str, PurePosixPath]:
    return {name: PurePosixPath(value.as_posix()) for name, value in vars(paths).items()
            if isinstance(value, Path)}


def declared(stage: dict, kinds: tuple[str, ...] = ("deps", "outs", "metrics", "plots")
             ) -> set[PurePosixPath]:
    """Paths a stage declares (a metrics/plots entry may be a {path: options} mapping)."""
    found = set()
    for kind in kinds:
        for entry in stage.get(kind, []):
            for path in (entry if isinstance(entry, dict) else [entry]):
                if not path.endswith(".py"):
                    found.add(PurePosixPath(path))
    return found


def related(path: PurePosixPath, constant: PurePosixPath) -> bool:
    """The same path, or one inside the other (dvclive's files in its folder; the
    files of a declared folder)."""
    return path == constant or constant in path.parents or path in constant.parents


def covered(path: PurePosixPath, constants: set[PurePosixPath]) -> bool:
    return any(related(path, constant) for constant in constants)


def stage_path_constants(stage: dict) -> set[PurePosixPath]:
    """The constants of finetune/core/paths.py that the stage's code imports: its script
    and every project module it reaches."""
    modules, queue = {stage_script(stage)}, [stage_script(stage)]
    while queue:
        for module in imported_modules(queue.pop()) - modules:
            modules.add(module)
            queue.append(module)
    constants = path_constants()
    return {constants[alias.name] for module in modules
            for node in ast.walk(ast.parse((ROOT / module).read_text()))
            if isinstance(node, ast.ImportFrom) and node.module == PATHS_MODULE
            for alias in node.names if alias.name in constants}  # not project_path


@pytest.mark.parametrize("name", list(dvc_stages()))
def test_each_declared_path_is_a_constant_the_stage_uses(name):
    stage = dvc_stages()[name]
    constants = stage_path_constants(stage)
    for path in declared(stage):
        assert covered(path, constants), (
            f"{name}: dvc.yaml declares {path}, but stages/{name}.py imports no constant "
            f"of {PATHS_MODULE} for it")


def test_every_path_constant_is_declared_or_listed_as_untracked():
    everything = set().union(*(declared(stage) for stage in dvc_stages().values()))
    for name, constant in path_constants().items():
        if Path(constant) in UNTRACKED_PATHS:
            assert not covered(constant, everything), f"{name} is declared in dvc.yaml"
            continue
        assert covered(constant, everything), (
            f"{PATHS_MODULE}: {name} = {constant} is in no stage of dvc.yaml")


def test_no_module_spells_a_path_of_its_own():
    # One source of truth: a path literal elsewhere would drift from dvc.yaml.
    literal = re.compile(r"""["'](data|models|metrics)/""")
    for package in PACKAGES:
        for file in sorted((ROOT / package).rglob("*.py")):
            if file != ROOT / module_file(PATHS_MODULE):
                assert not literal.search(file.read_text()), f"{file} spells out a path"


def test_features_track_exactly_the_params_that_change_the_activations():
    # So `-S lr=`, `-S epochs=`, `-S seed=`... never recompute them; read_index refuses
    # features made with other values of these keys.
    from finetune.features.store import FEATURE_PARAMS

    assert set(dvc_stages()["features"]["params"]) == set(FEATURE_PARAMS)


# --- the model registry's entry (artifacts:) ----------------------------------------

def dvc_artifacts() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"]


def test_the_registered_model_is_the_model_train_writes():
    # `dvc artifacts get` fetches the artifact's path at the registered commit: it must be
    # the model file, a DVC output (a git-tracked path would come from git, not the remote).
    artifact, = dvc_artifacts().values()
    assert artifact["type"] == "model"
    assert PurePosixPath(artifact["path"]) == PurePosixPath(paths.MODEL_FILE.as_posix())
    assert PurePosixPath(artifact["path"]) in declared(dvc_stages()["train"], ("outs",))


def test_the_registry_accepts_the_names():
    # GTO's naming rule (its tags are NAME@vX.Y.Z and NAME#STAGE#N), which DVC checks too.
    from gto.constants import assert_name_is_valid

    (name, artifact), = dvc_artifacts().items()
    for value in (name, artifact["type"], *artifact["labels"]):
        assert_name_is_valid(value)


def test_the_description_names_only_params_that_train_tracks():
    # DVC fills ${key} from params.yaml; a key train does not track would describe a model
    # that the registered commit's params did not train (or fail to resolve at all).
    artifact, = dvc_artifacts().values()
    keys = set(re.findall(r"\$\{(\w+)\}", yaml.safe_dump(artifact)))
    assert {"backbone", "image_size"} <= keys  # the description says both
    assert keys <= set(dvc_stages()["train"]["params"]), keys

def test_export_reruns_when_the_model_changes_and_only_then():
    """`dvc exp run -S lr=...` reruns export (lr reaches it through models/model.keras, a
    dep); `-S clip=...` does not (submit's param, not export's); a param of its own picks
    the formats."""
    export = dvc_stages()["export"]
    assert "models/model.keras" in export["deps"]
    assert export["params"] == ["export_formats"]
    assert "models/model.keras" in dvc_stages()["train"]["outs"]
    assert "clip" in dvc_stages()["submit"]["params"]
