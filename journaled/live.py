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
age measures the loop itself: ``LivePublisher`` is that writer's side, mixed
into the supervisor; everything else here is for readers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import msgspec

if TYPE_CHECKING:  # the supervisor's types, for the publisher only: readers stay light
    from .journal import Journal
    from .pool import Pool
    from .state import State

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
    replace_best_effort(Path(state_dir) / STATUS_FILE, _enc.encode(live))


def replace_best_effort(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically (temp file + rename), never fsynced, errors ignored:
    for views that the journal can always rebuild (this one, ``metrics.json``)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
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


class LivePublisher:
    """The supervisor's side of the live view (a mixin): build it and publish it."""

    # What this part needs of the supervisor it is mixed into.
    state: State
    pool: Pool | None
    journal: Journal
    state_dir: Path
    import_string: str
    workers: int
    steps_done: int
    _stopping: bool
    status_counts: Callable[[], dict[str, int]]

    def _init_live(self) -> None:
        self._status_due = 0.0
        self._counts_due = 0.0
        self._counts: dict[str, int] = {}
        self._started_wall = time.time()

    def _write_status(self, mono: float) -> None:
        """Publish a live view for 'journaled watch' (not durable, not the source of truth).

        Called on the loop thread only, busy or idle, so the age of the last
        publish measures the loop itself: 'watch' calls a supervisor whose
        status stopped changing while it holds the lock hung.
        """
        self._status_due = mono + (STATUS_INTERVAL if self.state.in_flight
                                   else IDLE_STATUS_INTERVAL)
        pool = self.pool
        assert pool is not None
        now = time.time()
        flights = []
        for w in pool.workers:
            running = pool.running_seq(w)
            pseq, done, total, msg = pool.progress(w)
            for i, item in enumerate(w.outstanding):
                run = self.state.runs.get(item.run_id)
                if run is None:
                    continue
                started = item.seq == running or (i == 0 and running == 0)
                flights.append(LiveStep(
                    item.run_id, run.step, item.attempt, w.slot, w.pid or 0,
                    now - (mono - w.head_started) if i == 0 else None,
                    "running" if started else "queued",
                    done if pseq == item.seq else None,
                    total if pseq == item.seq else None,
                    msg if pseq == item.seq else ""))
        j = self.journal
        if len(self.state.runs) < 20_000 or mono >= self._counts_due:
            # Counting is O(runs): on a big state do it every few seconds only.
            # Durable counts: a run whose end is not synced yet is still running.
            self._counts = self.status_counts()  # durable; archived runs too
            self._counts_due = mono + 5.0
        live = LiveStatus(os.getpid(), self.import_string, self.workers, self._started_wall, now,
                          self.steps_done, j.syncs, j.records_written, j.size_bytes,
                          self._counts, flights, self._stopping)
        write_status(self.state_dir, live)
        self.live = live  # for the CLI's status line: a finished view, never mutated
