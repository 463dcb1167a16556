"""The supervisor's live view for ``journaled watch``: a small JSON file, rewritten often.

It holds what the journal does not: which step is running on which worker
right now, its progress, and the supervisor's counters. It is replaced
atomically (temp file + rename) a few times a second and never fsynced:
losing it loses nothing, and readers treat a stale one (older than a few
seconds, or whose pid is gone) as "no supervisor running".

``health()`` tells the three cases apart for ``watch``: no process holds
the state lock (no supervisor running); the lock holder publishes (running);
the lock holder is alive but its status stopped changing (hung, or stopped
with SIGSTOP). The status is written on the loop thread, busy or idle, so its
age measures the loop itself.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgspec

STATUS_INTERVAL = 0.25  # seconds between rewrites while steps are in flight
IDLE_STATUS_INTERVAL = 1.0  # ...and while idle: the file's age says the loop still turns
# A lock holder whose status is older than this is reported "not responding (hung?)".
HUNG_AFTER = 5.0
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


def lock_holder(state_dir: Path) -> int | None:
    """The pid of the supervisor holding the state lock, or None if none does."""
    from .journal import StateLock

    return StateLock.holder(state_dir)


class Health(msgspec.Struct):
    """Whether a supervisor serves a state directory: ``state`` is one of
    ``running``, ``hung``, ``starting``, ``none``; ``message`` says it in words."""

    state: str
    pid: int | None = None
    status_age: float | None = None  # seconds since its last status publish
    message: str = ""


def health(state_dir: Path, now: float | None = None,
           hung_after: float = HUNG_AFTER) -> Health:
    """Running, hung (lock held, status stale), starting (lock held, no status yet), or none."""
    now = time.time() if now is None else now
    pid = lock_holder(Path(state_dir))
    if pid is None:
        return Health("none", message="no supervisor running")
    try:
        live: LiveStatus | None = _dec.decode((Path(state_dir) / STATUS_FILE).read_bytes())
    except (OSError, msgspec.DecodeError):
        live = None
    if live is None or live.pid != pid:
        try:
            since = now - (Path(state_dir) / "lock").stat().st_mtime
        except OSError:
            since = 0.0
        return Health("starting", pid, None,
                      f"supervisor pid {pid} starting for {since:.0f} s (replaying; no status "
                      "published yet)")
    age = max(0.0, now - live.updated_at)
    if age > hung_after:
        return Health("hung", pid, round(age, 3),
                      f"supervisor pid {pid} not responding: last status {age:.0f} s ago "
                      "(hung?)")
    return Health("running", pid, round(age, 3), f"supervisor pid {pid} running")


def clear_status(state_dir: Path) -> None:
    try:
        (Path(state_dir) / STATUS_FILE).unlink()
    except OSError:
        pass
