"""Operator calls shared by ``Client`` and ``Runtime``: schedules, pause/resume, fork.

A mixin: the checks, the message and the answer are the same for both; only
how a message travels differs (``_send_ops``: a durable inbox file for
``Client``, a queued command answered once durable for ``Runtime``) and
where the state is read from (``_ops_state``: the folded journal, or the
supervisor's own state under its lock).
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import msgspec

from .blobs import BlobStore
from .errors import RunNotFound, SubmissionRejected
from .forking import fork_ids, fork_record
from .inbox import ForkMsg, PauseMsg, ScheduleMsg, check_headers, check_run_id, check_schedule
from .pausing import Pauses
from .records import Schedule
from .schedules import check_name, next_tick
from .state import Run, State


class ScheduleInfo(msgspec.Struct, frozen=True):
    """One schedule as ``schedules()`` lists it (``next_at``: None while paused)."""

    name: str
    cron: str
    tz: str
    catch_up: str
    paused: bool
    cursor: float  # last tick handled (submitted or skipped), epoch seconds
    next_at: float | None
    input: bytes
    headers: dict[str, str]


def schedule_info(s: Schedule) -> ScheduleInfo:
    nxt: float | None = None
    if not s.paused:
        try:
            nxt = next_tick(s.cron, s.tz, s.cursor)
        except Exception:  # noqa: BLE001 - no croniter here: the list still shows the rest
            nxt = None
    return ScheduleInfo(s.name, s.cron, s.tz, s.catch_up, s.paused, s.cursor, nxt, s.input,
                        dict(s.headers))


class OpsCalls:
    """``schedule_add`` ... ``fork`` for a class that can send a message and read a state."""

    blobs: BlobStore

    def _send_ops(self, msg: Any) -> None:
        raise NotImplementedError

    def _ops_state(self) -> State:
        raise NotImplementedError

    def _ops_run(self, run_id: str) -> Run | None:
        """The run (live or archived), ``None`` if unknown; raises ``SubmissionRejected``."""
        raise NotImplementedError

    # -------------------------------------------------------------- schedules

    def schedule_add(self, name: str, cron: str, input: bytes = b"",
                     headers: dict[str, str] | None = None, *, catch_up: str = "one",
                     tz: str = "UTC") -> None:
        """Add (or redefine) the schedule ``name``: each tick of ``cron`` submits a run.

        The run of the tick at T has id ``NAME@<T as UTC ISO>``; ``catch_up``
        (``none``, ``one``, ``all``) says what ticks missed while no supervisor
        ran become. Raises ``ValueError`` naming a bad expression, zone or
        name, and ``CronUnavailable`` without the ``schedules`` extra.
        """
        msg = ScheduleMsg(name, "add", time.time(), cron,
                          bytes(input) if isinstance(input, (bytearray, memoryview)) else input,
                          check_headers(headers), catch_up, tz)
        check_schedule(msg)
        self._send_ops(msg)

    def _schedule_change(self, name: str, action: str) -> None:
        check_name(name)
        if name not in self._ops_state().schedules.by_name:
            from .schedules import ScheduleNotFound

            raise ScheduleNotFound(name)
        self._send_ops(ScheduleMsg(name, action, time.time()))

    def schedule_pause(self, name: str) -> None:
        """Stop submitting ticks of ``name``; ticks while paused are not owed after resume."""
        self._schedule_change(name, "pause")

    def schedule_resume(self, name: str) -> None:
        self._schedule_change(name, "resume")

    def schedule_remove(self, name: str) -> None:
        """Forget ``name``; runs it submitted stay."""
        self._schedule_change(name, "remove")

    def schedules(self) -> list[ScheduleInfo]:
        """Every schedule, by name, with its cursor and next tick."""
        by_name = self._ops_state().schedules.by_name
        return [schedule_info(by_name[n]) for n in sorted(by_name)]

    # ---------------------------------------------------------- pause/resume

    def pause(self, key: str | None = None) -> None:
        """Lease no new step of runs with ``key`` (None: of any run); running steps finish."""
        self._send_ops(_pause_msg(key, True))

    def resume(self, key: str | None = None) -> None:
        """Undo ``pause(key)``; ``resume()`` (no key) resumes everything."""
        self._send_ops(_pause_msg(key, False))

    def paused(self) -> dict[str, Any]:
        """``{"all": bool, "keys": [...]}``: what dispatch is paused for now."""
        p: Pauses = self._ops_state().pauses
        return p.describe()

    # ------------------------------------------------------------------ fork

    def fork(self, run_id: str, from_step: int, input: bytes | None = None,
             new_run_id: str | None = None) -> str:
        """A new run that starts at step ``from_step`` of ``run_id``; returns its id.

        It gets the payload recorded for that step (or ``input``) and, from the
        step ``run_id`` stopped at, that step's memos; ``run_id`` is untouched.
        Raises ``RunNotFound``, ``ValueError`` (no such step, no payload kept).
        """
        check_run_id(run_id)
        src = self._ops_run(run_id)
        if src is None:
            raise RunNotFound(run_id)
        if new_run_id is None:
            new_run_id = next(i for i in _candidates(run_id) if not self._taken(i))
        check_run_id(new_run_id)
        payload: Any = None
        if input is not None:
            from .inbox import check_value, to_stored

            payload = to_stored(check_value("the fork input", input, self.blobs), self.blobs)
        fork_record(src, new_run_id, from_step, payload, time.time())  # its errors, here
        self._send_ops(ForkMsg(new_run_id, run_id, from_step, time.time(), payload))
        return new_run_id

    def _taken(self, run_id: str) -> bool:
        try:
            return self._ops_run(run_id) is not None
        except (SubmissionRejected, ValueError):  # refused, or waiting in the inbox
            return True


def _candidates(run_id: str) -> Iterator[str]:
    n = 1
    while True:
        yield fork_ids(run_id, n)
        n += 1


def _pause_msg(key: str | None, paused: bool) -> PauseMsg:
    if key is None:
        return PauseMsg(paused, time.time(), "", True)
    if not isinstance(key, str) or not key:
        raise ValueError(f"the key must be a non-empty str, got {key!r}")
    return PauseMsg(paused, time.time(), key)
