"""The supervisor's live view for ``journaled watch``: a small JSON file, rewritten often.

It holds what the journal does not: which step is running on which worker
right now, its progress, and the supervisor's counters. It is replaced
atomically (temp file + rename) a few times a second and never fsynced:
losing it loses nothing, and readers treat a stale one (older than a few
seconds, or whose pid is gone) as "no supervisor running".
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgspec

STATUS_INTERVAL = 0.25  # seconds between rewrites while steps are in flight
STATUS_FILE = "supervisor.json"


class LiveStep(msgspec.Struct):
    run_id: str
    step: int
    attempt: int
    worker: int
    pid: int
    started_at: float | None  # wall clock; None while queued behind another step
    state: str  # running | queued
    done: float | None = None
    total: float | None = None
    message: str = ""


class LiveStatus(msgspec.Struct):
    pid: int
    app: str
    workers: int
    started_at: float
    updated_at: float
    steps_done: int
    syncs: int
    records_written: int
    journal_bytes: int
    counts: dict[str, int]
    in_flight: list[LiveStep]
    stopping: bool = False


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(LiveStatus)


def write_status(state_dir: Path, live: LiveStatus) -> None:
    path = Path(state_dir) / STATUS_FILE
    tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(_enc.encode(live))
        os.replace(tmp, path)
    except OSError:
        pass  # a live view is best effort; the journal is what counts


def read_status(state_dir: Path, max_age: float = 5.0) -> LiveStatus | None:
    """The current live view, or None if no supervisor is publishing one."""
    try:
        live = _dec.decode((Path(state_dir) / STATUS_FILE).read_bytes())
    except (OSError, msgspec.DecodeError):
        return None
    try:
        os.kill(live.pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    if time.time() - live.updated_at > max_age and live.in_flight:
        return None
    return live


def clear_status(state_dir: Path) -> None:
    try:
        (Path(state_dir) / STATUS_FILE).unlink()
    except OSError:
        pass
