"""Schedules: cron definitions, their journaled cursors, and the pure tick/catch-up plan.

Nothing here reads a clock or does I/O: ``plan`` takes ``now`` as an
argument, so the catch-up rules are unit-tested with made-up times. The
fold (``Schedules.apply``) needs no cron library either: a client reading
a journal with schedules in it never imports ``croniter``. Only the
functions that walk a cron expression load it, lazily (the ``schedules``
extra), so a supervisor with no schedule never needs it.

A tick is submitted as the run ``NAME@<tick UTC ISO time>``; the cursor
(``ScheduleCursor``) says which ticks are handled. After downtime the
ticks between the cursor and now are *missed*; ``catch_up`` decides:
``none`` skips them, ``one`` submits only the latest, ``all`` submits each
(at most ``MAX_CATCH_UP``, the most recent). A tick is on time, not missed,
when it is at most ``grace`` late: half its period, at most a minute.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import Any, Callable, NamedTuple

import msgspec

from .errors import CronUnavailable, ScheduleNotFound
from .records import Record, Schedule, ScheduleChanged, ScheduleCursor, ScheduleSet

CATCH_UP = ("none", "one", "all")
MAX_CATCH_UP = 1000  # ticks one catch-up may submit (the most recent); older ones are skipped
MAX_GRACE = 60.0  # a tick later than this (or half its period) counts as missed
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _croniter() -> Any:
    try:
        from croniter import croniter  # type: ignore[import-untyped]
    except ImportError:
        raise CronUnavailable() from None
    return croniter


def _zone(tz: str) -> Any:
    if tz in ("UTC", "utc", "Z"):
        return timezone.utc
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown time zone {tz!r} (use an IANA name such as "
                         "'Europe/Paris', or UTC)") from None


def check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"bad schedule name {name!r}: use 1-64 of A-Z a-z 0-9 . _ -")
    return name


def check_catch_up(value: object) -> str:
    if value not in CATCH_UP:
        raise ValueError(f"bad catch-up {value!r}: use one of none, one, all")
    return str(value)


def check_cron(expr: object, tz: object = "UTC") -> str:
    """``expr`` if croniter accepts it (5 fields, or 6 with seconds last) in zone ``tz``."""
    if not isinstance(tz, str):
        raise TypeError(f"the time zone must be a str, got {type(tz).__name__}")
    _zone(tz)
    if not isinstance(expr, str) or not expr.strip():
        raise ValueError(f"bad cron expression {expr!r}")
    croniter = _croniter()
    if not croniter.is_valid(expr):
        raise ValueError(f"bad cron expression {expr!r}: use 5 fields (minute hour day "
                         "month weekday) or 6 (seconds last), e.g. '0 2 * * *'")
    return expr


def tick_id(name: str, tick: float) -> str:
    """The run id of one tick: ``NAME@2026-12-01T02:00:00Z`` (UTC, whole seconds)."""
    at = datetime.fromtimestamp(round(tick), timezone.utc)
    return f"{name}@{at:%Y-%m-%dT%H:%M:%SZ}"


def next_tick(cron: str, tz: str, after: float) -> float:
    """The first tick strictly after ``after`` (epoch seconds)."""
    it = _croniter()(cron, datetime.fromtimestamp(after, _zone(tz)))
    return float(it.get_next(float))


def _prev_tick(cron: str, tz: str, before: float) -> float:
    """The last tick strictly before ``before``."""
    it = _croniter()(cron, datetime.fromtimestamp(before, _zone(tz)))
    return float(it.get_prev(float))


class Plan(NamedTuple):
    """What to do with a schedule now: submit ``ticks`` (oldest first), move the cursor."""

    ticks: list[float]
    cursor: float
    missed: int  # ticks due but skipped by the catch-up policy (a lower bound when capped)
    late: bool  # the latest due tick was past its grace (the supervisor was down or busy)


def grace(cron: str, tz: str, tick: float) -> float:
    """How late ``tick`` may be and still be on time: half its period, at most a minute."""
    return min(MAX_GRACE, (next_tick(cron, tz, tick) - tick) / 2)


def plan(s: Schedule, now: float, cap: int = MAX_CATCH_UP) -> Plan | None:
    """The ticks in ``(s.cursor, now]`` and what ``s.catch_up`` does with them; None: none due.

    Walks back from the latest due tick, so a week of per-second ticks costs
    at most ``cap`` steps of the cron iterator, not a week's worth.
    """
    if s.paused:
        return None
    latest = _prev_tick(s.cron, s.tz, math.floor(now) + 1.0)
    if latest <= s.cursor:
        return None
    late = now - latest > grace(s.cron, s.tz, latest)
    limit = cap if s.catch_up == "all" else 1
    due = [latest]
    t = latest
    while True:
        t = _prev_tick(s.cron, s.tz, t)
        if t <= s.cursor:
            more = False
            break
        if len(due) >= limit:
            more = True
            break
        due.append(t)
    due.reverse()
    missed = 1 if more else 0  # at least one older tick left behind
    if s.catch_up == "none" and late:
        return Plan([], latest, missed + len(due), True)
    if s.catch_up == "none":
        # Only the on-time tick runs; any older ones were missed while down.
        return Plan([latest], latest, missed + len(due) - 1, False)
    return Plan(due, latest, missed, late)


class Schedules:
    """Every schedule by name: the fold of the schedule records (no cron library needed)."""

    def __init__(self) -> None:
        self.by_name: dict[str, Schedule] = {}

    def handlers(self) -> dict[type, Callable[[Any], None]]:
        return {ScheduleSet: self._set, ScheduleChanged: self._changed,
                ScheduleCursor: self._cursor}

    def _set(self, rec: ScheduleSet) -> None:
        old = self.by_name.get(rec.name)
        if old is not None and _same(old, rec):
            return  # the same definition again (an inbox file read twice): nothing changes
        self.by_name[rec.name] = Schedule(rec.name, rec.cron, rec.input, rec.at, rec.at,
                                          rec.headers, rec.catch_up, rec.tz,
                                          old.paused if old is not None else False)

    def _changed(self, rec: ScheduleChanged) -> None:
        s = self.by_name.get(rec.name)
        if s is None:
            return
        if rec.action == "remove":
            del self.by_name[rec.name]
        elif rec.action == "pause":
            s.paused = True
        elif rec.action == "resume" and s.paused:
            # Ticks that fell while paused are not owed: the next one is after the resume.
            s.paused = False
            s.cursor = max(s.cursor, rec.at)

    def _cursor(self, rec: ScheduleCursor) -> None:
        s = self.by_name.get(rec.name)
        if s is not None and rec.tick > s.cursor:
            s.cursor = rec.tick

    def snapshot(self) -> list[Schedule]:
        return [msgspec.structs.replace(s) for s in self.by_name.values()]

    def restore(self, schedules: list[Schedule]) -> None:
        self.by_name = {s.name: msgspec.structs.replace(s) for s in schedules}

    def active(self) -> list[Schedule]:
        return [s for s in self.by_name.values() if not s.paused]

    # ------------------------------------------------------------- commands

    def set(self, name: str, cron: str, input: bytes, now: float, headers: dict[str, str],
            catch_up: str, tz: str) -> list[Record]:
        """Add or redefine; nothing for the same definition again."""
        rec = ScheduleSet(name, cron, input, now, headers, catch_up, tz)
        old = self.by_name.get(name)
        return [] if old is not None and _same(old, rec) else [rec]

    def change(self, name: str, action: str, now: float) -> list[Record]:
        s = self.by_name.get(name)
        if s is None:
            raise ScheduleNotFound(name)
        if (action == "pause" and s.paused) or (action == "resume" and not s.paused):
            return []
        return [ScheduleChanged(name, action, now)]


def _same(s: Schedule, rec: ScheduleSet) -> bool:
    return (s.cron, s.input, s.headers, s.catch_up, s.tz) == (
        rec.cron, rec.input, rec.headers, rec.catch_up, rec.tz)
