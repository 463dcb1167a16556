"""The supervisor's side of schedules (a mixin): wake at the next tick, submit what is due.

Every decision is ``schedules.plan``'s (pure, ``now`` as an argument); this
part keeps the timer, logs, and turns a plan into records for the turn:
each tick's ``Submitted`` (run id ``NAME@<tick>``), then the schedule's
``ScheduleCursor``, in the turn's one write, so one group commit makes
both durable. Crash windows: killed before that write is synced, neither
survives and the restarted supervisor finds the tick still due (the
catch-up policy applies); torn inside it, the submission survives without
its cursor and the tick's fixed run id makes the re-submit a no-op; after
it, the cursor says the tick is done. ``croniter`` is imported only once
a schedule exists.
"""

from __future__ import annotations

import logging
from typing import Callable

from . import failpoints
from .archive import Identity
from .errors import JournaledError
from .records import Record, ScheduleCursor
from .schedules import Plan, Schedule, next_tick, plan, tick_id
from .state import State

log = logging.getLogger("journaled.supervisor")


class Scheduling:
    """Schedule ticks for the supervisor's turn."""

    state: State
    _archived_identities: Callable[[list[str]], dict[str, Identity]]

    def _init_scheduling(self) -> None:
        # name -> (cursor, cron, tz, next tick): recomputed only when one of them moves.
        self._next_ticks: dict[str, tuple[float, str, str, float]] = {}
        self._schedule_broken: set[str] = set()  # logged once: a cron this process cannot walk

    def _next_tick_of(self, s: Schedule) -> float | None:
        cached = self._next_ticks.get(s.name)
        if cached is not None and cached[:3] == (s.cursor, s.cron, s.tz):
            return cached[3]
        try:
            nxt = next_tick(s.cron, s.tz, s.cursor)
        except (JournaledError, ValueError, KeyError) as e:
            if s.name not in self._schedule_broken:
                self._schedule_broken.add(s.name)
                log.error("schedule %s cannot run here: %s", s.name, e)
            return None
        self._next_ticks[s.name] = (s.cursor, s.cron, s.tz, nxt)
        return nxt

    def _schedule_due(self) -> float | None:
        """Wall-clock time of the next tick of any active schedule (the loop's timer)."""
        if not self.state.schedules.by_name:
            return None
        times = [t for s in self.state.schedules.active()
                 if (t := self._next_tick_of(s)) is not None]
        return min(times) if times else None

    def _schedule_ticks(self, now: float) -> list[Record]:
        """Records for every tick due by ``now``: submissions, then each schedule's cursor."""
        scheds = self.state.schedules
        if not scheds.by_name:
            return []
        out: list[Record] = []
        for s in scheds.active():
            nxt = self._next_tick_of(s)
            if nxt is None or nxt > now:
                continue
            p = plan(s, now)
            if p is None:
                continue
            out += self._submit_ticks(s, p, now)
        if out and failpoints.ENABLED:
            failpoints.hit("schedule.before_tick_commit")
        return out

    def _submit_ticks(self, s: Schedule, p: Plan, now: float) -> list[Record]:
        state = self.state
        if p.late or p.missed:
            how = {"none": "skipped (catch-up none)", "one": "submitting only the latest",
                   "all": "submitting each"}[s.catch_up]
            log.warning("schedule %s: missed ticks after downtime (%s%d older skipped); %s",
                        s.name, "at least " if p.missed and s.catch_up == "all" else "",
                        p.missed, how)
        recs: list[Record] = []
        ids = [tick_id(s.name, t) for t in p.ticks]
        known = self._archived_identities([i for i in ids if i not in state.runs])
        for rid in ids:
            if rid in known or rid in state.runs:
                log.info("schedule %s: tick %s already submitted", s.name, rid)
                continue
            recs += state.submit(rid, s.input, now, s.headers)
            log.info("schedule %s: submitted tick as run %s", s.name, rid)
        # After the submissions, in the same write: see the module's crash windows.
        recs += state.ops([ScheduleCursor(s.name, p.cursor, now)])
        return recs

    def _schedule_committed(self, recs: list[Record]) -> None:
        """A turn with a cursor advance is durable (a failpoint for the crash tests)."""
        if failpoints.ENABLED and any(type(r) is ScheduleCursor for r in recs):
            failpoints.hit("schedule.after_tick_commit")
