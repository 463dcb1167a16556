"""Directory durability: a create, rename or unlink survives a power cut only
once its directory is fsynced, and a new directory only once its parent is.

Every module that makes files or directories other processes rely on uses
these two helpers, so no path forgets the parent (DESIGN §4, "every new
directory's parent is fsynced").
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir", "make_dirs"]


def fsync_dir(path: Path | str) -> None:
    """Make a create, rename or unlink inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path | str, mode: int = 0o700, sync: bool = True) -> bool:
    """Create ``path`` and any missing parents (``mode``), fsyncing each new one's parent.

    Returns whether anything was created. Existing directories are left as
    they are; a directory made by a racing process counts as existing.
    """
    path = Path(path)
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            continue
        if sync:
            # The new entry lives in the parent: sync it there, then the
            # directory itself so its own (empty) metadata is on disk too.
            fsync_dir(d.parent)
    return bool(missing)
