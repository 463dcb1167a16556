"""The ready queue and the timers of the state machine (a mixin of ``State``).

Which runs may be leased now, in what order, and when the next timer is
due. It is its own module because it is the one part of the fold that
orders runs rather than changing them: a heap of lazy entries (a stale one
has an old ``seq``), the per-key fair queues (``journaled.quotas``), and
the pauses that hold runs in place; ``idle`` asks whether anything is
left to lease or wait for. Pure like the rest of the state: time
comes in as an argument.
"""

from __future__ import annotations

import heapq
from typing import Iterable

from . import quotas
from .pausing import Pauses
from .run import WAITING, Run


class ReadyQueue:
    """Ready runs and timers: the part of ``State`` that decides who is next."""

    # What this part needs of the state it is mixed into (set in ``State.__init__``).
    runs: dict[str, Run]
    in_flight: dict[str, Run]
    _ready: list[tuple[int, int, int, str]]
    _timers: list[tuple[float, str]]
    _seq: int
    fair: quotas.FairQueues
    pauses: Pauses

    def _make_ready(self, run: Run) -> None:
        self._seq += 1
        run.seq = self._seq
        self._queue(run)

    def _queue(self, run: Run) -> None:
        entry = (-run.priority, run.order, run.seq, run.run_id)
        if run.key or run.resources:
            self.fair.push(run.key, quotas.shape_of(run.resources), entry)
        else:
            heapq.heappush(self._ready, entry)

    def due_runs(self, now: float, limit: int, gate: quotas.Gate | None = None) -> list[Run]:
        """Up to ``limit`` runs ready to lease now, highest priority first, FIFO within one.

        With runs that carry a key or resources, ``gate`` admits them (limits,
        per-key concurrency, rates) and keys take turns (``quotas.FairQueues``).
        Paused runs (all, or by key) keep their place in line.
        """
        timers = self._timers
        while timers and timers[0][0] <= now:
            due, rid = heapq.heappop(timers)
            run = self.runs.get(rid)
            if run is not None and run.status == WAITING and run.due_at == due and not run.leased:
                if run.cancel_reason is None:
                    self._make_ready(run)
        out: list[Run] = []
        pauses = self.pauses
        if pauses.all:
            return out  # every run keeps its place in line
        if self.fair:
            return self.fair.take(limit, self._ready_run, gate or quotas.ADMIT_ALL, self._ready,
                                  paused=pauses.keys)
        ready = self._ready
        runs = self.runs
        paused_keys = pauses.keys  # empty (falsy) unless a key is paused: one check per run
        held: list[tuple[int, int, int, str]] = []
        while ready and len(out) < limit:
            entry = heapq.heappop(ready)
            run = runs.get(entry[3])
            if (run is None or run.seq != entry[2] or run.leased or run.terminal
                    or run.cancel_reason is not None):
                continue
            if paused_keys and pauses.holds(run):
                held.append(entry)  # paused: back in line as it was, after this pass
                continue
            out.append(run)
        for entry in held:
            heapq.heappush(ready, entry)
        return out

    def _ready_run(self, entry: tuple[int, int, int, str]) -> Run | None:
        """The run a ready-queue entry stands for, if it is still ready (entries are lazy)."""
        run = self.runs.get(entry[3])
        if (run is None or run.seq != entry[2] or run.leased or run.terminal
                or run.cancel_reason is not None):
            return None
        return run

    def next_due(self) -> float | None:
        """Wall-clock time of the earliest timer, if any (may be stale: harmless)."""
        return self._timers[0][0] if self._timers else None

    def has_ready(self) -> bool:
        return bool(self._ready) or bool(self.fair)

    def ready_count(self) -> int:
        """Entries in the ready queue (an upper bound: some may be stale)."""
        return len(self._ready) + len(self.fair)

    def requeue(self, runs: Iterable[Run]) -> None:
        """Put runs taken by ``due_runs`` but not leased back in line, order kept."""
        for run in runs:
            self._queue(run)

    def idle(self) -> bool:
        """No run is pending, running or delayed: only outside input can move anything.

        A run parked on a signal with no timeout waits for the outside, so it
        does not keep ``--until-idle`` from exiting; the signal, when it comes,
        waits in the inbox for the next supervisor.
        """
        pauses = self.pauses
        if self.in_flight or ((self._ready or self.fair) and not pauses):
            return False
        # A parent parked on its children moves when they do: they answer for it.
        return all(r.terminal or (r.wait_key and r.woken is None and r.status == WAITING
                                  and not r.due_at) or (pauses and pauses.holds(r))
                   or (r.pending and r.status == WAITING)
                   for r in self.runs.values())
