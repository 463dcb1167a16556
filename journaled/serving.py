"""``STATE/serving.json``: what the supervisor accepts, for clients to check at submit.

Written atomically at start-up (``{"limits": {...}, "key_concurrency": N,
"rates": {...}}``, plus the runner names the runners part adds). A client
refuses an over-limit run when the file is there; the supervisor refuses it
again when it takes the submission, so a stale or missing file is never
unsafe, only a later error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .durable import fsync_dir

SERVING_FILE = "serving.json"


def write_serving(state_dir: Path, parts: dict[str, Any]) -> None:
    """Merge ``parts`` into the file (other parts' keys stay), atomically and durably."""
    path = Path(state_dir) / SERVING_FILE
    data = read_serving(state_dir)
    data.update(parts)
    tmp = path.with_name(f".{SERVING_FILE}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # readers see the old file or the new one, never half of one
    fsync_dir(path.parent)


def read_serving(state_dir: Path) -> dict[str, Any]:
    """The file's contents ({} when it is missing or unreadable)."""
    try:
        with open(Path(state_dir) / SERVING_FILE, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def served_limits(state_dir: Path) -> dict[str, float]:
    """The ``--limit`` values the last supervisor started with ({}: none known)."""
    limits = read_serving(state_dir).get("limits")
    if not isinstance(limits, dict):
        return {}
    return {k: float(v) for k, v in limits.items()
            if isinstance(k, str) and isinstance(v, (int, float))}


_cache: dict[str, tuple[int, dict[str, float]]] = {}


def limits_for_submit(state_dir: Path) -> dict[str, float]:
    """``served_limits``, re-read only when the file changed (one stat per submit)."""
    path = Path(state_dir) / SERVING_FILE
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        return {}
    hit = _cache.get(str(path))
    if hit is not None and hit[0] == stamp:
        return hit[1]
    limits = served_limits(state_dir)
    _cache[str(path)] = (stamp, limits)
    return limits
