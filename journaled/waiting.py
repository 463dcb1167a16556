"""Waiting: what the supervisor's loop waits on, and for how long.

The wake pipe other threads (and the flusher) write one byte to, the
epoll set kept across turns, and the timeout of the next wait: the
nearest of the state's timers, schedule ticks, worker deadlines, the live
view, the socket door and the retention check. Apart from
``supervisor.py`` because it is the loop's clock and doorbell, not a step
of the turn itself.
"""

from __future__ import annotations

import os
import select
from typing import Any, Callable

from .clock import Clock
from .pool import Pool, Worker
from .records import Record
from .state import State

# How long the rest of a run's end may wait for the loop (see _next_timeout): only
# the archive hand-off, the door's recent ends and the log wait (never a hook or a
# socket client), so it can be long enough that a loaded serial caller, whose
# next act does it anyway, never has the loop woken for it (2 ms did, at load 6+).
TAIL_DELAY = 0.02


class Waiting:
    """The loop's wake pipe, epoll set and next timeout (a mixin of ``Supervisor``)."""

    # What this part needs of the supervisor it is mixed into.
    state: State
    pool: Pool | None
    clock: Clock
    retention_check: float
    _retention_checked: float
    _wake_w: int
    _wake_pending: bool
    _poked: bool
    _inbox_due: bool
    _stopping: bool
    _carry: list[Record]
    _commands: Any
    _door_in: Any
    _respawn_at: dict[int, float]
    _status_due: float
    _wait_map: dict[Any, tuple[str, Worker]]
    _sel: Any  # select.epoll, or None
    _sel_map: dict[Any, tuple[str, Worker]] | None
    _sel_objs: list[Any]
    _sel_fds: dict[int, Any]  # fd -> what was registered for it (set with _sel)
    _door_timer: Callable[[], float | None]
    _schedule_due: Callable[[], float | None]
    _unsent: Callable[..., bool]
    _worker_timers: Callable[[float], list[float]]
    _written: Any
    _flusher: Any  # journaled.journal.Flusher, or None
    _tails: list[Any]
    _tail_armed: bool

    def wake(self) -> None:
        """Wake the loop for a full turn, from another thread (or a signal handler)."""
        self._poked = True
        if not self._wake_pending:
            # One byte while a wake is pending: many callers in one turn cost one
            # write (the loop clears the flag after it empties the pipe and
            # only then looks at the commands, so no wake-up is lost).
            self._wake_pending = True
            self._wake_synced()

    def _wake_synced(self) -> None:
        """The flusher's wake: a sync ended; the turn may only act on it and wait again."""
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    _poke = wake  # a remote executor came back: a full turn, to lease again

    def _inbox_changed(self) -> None:
        """The inbox watcher's wake: only then does a turn list the inbox directory."""
        self._inbox_due = True
        self.wake()

    def _select(self, objs: list[Any], timeout: float | None) -> list[Any]:
        """``multiprocessing.connection.wait`` on one epoll set kept across turns.

        Rebuilt whenever the objects change (a worker died or was respawned:
        its fds were closed, and a new one may reuse a number), so a closed fd
        is never waited on; building it anew each turn cost more than the rest
        of an idle turn. ``select.epoll`` itself, not ``selectors``: its
        Python-level ``select`` cost more per turn than the wait.
        """
        ep = self._sel
        if ep is None or self._sel_map is not self._wait_map or objs != self._sel_objs:
            if ep is not None:
                ep.close()
            ep = self._sel = select.epoll()
            fds: dict[int, Any] = {}
            for obj in objs:
                fd = obj if isinstance(obj, int) else obj.fileno()
                ep.register(fd, select.EPOLLIN)
                fds[fd] = obj
            self._sel_map, self._sel_objs, self._sel_fds = self._wait_map, objs, fds
        fds = self._sel_fds
        return [fds[fd] for fd, _ev in ep.poll(timeout)]  # None: no timeout

    def _next_timeout(self) -> float | None:
        # A waiting caller's sync may leave the rest of its run's end for later
        # (Acting._run_tails) only while this wait is known to end soon after:
        # with a caller parked for the sync of turns still written, the timeout
        # is TAIL_DELAY at most (a busy loop turns sooner anyway).
        self._tail_armed = False
        if self._carry or self._commands or self._door_in:
            return 0.0
        now = self.clock.now()
        mono = self.clock.monotonic()
        times: list[float] = []  # monotonic
        fl = self._flusher
        if self._tails or (self._written and fl is not None and fl.has_guest()):
            times.append(mono + TAIL_DELAY)
            self._tail_armed = True
        due = self.state.next_due()
        if due is not None:
            times.append(mono + max(0.0, due - now))
        tick = self._schedule_due()
        if tick is not None:
            times.append(mono + max(0.0, tick - now))
        pool = self.pool
        if (self._respawn_at or self._stopping or self._unsent() or pool is None
                or any(w.outstanding for w in pool.workers)):
            # With nothing in flight no deadline, steal or respawn is due: most
            # turns of a quiet loop (and of a serial caller) skip building the views.
            times += self._worker_timers(mono)
        # The live view, busy or idle: its age is how 'watch' tells a hung loop.
        times.append(self._status_due)
        t = self._door_timer()
        if t is not None:
            times.append(t)  # a socket wait that may time out: a server pass is due
        times.append(self._retention_checked + self.retention_check)
        if not times:
            return None
        return min(max(0.0, min(times) - mono) + 0.0005, 5.0)
