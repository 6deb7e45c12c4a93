"""TensorFlow's start-up log lines, kept off stderr unless the import fails.

Importing TensorFlow prints a page of lines (oneDNN notices, "Could not find cuda
drivers", "failed call to cuInit") that TF_CPP_MIN_LOG_LEVEL does not silence: they are
written before TensorFlow's logging is configured. A stage that fails on bad input must
print one `error:` line, so `install` makes the first import of TensorFlow run with file
descriptor 2 (which the C++ side writes to) sent to a buffer, shown only if the import
fails. Set TF_CPP_MIN_LOG_LEVEL=0 to see those lines.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import tempfile
from types import ModuleType


class _QuietLoader(importlib.abc.Loader):
    """Runs TensorFlow's own loader with file descriptor 2 sent to a temporary file."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as log:
            os.dup2(log.fileno(), 2)
            try:
                self.loader.exec_module(module)
                # Looking for devices is what logs the CUDA lines: do it now, quietly.
                module.config.list_physical_devices()
            except BaseException:
                os.dup2(saved, 2)
                log.seek(0)
                sys.stderr.write(log.read().decode(errors="replace"))
                raise
            finally:
                os.dup2(saved, 2)
                os.close(saved)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object, target: object = None) -> object:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once, and so that find_spec below finds the real one
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install() -> None:
    """Make the first import of TensorFlow quiet (once; not if it is imported already)."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0" or "tensorflow" in sys.modules:
        return
    if any(isinstance(finder, _QuietTensorFlowFinder) for finder in sys.meta_path):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's later C++ log lines
    sys.meta_path.insert(0, _QuietTensorFlowFinder())
