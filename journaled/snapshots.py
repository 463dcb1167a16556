"""Snapshots and the archive handoff of the state machine (a mixin of ``State``).

How the whole state is written out as ``Snapshot`` parts and folded back
in, and how finished runs leave the state for the archive (``Archived``)
and come back from it (``Restored``). These are the commands and folds
that replace or drop runs wholesale rather than move one run a step,
which is why they live apart from the per-run transitions in ``state.py``.
Pure: no I/O, time as an argument.
"""

from __future__ import annotations

import heapq
from typing import Callable

from .limits import SNAPSHOT_PART
from .pausing import Pauses
from .quotas import FairQueues
from .records import Archived, Record, Restored, RunSnapshot, Snapshot, encode
from .run import TERMINAL, WAITING, Run, run_from_snapshot, run_to_snapshot
from .schedules import Schedules


class SnapshotFold:
    """Snapshot parts out and in; runs handed to and back from the archive."""

    # What this part needs of the state it is mixed into (set in ``State.__init__``).
    runs: dict[str, Run]
    in_flight: dict[str, Run]
    _ready: list[tuple[int, int, int, str]]
    _timers: list[tuple[float, str]]
    _attention: set[str]
    unhooked: set[str]
    app: str
    _seq: int
    _order: int
    last_at: float
    hooks_in_use: bool
    fair: FairQueues
    schedules: Schedules
    pauses: Pauses

    _commit: Callable[[list[Record]], list[Record]]  # State's
    _queue: Callable[[Run], None]  # ReadyQueue's

    def _archived(self, rec: Archived) -> None:
        # Ready-queue and timer entries are lazy: a missing run is skipped there.
        runs = self.runs
        for rid in rec.run_ids:
            if runs.pop(rid, None) is not None:
                self.unhooked.discard(rid)
                self.in_flight.pop(rid, None)
                self._attention.discard(rid)

    def _restored(self, rec: Restored) -> None:
        if rec.run.run_id not in self.runs:
            run = run_from_snapshot(rec.run)
            run.hook_delivered = True  # its hook ran before it was archived
            self.runs[run.run_id] = run

    def _snapshot(self, rec: Snapshot) -> None:
        if rec.app:
            self.app = rec.app
        if rec.part == 0:
            self.runs.clear()
            self.in_flight.clear()
            self._ready.clear()
            self.fair.clear()
            self._timers.clear()
            self._attention.clear()
            self.unhooked.clear()
            self.last_at = rec.last_at
            self.hooks_in_use = rec.hooks
            self._order = rec.order
            self.schedules.restore(rec.schedules)
            self.pauses.restore(rec.paused)
        for s in rec.runs:
            run = run_from_snapshot(s)
            self.runs[run.run_id] = run
            self._seq = max(self._seq, run.seq)
            self._order = max(self._order, run.order)
            if run.terminal:
                if not run.hook_delivered:
                    self.unhooked.add(run.run_id)
                continue
            if run.abandons:
                self._attention.add(run.run_id)  # the abandon limit is still to decide
            if run.leased:
                self.in_flight[run.run_id] = run
            elif run.cancel_reason is not None:
                self._attention.add(run.run_id)
            elif run.pending and run.status == WAITING:
                continue  # parked on its children: their ends wake it
            elif run.status == WAITING:
                # A signal wait without a timeout has no timer: giving it one
                # would wake it as "timed out" at once.
                if run.due_at or not run.wait_key:
                    heapq.heappush(self._timers, (run.due_at, run.run_id))
            else:
                self._queue(run)

    def restore(self, snap: RunSnapshot) -> list[Record]:
        """Bring an archived run back (to redrive it); nothing if the state has it."""
        if snap.run_id in self.runs:
            return []
        return self._commit([Restored(snap)])

    def snapshot(self, now: float, retention: float = 0.0, hooks: bool | None = None,
                 part_bytes: int = SNAPSHOT_PART) -> list[Snapshot]:
        """Every run the state holds, in parts: live ones and finished ones not yet archived.

        Finished runs leave the state only through ``Archived`` (once the
        archive holds them), never through a snapshot: dropping one here
        could lose it. So a snapshot is O(live runs) once the archiver keeps
        up, and ``retention`` (kept for callers) applies to the archive.
        ``hooks`` is recorded (``None``: whether a hook ever ran here).
        Parts are cut near ``part_bytes`` encoded bytes (a record body is
        bounded, a run count is not); a run bigger than that gets a part of its own.
        """
        if hooks is None:
            hooks = self.hooks_in_use
        parts: list[Snapshot] = []
        part: list[RunSnapshot] = []
        size = 0
        for run in self.runs.values():
            snap = run_to_snapshot(run)
            n = len(encode(snap))
            if part and size + n > part_bytes:
                parts.append(Snapshot(now, part, len(parts), app=self.app, last_at=self.last_at,
                                      hooks=hooks, order=self._order if not parts else 0,
                                      **self._ops_snapshot(not parts)))
                part, size = [], 0
            part.append(snap)
            size += n
        if part or not parts:
            parts.append(Snapshot(now, part, len(parts), app=self.app, last_at=self.last_at,
                                  hooks=hooks, order=self._order if not parts else 0,
                                  **self._ops_snapshot(not parts)))
        return parts

    def _ops_snapshot(self, first: bool) -> dict:
        """Part 0 carries the schedules and pauses (they are not runs)."""
        if not first:
            return {}
        return {"schedules": self.schedules.snapshot(), "paused": self.pauses.snapshot()}

    def archivable(self, hooks: bool) -> list[Run]:
        """Finished runs ready for the archive: hook delivered, or no hook configured."""
        return [r for r in self.runs.values()
                if r.terminal and (r.hook_delivered or not hooks)]

    def archived(self, done: list[tuple[str, float]], now: float) -> list[Record]:
        """Drop runs the archive now holds: ``(run id, finished_at)`` as archived.

        A run redriven since (live again, or finished anew) is kept: its
        archive row is stale and the run is archived again when it ends.
        """
        runs = self.runs
        ids = [rid for rid, at in done if (r := runs.get(rid)) is not None
               and r.status in TERMINAL and r.finished_at == at]  # Run.terminal, inline
        return self._commit([Archived(ids, now)]) if ids else []
