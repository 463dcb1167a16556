"""Acting: what the supervisor does once a turn's records are durable.

A turn's acts wait (``flushing``) until the flusher's sync covers them;
this part then does them in the order the write-ahead rule was written
for: send the leases, ack memo puts and inbox files, count and log what
ended, wake the waiters, hand finished runs to the archiver and their
hooks to the hook thread, and answer the callers. It is apart from
``supervisor.py`` because it is the one place that lets a durable fact
out of the process; the write that makes it durable stays there
(``Supervisor._commit``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from . import failpoints
from .flushing import _Turn
from .inbox import Inbox
from .journal import Parker
from .metrics import Metrics
from .pool import Dispatch, Pool, Worker
from .records import CancelRequested, Record, Redriven, Spawned, Terminated
from .state import State

log = logging.getLogger("journaled.supervisor")


class Acting:
    """The supervisor's acts after a sync (a mixin): sends, acks, outcomes, waiters, hooks."""

    # What this part needs of the supervisor it is mixed into.
    state: State
    pool: Pool | None
    inbox: Inbox | None
    metrics: Metrics
    on_terminal: Any
    outcomes: set[str]
    run_waiters: dict[str, list[Parker]]
    cond: threading.Condition
    _timed_sent: bool
    _unsent_n: dict[int, int]
    _send_dispatches: Callable[[list[tuple[Worker, list[Dispatch]]]], None]
    _schedule_committed: Callable[[list[Record]], None]
    _hooks_delivered: Callable[[], None]
    _hooks: Any  # journaled.hooks.HookRunner, or None until the first hook fires
    _archive_after_commit: Callable[[list[Record]], None]
    _signal_cancel: Callable[[str], None]
    _door_terminated: Callable[[list[str]], None]
    _door_redriven: Callable[[list[str]], None]
    _fire_hook: Callable[[str], None]
    # Ends whose rest (archive, door, log) waits for the next act (_run_tails), and
    # whether the act running now may leave it so (Flushing._act_on_flusher).
    _tails: list[tuple[list[Record], list[str]]]
    _defer_ends: bool

    def _act(self, turn: _Turn) -> None:
        """One turn's acts, in the order the write-ahead rule was written for."""
        pool = self.pool
        if turn.dispatch:
            unsent = self._unsent_n
            for w, items in turn.dispatch:
                unsent[w.slot] = unsent.get(w.slot, 0) - len(items)
            self._send_dispatches(turn.dispatch)
        if turn.memo_acks and pool is not None:
            for w, seq in turn.memo_acks:
                pool.ack_memo(w, seq)  # the MemoPut is durable: put() may return
        if turn.acks:
            assert self.inbox is not None
            self.inbox.ack(turn.acks)
        if self._tails:  # earlier ends' rest: now, while the worker runs the steps just sent
            self._run_tails()
        self._after_commit(turn.recs)
        for fut, value in turn.futures:
            fut.set(value)

    def _after_commit(self, recs: list[Record]) -> None:
        self.metrics.observe(recs)
        if failpoints.ENABLED:
            self._schedule_committed(recs)
        if self._hooks is not None:  # a hook thread runs (on_terminal): what it delivered
            self._hooks_delivered()
        pool = self.pool
        terminated: list[str] = []
        redriven: list[str] = []
        for rec in recs:
            t = type(rec)
            if t is Terminated:
                terminated.append(rec.run_id)
            elif t is Redriven:
                self.outcomes.discard(rec.run_id)  # live again: the old end no longer holds
                redriven.append(rec.run_id)
            elif t is CancelRequested and pool is not None:
                self._signal_cancel(rec.run_id)
                self._timed_sent = True  # its kill after the grace is a loop timer
            elif t is Spawned and failpoints.ENABLED:
                failpoints.hit("fanout.spawned")
        if terminated and not redriven and self._defer_ends:
            # A waiting caller's own sync (Flushing._act_on_flusher): it hears of
            # its run's end now; the rest (the archive, the socket door's recent
            # ends, the log) waits for the next act, which does it right after
            # sending its steps (while the worker runs them), or for the loop's
            # next turn, due within TAIL_DELAY (Waiting._next_timeout).
            self._mark_ended(terminated)
            self._tails.append((recs, terminated))
            return
        self._archive_after_commit(recs)  # durably finished (and hooked): to the archiver
        if redriven:  # before the turn's answers: takes back the old ends pushed
            self._door_redriven(redriven)
        if not terminated:
            return
        self._mark_ended(terminated)
        self._ended(terminated)

    def _mark_ended(self, terminated: list[str]) -> None:
        """These runs' ends are durable: report them as ended, wake their in-process waiters."""
        outcomes = self.outcomes
        for rid in terminated:
            outcomes.add(rid)
        waiters = self.run_waiters
        if waiters:
            for rid in terminated:
                for ev in waiters.pop(rid, ()):  # each waiter's own parker (Runtime.wait)
                    ev.set()
        cond = self.cond
        if cond._waiters:  # type: ignore[attr-defined]  # nobody waits: skip the lock
            with cond:
                cond.notify_all()

    def _ended(self, terminated: list[str]) -> None:
        """The rest of what durable ends call for: the log, the socket door, the hooks."""
        runs = self.state.runs
        if log.isEnabledFor(logging.INFO):  # once, not run.steps built per run for nothing
            for rid in terminated:
                run = runs[rid]
                log.info("run %s %s after %d steps", rid, run.status, run.steps)
        for rid in terminated:  # an operator wants each dead letter, -v or not
            run = runs.get(rid)
            if run is not None and run.dead and run.terminal:
                why = (run.error or "").split("\n", 1)[0][:300]
                log.warning("run %s failed: %s (see 'journaled dead'; 'journaled retry %s' "
                            "redrives it)", rid, why, rid)
        self._door_terminated(terminated)  # after outcomes: a wait never falls between
        if self.on_terminal is not None:
            for rid in terminated:
                if runs[rid].terminal:  # not redriven by a turn written since
                    self._fire_hook(rid)

    def _run_tails(self) -> None:
        """What ``_after_commit`` left for later (``_defer_ends``), oldest first.

        Before any later turn's own acts, so the archive and the door see the
        ends in the order they were made durable; a run redriven meanwhile is
        skipped by both (each checks that the run is still terminal).
        """
        tails, self._tails = self._tails, []
        for recs, terminated in tails:
            self._archive_after_commit(recs)
            self._ended(terminated)
