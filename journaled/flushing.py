"""The loop's side of the pipelined sync (a mixin): turns written, waiting for their sync.

``Supervisor._commit`` writes a turn's records with one ``write`` and keeps
the turn's acts in a ``_Turn`` at the end of ``_written``; the flusher
thread (``journal/flusher.py``) fdatasyncs every turn written so far and
wakes the loop, which acts on each turn its ``synced`` ticket covers, oldest
first (``_act_durable``). Crash windows, in order:

1. written, not synced: a kill may keep the records or lose them (power-loss
   mode: it loses them); nobody was told anything either way;
2. synced and the mark published, acts not done: replay redoes them (a
   lease becomes an abandoned attempt, a hook fires again, an inbox file is
   read again and found a duplicate);
3. acted on: as before pipelining.

Who acts: the flusher thread itself, right after its sync, whenever it can
take the state lock without waiting (the loop is blocked in its wait, not
in a turn): the step reaches its worker and the waiter hears of its run's
end one thread hop sooner (``_act_on_flusher``). When the lock is taken
(a turn runs, a reader looks), the flusher leaves the acts to the loop,
which it wakes either way. Both act oldest first under the same lock, so
the write-ahead order holds whoever acts. "The flusher thread" here is
whichever thread runs the sync cycle: a quiet ``Runtime.submit`` caller
runs its own (``Flusher.sync_here``), a ``Runtime.wait`` caller parked as
the flusher's guest runs the next one (``Flusher.park``); the cycle and
its order are the same on every thread.

Leases whose sync is still running are steps the worker has not heard of:
they count toward its depth (``_unsent_views``), a Stop waits for them, and
a worker that dies first has them released, never charged (``_drop_unsent``).
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path
from typing import Any, Callable

from . import dispatch
from .errors import StorageFailure
from .intake import Future
from .journal import Flusher
from .pool import Dispatch, Pool, Worker
from .records import Record
from .state import State

log = logging.getLogger("journaled.supervisor")

_NOT_SENT = dispatch.StepView(0, "", 0)  # a lease waiting for its sync (_unsent_views)


class _Turn:
    """One written turn's acts, done once the sync that covers ``ticket`` has returned."""

    __slots__ = ("ticket", "recs", "dispatch", "memo_acks", "acks", "futures")

    def __init__(self, ticket: int, recs: list[Record],
                 dispatch: list[tuple[Worker, list[Dispatch]]],
                 memo_acks: list[tuple[Worker, int]], acks: list[Path],
                 futures: list[tuple[Future, Any]]) -> None:
        self.ticket = ticket
        self.recs = recs
        self.dispatch = dispatch
        self.memo_acks = memo_acks
        self.acks = acks
        self.futures = futures


class Flushing:
    """Turns written and waiting for their sync; drained before compaction, rotation, close."""

    # What this part needs of the supervisor it is mixed into.
    state: State
    pool: Pool | None
    state_lock: Any
    _recs: list[Record]
    _written: deque[_Turn]
    _storage_broken: bool
    _flusher: Flusher | None
    _sync_wanted: int
    _unanswered: list[tuple[Future, Any]]
    _unsent_n: dict[int, int]
    _act: Callable[[_Turn], None]
    metrics: Any  # journaled.metrics.Metrics
    _flusher_acted: bool
    _act_error: BaseException | None
    _timed_sent: bool
    _carry: list[Record]
    _stopping: bool
    _until_idle: bool
    _poked: bool
    _compact_requested: bool
    _tails: list[Any]
    _defer_ends: bool
    _tail_armed: bool
    _run_tails: Callable[[], None]
    on_terminal: Any
    _door_waits: dict[str, Any]
    _door_ends: dict[str, int]

    def _loop_needs_wake(self) -> bool:
        """After the flusher acted: must the loop still turn (rather than sleep on)?

        Yes when something is left that only a turn does: records to write
        (hook deliveries), turns still waiting, a stop or an idle check in
        progress, or a step sent with a deadline (or a cancel's grace) the
        loop's timeout must now cover. Otherwise its wait covers the rest.
        """
        timed, self._timed_sent = self._timed_sent, False
        return bool(timed or self._written or self._carry or self._stopping
                    or self._until_idle or self._poked or self._compact_requested)

    def _act_on_flusher(self) -> bool:
        """The flusher's ``on_durable``: do the synced turns' acts now, on its thread.

        Only if the state lock is free (never waits for a turn: the flusher
        must not stall behind the loop); otherwise the loop acts when the
        wake-up that follows reaches it. A failure is kept for the loop to
        raise, as if it had acted itself.

        Returns True when the loop need not wake at all (``_loop_needs_wake``
        says nothing is left for it): a quiet serial caller's runs then cost
        no loop turn for their syncs.
        """
        if not self._written:
            return False
        lock = self.state_lock
        if not lock.acquire(blocking=False):
            return False
        try:
            fl = self._flusher
            # A waiting caller runs this sync (Flusher.park): it hears of its run's
            # end first and returns; the rest of the end's acts wait for the next
            # act (Acting._run_tails). Only while the loop's wait is known to end
            # within TAIL_DELAY (_tail_armed), and with no hook and no socket
            # client waiting on an end.
            self._defer_ends = (fl is not None and fl.guest_running and self._tail_armed
                                and self.on_terminal is None and not self._door_waits
                                and not self._door_ends)
            if self._act_error is None and self._act_durable():
                self._flusher_acted = True  # the loop's wake-up has nothing more to do
                return not self._loop_needs_wake()
        except BaseException as e:  # noqa: BLE001 - raised by the loop (_act_durable)
            self._act_error = e
        finally:
            self._defer_ends = False
            lock.release()
        return False

    def _storage_failed(self) -> None:
        """fsyncgate: nothing after a failed write or sync can be trusted.

        Acknowledge nothing, stop every worker, let the caller exit (the
        turns still in ``_written`` are dropped by ``close``).
        """
        self._storage_broken = True  # close must not sync (and report) again
        if self.pool is not None:
            for w in self.pool.workers:
                self.pool.kill(w, "storage")

    def _request_sync(self) -> None:
        """Hand what the last turns wrote to the flusher (one request covers them all)."""
        if self._sync_wanted and self._flusher is not None:
            self._flusher.request(self._sync_wanted)
            self._sync_wanted = 0

    def _act_durable(self) -> bool:
        """Do the acts of every written turn the flusher has made durable, oldest first.

        Returns whether any turn was acted on.

        Raises:
            StorageFailure: the flusher's sync failed (workers are stopped first).
        """
        fl = self._flusher
        if fl is None:
            return False
        if fl.error is not None:
            self._storage_failed()
            raise fl.error
        if self._act_error is not None:
            raise self._act_error  # the flusher thread failed at an act of ours
        written = self._written
        synced = fl.synced
        acted = False
        while written and written[0].ticket <= synced:
            # The sync that covers this turn returned and published the mark:
            # from here on its acts may leave the process. A kill before them
            # only leaves acts for replay to redo.
            self._act(written.popleft())
            acted = True
        if acted:
            self.metrics.acted()  # steps per sync
        if self._tails and not self._defer_ends:
            self._run_tails()  # no later turn's acts came to do them (the loop's turn)
        return acted

    def _drain(self) -> None:
        """Wait for the flusher to sync everything written, then act on it all.

        Compaction and segment rotation need a fully synced journal; so does
        the last act before close.
        """
        self._request_sync()
        fl = self._flusher
        if fl is not None and not fl.idle():
            try:
                fl.drain()
            except StorageFailure:
                self._storage_failed()
                raise
        self._act_durable()

    def _last_sync(self) -> None:
        """On close: wait for the last sync and do its acts; after a failure, drop them."""
        fl = self._flusher
        if fl is None:
            return
        try:
            if fl.error is None and (self._written or self._tails) and not self._storage_broken:
                with self.state_lock:
                    self._drain()
        except StorageFailure as e:
            log.error("the last journal sync failed; its %d turns are not acknowledged: %s",
                      len(self._written), e)
        finally:
            fl.close()
            self._unanswered += fl.take_unanswered()  # failed by close, after the door
            self._flusher = None

    def _unsent(self, w: Worker | None = None) -> bool:
        """Leases written but not yet sent (to ``w``, or to anyone)."""
        if w is None:
            return any(self._unsent_n.values())
        return self._unsent_n.get(w.slot, 0) > 0

    def _unsent_views(self, w: Worker) -> tuple[dispatch.StepView, ...]:
        """Steps leased to ``w`` whose sync has not returned: they count toward its depth.

        Stand-ins (no seq, no limit): the worker does not know them yet, so no
        deadline, kill or steal can concern them; only how full ``w`` is.
        """
        return (_NOT_SENT,) * self._unsent_n.get(w.slot, 0)

    def _drop_unsent(self, w: Worker, now: float) -> None:
        """``w`` died: its leases still waiting for their sync are never sent; release them.

        They never left this process, so they never started. The Released
        records go after the Leased ones in the journal, whatever the order
        of their syncs; a crash before they are durable replays the lease as
        an abandoned attempt, as for any lease whose outcome was lost.
        """
        for turn in self._written:
            if not turn.dispatch:
                continue
            keep = []
            for dw, items in turn.dispatch:
                if dw is w:
                    for d in items:
                        self._recs += self.state.release(d.run_id, d.attempt, False, now)
                else:
                    keep.append((dw, items))
            turn.dispatch = keep
        self._unsent_n.pop(w.slot, None)
