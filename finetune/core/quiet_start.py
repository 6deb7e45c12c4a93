"""TensorFlow's C++ log lines, kept off stderr where they are expected noise: at start-up,
and (`filtered_stderr`) the lines its image decoders print about a bad image.

Importing TensorFlow prints a page of lines (oneDNN notices, "Could not find cuda
drivers", "failed call to cuInit") that TF_CPP_MIN_LOG_LEVEL does not silence: they are
written before TensorFlow's logging is configured. A stage that fails on bad input must
print one `error:` line, so `install` makes the first import of TensorFlow run with file
descriptor 2 (which the C++ side writes to) sent to a buffer, shown only if the import
fails. Set TF_CPP_MIN_LOG_LEVEL=0 to see those lines, and everything `filtered_stderr`
would drop.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
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


class _StderrFilter:
    """File descriptor 2 sent to a temporary file while any thread is inside
    `filtered_stderr`; the lines written there shown on the real one, less the noise."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.noise: list[re.Pattern[str]] = []  # one per block inside: what it drops
        self.log: int | None = None  # the temporary file, kept for the process's life
        self.saved = -1  # the real fd 2 while redirected, else -1
        self.shown = 0  # bytes of the log already handled

    def enter(self, noise: re.Pattern[str]) -> None:
        with self.lock:
            if not self.noise:
                self._redirect()
            self.noise.append(noise)

    def exit(self, noise: re.Pattern[str]) -> None:
        with self.lock:
            last = len(self.noise) == 1
            if last and self.saved >= 0:
                _flush_python_stderr()  # its pending lines go in the log, in their place
                os.dup2(self.saved, 2)
            self._show(everything=last)
            self.noise.remove(noise)
            if last and self.saved >= 0:
                os.close(self.saved)
                self.saved = -1
                assert self.log is not None
                os.ftruncate(self.log, 0)  # fd 2 no longer writes to it: start it afresh
                os.lseek(self.log, 0, os.SEEK_SET)
                self.shown = 0

    def show(self) -> None:
        with self.lock:
            self._show(everything=False)

    def _redirect(self) -> None:
        if self.log is None:
            with tempfile.TemporaryFile() as log:  # already unlinked: the copy keeps it
                self.log = os.dup(log.fileno())
        _flush_python_stderr()  # what was written before the block goes out first
        try:
            self.saved = os.dup(2)
        except OSError:  # no fd 2 at all: nothing to filter
            return
        os.dup2(self.log, 2)

    def _show(self, everything: bool) -> None:
        """Write the log's new lines but the noise to the real fd 2; a line still being
        written waits, unless `everything`."""
        if self.saved < 0 or self.log is None:
            return
        new = os.fstat(self.log).st_size - self.shown
        if new <= 0:
            return
        data = os.pread(self.log, new, self.shown)
        if not everything:
            data = data[:data.rfind(b"\n") + 1]
        self.shown += len(data)
        kept = b"".join(line for line in data.splitlines(keepends=True)
                        if not any(noise.match(line.decode(errors="replace"))
                                   for noise in self.noise))
        with contextlib.suppress(OSError):  # stderr closed: nowhere to say anything
            while kept:
                kept = kept[os.write(self.saved, kept):]


def _flush_python_stderr() -> None:
    if sys.stderr is not None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()


_FILTER = _StderrFilter()


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern[str]) -> Iterator[Callable[[], None]]:
    """Run the block with file descriptor 2, where TensorFlow's C++ code and the C libraries
    under it write, sent to a temporary file: the lines that `noise` matches (from their
    start) are dropped, the others written to stderr in their order when the block ends,
    or earlier by calling the function it yields. Python's own stderr goes the same way,
    so its lines keep their place among them.

    Process-wide, since fd 2 is: threads may be inside at once, each with its noise (a
    line is dropped if any of theirs matches), and fd 2 is the real one again when the
    last leaves; each leaving shows the whole lines written so far. What a crash inside the
    block writes just before it is lost with the process, so keep blocks short or call
    the yielded function often. TF_CPP_MIN_LOG_LEVEL=0 (show TensorFlow's log) turns the
    filter off."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        yield lambda: None
        return
    _FILTER.enter(noise)
    try:
        yield _FILTER.show
    finally:
        _FILTER.exit(noise)
