"""``STATE/serving.json``: what the supervisor last started with accepts.

Written atomically at start-up (temp file, fsync, rename, fsync dir), read
by clients so they refuse an unknown runner (or an over-limit run) at
submit, before anything is queued. The supervisor checks again when it
takes the submission up, so a stale or missing file never lets a bad run
in; it only moves the refusal from the caller to the rejected list.
Each part adds its own keys (``runners``; ``limits``, ``key_concurrency``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .durable import fsync_dir

NAME = "serving.json"


def write_serving(state_dir: Path, **keys: Any) -> None:
    """Merge ``keys`` into the file, atomically (a crash leaves the old or the new one)."""
    path = Path(state_dir) / NAME
    data = read_serving(state_dir) or {}
    data.update(keys)
    tmp = path.with_name(f".{NAME}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_serving(state_dir: Path) -> dict[str, Any] | None:
    """The file's contents, or None when it is missing or unreadable (then nothing is refused)."""
    try:
        data = json.loads((Path(state_dir) / NAME).read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def served_runners(state_dir: Path) -> list[str] | None:
    data = read_serving(state_dir)
    names = data.get("runners") if data is not None else None
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return names
    return None


def check_served_runner(state_dir: Path, name: str) -> None:
    """``UnknownRunner`` if the last supervisor serves named runners and not ``name``."""
    if not name:
        return
    names = served_runners(state_dir)
    if names is not None and name not in names:
        from .errors import UnknownRunner

        raise UnknownRunner(name, names)
