"""Writing outputs safely: DVC caches whatever a stage leaves at a declared path.

So outputs are written to a temporary sibling and renamed into place only once they are
complete (`atomic_output`): a crash leaves the old output or none, never a partial one
that DVC would cache as good.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it to `final` only if the block succeeds.

    The temporary path sits in the same folder, so the rename is atomic and a
    crash leaves either the old output or none, never a partial one.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    # Keep the extension: some writers insist on it (Keras wants ".keras").
    handle, name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".part{final.suffix}",
                                    dir=final.parent)
    os.close(handle)
    temporary = Path(name)
    temporary.unlink()  # the caller creates it, as a file or a folder
    try:
        yield temporary
        remove(final)
        temporary.replace(final)
    finally:
        remove(temporary)


def remove(path: Path) -> None:
    """Delete a file or folder if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
