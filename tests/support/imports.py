"""What the project's code imports, read statically (imports inside functions included,
those for type hints only left out): the facts behind dvc.yaml's module deps and the
package's layers."""

from __future__ import annotations

import ast
import functools
from pathlib import PurePosixPath

from tests.support.shared import ROOT

PACKAGES = ("finetune", "stages")


def module_file(name: str) -> str:
    """"finetune.model.saved" -> "finetune/model/saved.py"; a package -> its __init__.py."""
    parts = name.split(".")
    if (ROOT.joinpath(*parts) / "__init__.py").is_file():
        return "/".join([*parts, "__init__.py"])
    return "/".join(parts) + ".py"


def is_project(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """The nodes under `if TYPE_CHECKING:`: imports for type hints, never run."""
    skipped: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for statement in node.body:
                skipped.update(ast.walk(statement))
    return skipped


@functools.cache  # the files do not change during a test run
def imported_modules(file: str) -> frozenset[str]:
    """Project modules `file` imports anywhere in it (not for type hints only), as files,
    with the __init__.py of each package on the way (Python runs them first)."""
    found: set[str] = set()
    tree = ast.parse((ROOT / file).read_text(), file)
    skipped = type_checking_only(tree)
    for node in ast.walk(tree):
        if node in skipped:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from finetune.model import layers` imports finetune.model.layers too
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for name in filter(is_project, names):
            parts = name.split(".")
            for end in range(1, len(parts) + 1):
                module = module_file(".".join(parts[:end]))
                if (ROOT / module).is_file():
                    found.add(module)
    return frozenset(found - {file})


def packages_of(file: str) -> set[str]:
    """The __init__.py of each package above `file`: `python -m stages.train` runs
    stages/__init__.py first."""
    parts = PurePosixPath(file).parent.parts
    return {module_file(".".join(parts[:end])) for end in range(1, len(parts) + 1)}


def project_files() -> list[str]:
    """Every module of the project's packages, as a path from the project root."""
    return sorted(path.relative_to(ROOT).as_posix() for package in PACKAGES
                  for path in (ROOT / package).rglob("*.py"))
