"""Writing outputs safely: DVC caches whatever a stage leaves at a declared path.

So outputs are written to a temporary sibling and renamed into place only once they are
complete (`atomic_output`): a crash leaves the old output or none, never a partial one
that DVC would cache as good.

A process killed mid-write (SIGKILL: out of memory, a CI timeout) cannot remove its
sibling, `.NAME.XXXXXXXX.partEXT`, and at full size the features' one holds gigabytes. So
each writer holds an exclusive `flock` on a lock file beside it,
`.NAME.EXT.XXXXXXXX.part-lock`, for as long as it writes; the kernel drops the lock when
the process dies, however it dies. The next `atomic_output` of the same output removes
every sibling whose lock it can take (its writer is dead) and leaves those whose lock is
held (a live writer: another run, another experiment in the same folder).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# tempfile's random part: 8 characters of [a-z0-9_].
_RANDOM = "([a-z0-9_]{8})"


def _scratch(final: Path, random: str) -> Path:
    # Keep the extension: some writers insist on it (Keras wants ".keras").
    return final.with_name(f".{final.stem}.{random}.part{final.suffix}")


def _lock(final: Path, random: str) -> Path:
    return final.with_name(f".{final.name}.{random}.part-lock")


@contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it to `final` only if the block succeeds.

    The temporary path sits in the same folder, so the rename is atomic and a
    crash leaves either the old output or none, never a partial one. Siblings that
    killed writers of `final` left are removed first.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    clear_dead_scratch(final)
    descriptor, temporary, lock = _locked_scratch(final)
    try:
        yield temporary
        remove(final)
        temporary.replace(final)
    finally:
        # The scratch before its lock: a scratch without a lock is a dead writer's.
        remove(temporary)
        lock.unlink(missing_ok=True)
        os.close(descriptor)


def _locked_scratch(final: Path) -> tuple[int, Path, Path]:
    """A new scratch name for `final`, reserved by a lock file that this process holds
    locked: (the lock's descriptor, the scratch path, not created yet, the lock's path)."""
    while True:
        descriptor, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part-lock",
                                            dir=final.parent)
        # A file system without locks (some FUSE mounts): write all the same; its scratch
        # is then never removed by another run (see clear_dead_scratch).
        with contextlib.suppress(OSError):
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        # Another process clearing dead scratch may have taken the new file's lock before
        # this one and removed it: then it names no file, and another name is needed.
        if _names(Path(name), descriptor):
            scratch = _scratch(final, Path(name).name[len(final.name) + 2:-len(".part-lock")])
            if not scratch.exists() and not scratch.is_symlink():
                return descriptor, scratch, Path(name)
            Path(name).unlink()  # a name a writer without locks left: draw another
        os.close(descriptor)


def _names(path: Path, descriptor: int) -> bool:
    """True if `path` is the file open as `descriptor`."""
    try:
        return os.path.samestat(path.stat(), os.fstat(descriptor))
    except FileNotFoundError:
        return False


def clear_dead_scratch(final: Path) -> None:
    """Remove the scratch that killed writers of `final` left beside it, never a live
    writer's: one whose lock file can be locked, or that has none (its writer took the
    lock before making it and removes the lock after it, or ran a version without locks)."""
    patterns = (re.compile(re.escape(f".{final.stem}.") + _RANDOM
                           + re.escape(f".part{final.suffix}")),
                re.compile(re.escape(f".{final.name}.") + _RANDOM + re.escape(".part-lock")))
    try:
        names = [path.name for path in final.parent.iterdir()]
    except FileNotFoundError:
        return
    randoms = {match.group(1) for name in names for pattern in patterns
               if (match := pattern.fullmatch(name))}
    for random in sorted(randoms):
        scratch, lock = _scratch(final, random), _lock(final, random)
        try:
            descriptor = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            _discard(scratch)
            continue
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer's (or no locks here: keep it, it may be live)
            if _names(lock, descriptor):
                _discard(scratch)
                lock.unlink(missing_ok=True)
        finally:
            os.close(descriptor)


def _discard(path: Path) -> None:
    """Delete a file or folder, if still there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove(path: Path) -> None:
    """Delete a file or folder if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
