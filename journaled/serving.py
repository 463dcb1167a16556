"""``STATE/serving.json``: what the last supervisor started accepts, for clients to check.

Written atomically at start-up, whole (``{"runners": [...], "default_runner": ...,
"limits": {...}, "key_concurrency": N, "rates": {...}}``), so no key of an older
supervisor outlives it. A client refuses an unknown runner or an over-limit run
at submit when the file is there; the supervisor refuses it again when it takes
the submission up, so a stale or missing file is never unsafe: it only moves the
refusal from the caller to the rejected list.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .durable import fsync_dir

SERVING_FILE = "serving.json"


def write_serving(state_dir: Path, parts: dict[str, Any] | None = None, **keys: Any) -> None:
    """Replace the file with ``parts`` and ``keys``, atomically and durably."""
    path = Path(state_dir) / SERVING_FILE
    data = {**(parts or {}), **keys}
    tmp = path.with_name(f".{SERVING_FILE}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # readers see the old file or the new one, never half of one
    fsync_dir(path.parent)


_cache: dict[str, tuple[int, dict[str, Any]]] = {}


def read_serving(state_dir: Path) -> dict[str, Any]:
    """The file's contents ({} when missing or unreadable), re-read only when it changed."""
    path = Path(state_dir) / SERVING_FILE
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        return {}
    hit = _cache.get(str(path))
    if hit is not None and hit[0] == stamp:
        return hit[1]
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    data = data if isinstance(data, dict) else {}
    _cache[str(path)] = (stamp, data)
    return data


def served_runners(state_dir: Path) -> list[str] | None:
    """The runner names the last supervisor serves (None: not known)."""
    names = read_serving(state_dir).get("runners")
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


def served_limits(state_dir: Path) -> dict[str, float]:
    """The ``--limit`` values the last supervisor started with ({}: none known); one stat
    per call once read (``read_serving`` caches by mtime), so a client checks every submit."""
    limits = read_serving(state_dir).get("limits")
    if not isinstance(limits, dict):
        return {}
    return {k: float(v) for k, v in limits.items()
            if isinstance(k, str) and isinstance(v, (int, float))}
