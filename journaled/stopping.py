"""Stopping: how the supervisor drains, decides it is idle, and closes.

A first stop request drains (no new leases, running steps may finish), a
second stops now; ``--until-idle`` asks ``_idle`` whether only outside
input could move anything. ``close`` syncs and acts on the last turn,
closes the door, hooks, archiver, inbox, pool and journal in that order,
and fails every caller not yet answered (nothing was told them, so a
retry is safe). Apart from ``supervisor.py`` because it is the end of the
lifecycle, with its own ordering rules.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from pathlib import Path
from typing import Any, Callable

from .clock import Clock
from .errors import JournaledError
from .flushing import _Turn
from .inbox import Inbox
from .intake import Future
from .journal import Flusher, Journal, Parker, StateLock
from .live import clear_status
from .metrics_http import final_sample
from .pool import Pool
from .records import Record
from .state import State


class Stopping:
    """Drain, idle and close (a mixin of ``Supervisor``)."""

    # What this part needs of the supervisor it is mixed into.
    state: State
    state_dir: Path
    pool: Pool | None
    inbox: Inbox | None
    journal: Journal
    lock: StateLock
    clock: Clock
    cond: threading.Condition
    stopped: threading.Event
    run_waiters: dict[str, list[Parker]]
    drain_timeout: float
    _stopping: bool
    _stop_now: bool
    _drain_deadline: float
    _flusher: Flusher | None
    _hooks: Any
    _reload_stop: threading.Event
    _sel: Any
    _wake_r: int
    _wake_w: int
    _carry: list[Record]
    _commands: Any
    _futures: list[tuple[Future, Any]]
    _written: deque[_Turn]
    _unanswered: list[tuple[Future, Any]]
    wake: Callable[[], None]
    _last_sync: Callable[[], None]
    _close_door: Callable[[], None]
    _close_archiver: Callable[[], None]
    _stop_rss_monitor: Callable[[], None]
    _door_pending: Callable[[], bool]
    _archive_busy: Callable[[], bool]

    def request_stop(self) -> None:
        """First call: drain (stop leasing, let steps finish). Second call: stop now."""
        if self._stopping:
            self._stop_now = True
        else:
            self._stopping = True
            self._drain_deadline = self.clock.monotonic() + self.drain_timeout
            if self.pool is not None:
                self.pool.set_stopping()  # the shutdown notice: step.cancel_token.stopping()
        self.wake()

    def _idle(self) -> bool:
        return (self.state.idle() and not self._commands and not self._carry
                and not self._door_pending() and not self._written
                and self.inbox is not None and not self.inbox.scan_pending()
                and (self._hooks is None or not self._hooks.busy())
                and not self._archive_busy())

    def _all_workers_gone(self) -> bool:
        return self.pool is None or all(w.proc is None for w in self.pool.workers)

    def close(self) -> None:
        self._last_sync()  # the last turn's sync and its acts (its answers included)
        self._close_door()  # then: clients not yet answered resend through the inbox
        if self._flusher is not None:
            final_sample(self)  # the counters as it stops, for 'metrics --once'
        if self._hooks is not None:
            self._hooks.close()  # hooks not yet delivered are owed to the next start
        self._close_archiver()  # runs not yet archived stay finished in the journal
        clear_status(self.state_dir)
        self._reload_stop.set()
        if self.inbox is not None:
            self.inbox.close()
        self._stop_rss_monitor()
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        self.journal.close()
        self.lock.release()
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        gone = JournaledError("the supervisor stopped before this was durable")
        for _, _args, fut in self._commands:
            fut.set(error=gone)
        for fut, _value in self._futures:
            fut.set(error=gone)
        for turn in self._written:  # their sync failed or never ran: nothing was told
            for fut, _value in turn.futures:
                fut.set(error=gone)
        for fut, _value in self._unanswered:
            fut.set(error=gone)
        self._unanswered.clear()
        self._commands.clear()
        self._futures.clear()
        self._written.clear()
        self.stopped.set()
        with self.cond:
            for evs in self.run_waiters.values():
                for ev in evs:
                    ev.set()  # they look again and find the supervisor stopped
            self.cond.notify_all()
