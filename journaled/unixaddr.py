"""The ``AF_UNIX`` address of a socket path, for the supervisor's server and its clients.

Apart from ``server`` so that a client connecting (``connection``, a
``journaled submit`` at every start) does not import the server's loop.
"""

from __future__ import annotations

import os
from pathlib import Path


def short_path(path: Path) -> tuple[str, int]:
    """An ``AF_UNIX`` address for ``path`` (108 bytes at most) and an fd to close after use.

    A long path goes through ``/proc/self/fd/N`` of its directory (Linux);
    -1 means no fd was opened.
    """
    s = str(path)
    if len(s.encode()) < 100:
        return s, -1
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{path.name}", fd
