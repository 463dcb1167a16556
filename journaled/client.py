"""``Client``: submit, cancel and query runs from any process, supervisor or not.

A client never takes the writer's lock and never talks to workers. It
writes requests into the inbox (durable on return) and reads the journal
incrementally: each call folds only the records appended since the last
one, through the same ``State`` the supervisor uses, so what a client
reports is exactly what is durable. A torn tail being written is skipped
until it is whole; a segment removed by compaction makes the reader start
over from the snapshot.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path
from typing import Iterable, Sequence

from . import replay
from .api import Attempt, RunOutcome, RunStatus
from .errors import (
    InvalidRunId,
    RunConflict,
    RunNotFound,
    RunNotLive,
    RunNotTerminal,
)
from .inbox import BatchMsg, CancelMsg, RedriveMsg, SignalMsg, SubmitMsg, inbox_dir, post
from .journal import JournalTailer
from .notify import DirWatcher
from .state import Run, State, attempts_of, outcome_of

_RUN_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def check_run_id(run_id: object) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise InvalidRunId(run_id)
    return run_id


def new_run_id() -> str:
    """Time-ordered and unique: ids sort in submission order."""
    return f"r-{time.time_ns():x}-{uuid.uuid4().hex[:8]}"


def check_headers(headers: dict[str, str] | None) -> dict[str, str]:
    out = dict(headers or {})
    for k, v in out.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"headers must map str to str, got {k!r}: {v!r}")
    return out


class Client:
    """Talk to a state directory from any process.

    Args:
        state_dir: the supervisor's state directory (``str`` or path-like).
    """

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._journal_dir = self.state_dir / "journal"
        self._journal_dir.mkdir(mode=0o700, exist_ok=True)
        self._tailer = JournalTailer(self._journal_dir)
        self.state = State()

    # ------------------------------------------------------------- reading

    def refresh(self) -> State:
        """Fold the records appended since the last call."""
        # Only records behind the synced mark: never an outcome a power cut could undo.
        reset, frames = self._tailer.poll_frames()
        if reset:
            self.state = State()
        return replay.apply_all(self.state, replay.decode_all(frames))

    def _pending(self) -> dict[str, SubmitMsg]:
        """Submissions still waiting in the inbox (no supervisor has taken them yet)."""
        out: dict[str, SubmitMsg] = {}
        d = inbox_dir(self.state_dir)
        try:
            names = sorted(n for n in os.listdir(d) if not n.startswith(".") and n != "rejected")
        except FileNotFoundError:
            return out
        from .inbox import _dec  # one decoder for the message union

        for name in names:
            try:
                msg = _dec.decode((d / name).read_bytes())
            except Exception:  # noqa: BLE001 - taken or bad: the supervisor decides
                continue
            items = msg.items if isinstance(msg, BatchMsg) else [msg]
            for m in items:
                if isinstance(m, SubmitMsg):
                    out.setdefault(m.run_id, m)
        return out

    def status(self, run_id: str) -> RunOutcome:
        """Where the run is; ``RunNotFound`` if it is neither journaled nor in the inbox."""
        run = self.refresh().runs.get(run_id)
        if run is not None:
            return outcome_of(run)
        msg = self._pending().get(run_id)
        if msg is None:
            # It may have been journaled between our read and the inbox listing.
            run = self.refresh().runs.get(run_id)
            if run is not None:
                return outcome_of(run)
            raise RunNotFound(run_id)
        return RunOutcome(run_id, RunStatus.PENDING, None, None, 0, msg.at, None)

    def runs(self, status: str | RunStatus | None = None) -> list[RunOutcome]:
        """Every known run (inbox ones as ``pending``), oldest first."""
        state = self.refresh()
        out = [outcome_of(r) for r in state.runs.values()]
        for rid, msg in self._pending().items():
            if rid not in state.runs:
                out.append(RunOutcome(rid, RunStatus.PENDING, None, None, 0, msg.at, None))
        if status is not None:
            want = RunStatus(status)
            out = [o for o in out if o.status == want]
        out.sort(key=lambda o: (o.submitted_at or 0.0, o.run_id))
        return out

    def result(self, run_id: str) -> bytes:
        """The result bytes of a succeeded run; ``RunNotTerminal`` while it is live."""
        out = self.status(run_id)
        if not out.status.terminal:
            raise RunNotTerminal(run_id, out.status.value)
        return out.result or b""

    def wait(self, run_id: str, timeout: float | None = None) -> RunOutcome:
        """Block until the run is terminal; builtin ``TimeoutError`` if it is not in time.

        Sleeps on file-change notification of the journal, not a poll loop.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with DirWatcher(self._journal_dir) as watcher:
            while True:
                out = self.status(run_id)
                if out.status.terminal:
                    return out
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"run {run_id!r} is still {out.status.value} after "
                                       f"{timeout} s")
                # Wake at least every second: a compaction may swap directories.
                watcher.wait(1.0 if left is None else min(left, 1.0))

    def history(self, run_id: str) -> list[Attempt]:
        """Every delivery of every step of the run, oldest first."""
        run = self.refresh().runs.get(run_id)
        if run is None:
            if run_id in self._pending():
                return []
            raise RunNotFound(run_id)
        return attempts_of(run)

    def dead(self) -> list[Run]:
        """Runs whose step was dead-lettered (terminal ``failed`` with ``dead``)."""
        return [r for r in self.refresh().runs.values() if r.dead]

    # ------------------------------------------------------------- writing

    def submit(self, input: bytes = b"", headers: dict[str, str] | None = None,
               run_id: str | None = None, *, priority: int = 0, max_attempts: int = 0,
               step_timeout: float = 0.0) -> str:
        """Queue a run; returns its id once the request is durable in the inbox.

        Re-submitting an id with the same input and headers is a no-op;
        with other input it raises ``RunConflict``.
        """
        return self.submit_many([input], headers, [run_id] if run_id is not None else None,
                                priority=priority, max_attempts=max_attempts,
                                step_timeout=step_timeout)[0]

    def submit_many(self, inputs: Iterable[bytes], headers: dict[str, str] | None = None,
                    run_ids: Sequence[str] | None = None, *, priority: int = 0,
                    max_attempts: int = 0, step_timeout: float = 0.0) -> list[str]:
        """Queue many runs with one inbox file and one fsync."""
        items = _submit_msgs(inputs, headers, run_ids, priority, max_attempts, step_timeout)
        state = self.refresh()
        waiting = self._pending() if run_ids is not None else {}
        fresh = []
        for m in items:
            old = state.runs.get(m.run_id) or waiting.get(m.run_id)
            if old is not None:
                if old.input != m.input or old.headers != m.headers:
                    raise RunConflict(m.run_id)
                continue
            fresh.append(m)
        if len(fresh) == 1:
            post(self.state_dir, fresh[0])
        elif fresh:
            post(self.state_dir, BatchMsg(fresh))
        return [m.run_id for m in items]

    def cancel(self, run_id: str, reason: str = "cancelled") -> RunOutcome:
        """Ask for the run to be cancelled; returns its status as seen now.

        A terminal status in the answer means the cancel lost the race.
        """
        out = self.status(run_id)
        if not out.status.terminal:
            post(self.state_dir, CancelMsg(run_id, reason, time.time()))
        return out

    def signal(self, run_id: str, key: str, data: bytes = b"") -> None:
        """Send ``data`` to the run's ``ContinueOnSignal(key=...)``; buffered until it waits.

        Raises ``RunNotFound`` for an unknown run and ``RunNotLive`` for a finished one.
        """
        if not isinstance(key, str) or not key:
            raise ValueError("signal key must be a non-empty str")
        out = self.status(run_id)
        if out.status.terminal:
            raise RunNotLive(run_id, out.status.value)
        post(self.state_dir, SignalMsg(run_id, key, bytes(data), time.time()))

    def retry(self, run_id: str) -> None:
        """Redrive a dead-lettered run's step as a new attempt series."""
        run = self.refresh().runs.get(run_id)
        if run is None:
            raise RunNotFound(run_id)
        if not run.dead:
            from .errors import JournaledError

            raise JournaledError(f"run {run_id!r} has no dead-lettered step "
                                 f"(it is {run.status}); 'journaled dead' lists those that do")
        post(self.state_dir, RedriveMsg(run_id, time.time()))


def _submit_msgs(inputs: Iterable[bytes], headers: dict[str, str] | None,
                 run_ids: Sequence[str] | None, priority: int, max_attempts: int,
                 step_timeout: float) -> list[SubmitMsg]:
    hdrs = check_headers(headers)
    now = time.time()
    out = []
    ins = list(inputs)
    if run_ids is not None and len(run_ids) != len(ins):
        raise ValueError(f"got {len(ins)} inputs but {len(run_ids)} run ids")
    for i, data in enumerate(ins):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"input must be bytes, got {type(data).__name__}")
        rid = check_run_id(run_ids[i]) if run_ids is not None else new_run_id()
        out.append(SubmitMsg(rid, bytes(data), now, hdrs, priority, max_attempts, step_timeout))
    return out
