"""``Harness``: one supervisor, turned by hand, on a fake clock.

The supervisor is the real one (``journaled.supervisor.Supervisor``): the
harness only calls ``turn()`` itself instead of leaving it to a thread, and
runs the steps an inline executor was handed in between (see
``journaled.executors.inline``). A turn never blocks on the fake clock: due
times are read from it, and ``advance`` moves it from one due time to the
next, running whatever falls due at each, as the hour would have.

The commands (``submit``, ``signal``, ``cancel``, ``retry``) go through the
supervisor's own command queue and return once their records are durable,
exactly as ``Runtime``'s do; the queries are ``Runtime``'s own methods. No
command runs a step: ``run_until_idle`` (or ``advance``) does.

``crash()`` is a ``kill -9`` of the supervisor process (not a power loss):
records already written to the journal file stay, the turn's unwritten
ones, unsent steps, unreported results and unanswered commands are gone;
then a new supervisor replays the journal from disk, and every step that
was leased comes back as a new attempt (``step.attempts`` + 1).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable

from ..api import Attempt, DeadLetter, RunOutcome, Signal, Step
from ..blobs import DEFAULT_THRESHOLD
from ..clock import FakeClock
from ..errors import JournaledError
from ..executors.inline import InlineExecutor
from ..inbox import seconds
from ..intake import Future
from ..quotas import make_quotas
from ..runtime import Runtime
from ..state import Policy, WorkerResult
from ..supervisor import DAY, Supervisor

MAX_ROUNDS = 100_000  # turns run_until_idle takes before it calls the runner stuck


class HarnessError(JournaledError):
    """The harness could not settle (a runner that never stops, a step that never returns)."""


@dataclass(frozen=True)
class StepCall:
    """One call of the runner, as the inline worker saw it (``Harness.steps``).

    ``kind`` is what the call amounted to: ``continue`` (``Continue``,
    ``ContinueAfter``, ``ContinueOnSignal``), ``succeed``, ``fail``, ``cancel``,
    ``error`` (it raised, or returned something wrong) or ``cancelled``
    (it raised on its token). ``crashed``: the harness crashed right after
    it, so its result was never reported.
    """

    run_id: str
    step: int
    attempt: int
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)
    signal: Signal | None = None
    kind: str = ""
    output: bytes = b""
    delay: float = 0.0
    key: str = ""
    error: str = ""
    crashed: bool = False


class _Crash(BaseException):
    """Raised after a step the test asked to crash at; never leaves the harness."""


class _Driven(Runtime):
    """``Runtime``'s commands and queries over a supervisor the harness turns."""

    def __init__(self, harness: Harness, sup: Supervisor) -> None:  # noqa: D107
        # Not Runtime.__init__: the harness builds the supervisor (clock, executor).
        self._h = harness
        self._sup = sup
        self.state_dir = sup.state_dir
        self.blobs = sup.blobs
        self._thread = None
        self._error = None
        self._client = None
        self._call_timeout = None

    def _check(self) -> None:
        if self._h._sup is not self._sup or self._sup.stopped.is_set():
            raise JournaledError("the harness is closed; use 'with Harness(...) as h:'")

    def _await(self, fut: Future) -> Any:
        return self._h._until_answered(fut)

    def wait(self, run_id: str, timeout: float | timedelta | None = None) -> RunOutcome:
        self._h.run_until_idle()
        return self.status(run_id)


class Harness:
    """A runner, a real journal in a temporary directory, a fake clock.

    Args:
        runner: ``runner(step)`` or an object with ``run_step(step)``.
        workers: ``"inline"`` (default): steps run on the calling thread, one
            at a time. An int: that many real worker processes (the
            forkserver pool ``journaled run`` uses; the runner must then be
            importable by module name, and a step's time is real time).
        state_dir: where the journal goes (default: a fresh temporary
            directory, removed by ``close`` unless ``keep=True``).
        clock: a ``FakeClock`` to share (default: a new one at the real time).
        max_attempts, backoff_base, backoff_cap, step_timeout, cancel_grace,
        retention, blob_threshold, on_terminal: as for ``Runtime``. A step
        timeout counts fake seconds, and an inline step cannot be killed.
        fsync: sync the journal for real (default off: a harness crash is a
            process crash, which keeps what was written anyway).
        limits, key_concurrency, rates: ``journaled run --limit``,
            ``--key-concurrency`` and ``--rate`` (runs name theirs at submit:
            ``resources=``, ``key=``). A rate counts fake seconds: a key held
            back by its rate gets its next token in ``advance``.
        A runner may be an ``App`` or a dict of named runners (submit with
        ``runner=NAME``), a ``journaled.chain``, ``async`` or ``@typed``.
    """

    def __init__(self, runner: Any, *, workers: int | str = "inline",
                 state_dir: str | os.PathLike[str] | None = None,
                 clock: FakeClock | None = None, max_attempts: int = 3,
                 backoff_base: float = 0.5, backoff_cap: float = 60.0,
                 step_timeout: float | timedelta | None = None, cancel_grace: float = 2.0,
                 retention: float = 7 * DAY, blob_threshold: int = DEFAULT_THRESHOLD,
                 on_terminal: Callable[[RunOutcome], Any] | None = None,
                 fsync: bool = False, keep: bool = False,
                 limits: dict[str, float] | None = None, key_concurrency: int = 0,
                 rates: dict[str, float] | None = None) -> None:
        if workers != "inline" and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be 'inline' or an int >= 1, got {workers!r}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.runner = runner
        self.workers = workers
        self.clock = clock if clock is not None else FakeClock()
        self.policy = Policy(max_attempts=max_attempts,
                             step_timeout=seconds("step_timeout", step_timeout),
                             backoff_base=backoff_base, backoff_cap=backoff_cap)
        self._own_dir = state_dir is None
        self.state_dir = Path(state_dir) if state_dir is not None else \
            Path(tempfile.mkdtemp(prefix="journaled-harness-"))
        self.keep = keep
        self._opts = dict(cancel_grace=cancel_grace, retention=retention,
                          blob_threshold=blob_threshold, on_terminal=on_terminal,
                          unsafe_no_fsync=not fsync,
                          # --limit, --key-concurrency and --rate, as Runtime takes them
                          quotas=make_quotas(limits, key_concurrency, rates))
        self._calls: list[StepCall] = []
        self._crash_when: Callable[[StepCall], bool] | None = None
        self._crashes = 0
        self._sup: Supervisor | None = None
        self._rt: _Driven | None = None
        self._ex: InlineExecutor | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Harness:
        """Open the journal (replaying what is there) and start the workers."""
        if self._sup is not None:
            return self
        ex: Any = "local"
        self._ex = None
        if self.workers == "inline":
            self._ex = InlineExecutor(self.runner, 1, self.state_dir,
                                      self._opts["blob_threshold"])  # type: ignore[arg-type]
            self._ex.pump = self._pump
            self._ex.after_step = self._after_step
            ex = self._ex
        mod = getattr(self.runner, "__module__", None) or type(self.runner).__module__
        sup = Supervisor(self.state_dir, self.runner,
                         workers=1 if self.workers == "inline" else int(self.workers),
                         policy=self.policy, executor=ex, serve_socket=False, clock=self.clock,
                         preload=[mod] if mod and mod != "__main__" else None,
                         **self._opts)  # type: ignore[arg-type]
        sup.gather = 0.0  # one thread drives it: nothing to gather for
        sup.start()
        self._sup = sup
        self._rt = _Driven(self, sup)
        return self

    def close(self) -> None:
        """Drain (steps already leased finish) and stop; removes a temporary state dir."""
        sup = self._sup
        if sup is None:
            return
        try:
            sup.request_stop()
            for _ in range(MAX_ROUNDS):
                if sup.stopped.is_set() or sup._all_workers_gone():
                    break
                self._round()
        finally:
            sup.close()
            self._sup = self._rt = None
            if self._own_dir and not self.keep:
                shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> Harness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def supervisor(self) -> Supervisor:
        """The supervisor being driven (for assertions on its internals; it changes at a crash)."""
        return self._live()

    def _live(self) -> Supervisor:
        if self._sup is None:
            raise JournaledError("the harness is not started; use 'with Harness(...) as h:'")
        return self._sup

    def _runtime(self) -> _Driven:
        self._live()
        assert self._rt is not None
        return self._rt

    # ------------------------------------------------------------- driving

    def _round(self) -> int:
        """One supervisor turn, then the steps it handed to the inline worker."""
        sup = self._live()
        wait = bool(sup._written) or (self._ex is None and bool(sup.state.in_flight)) or \
            (sup._hooks is not None and sup._hooks.busy())
        # Blocks only for another thread: the flusher's sync, a worker process,
        # a hook; each wakes the turn when it is done. Not for the archiver,
        # which gathers finished runs for half a second: queries read the
        # archive when a run has left the journal, so nobody needs to wait.
        sup.turn(0.05 if wait else 0.0)
        if self._ex is None:
            return 0
        try:
            return self._ex.run_pending()
        except _Crash:
            self.crash()
            return 1

    def _pump(self) -> None:
        """A turn without running steps (a memo put waits on it inside a step)."""
        self._live().turn(0.05 if self._live()._written else 0.0)

    def _busy(self) -> bool:
        sup = self._live()
        st = sup.state
        due = st.next_due()
        # Ready runs with nothing in flight and a rate token still to come are
        # held by --rate: idle until ``advance`` reaches the token.
        held = sup._quota_wake is not None and sup._quota_wake > self.clock.monotonic()
        return bool(sup._written or sup._commands or sup._carry or sup._recs or st.in_flight
                    or (st.has_ready() and not held)
                    or (due is not None and due <= self.clock.now())
                    or (self._ex is not None and self._ex.pending())
                    or (sup._hooks is not None and sup._hooks.busy()))

    def run_until_idle(self, max_rounds: int = MAX_ROUNDS) -> int:
        """Run every step that is due now (and what those make due now); returns steps run.

        Returns when nothing is due at the clock's current time: runs are
        finished, waiting for a later time (``advance``) or a signal. Raises
        ``HarnessError`` if it never settles (a runner that always continues).
        """
        ran = 0
        quiet = 0
        for _ in range(max_rounds):
            sup = self._live()
            before = (sup.journal.records_written, self._crashes)
            n = self._round()
            ran += n
            sup = self._live()
            moved = n or (sup.journal.records_written, self._crashes) != before
            if moved or self._busy():
                quiet = 0
            else:
                quiet += 1
                if quiet >= 2:
                    return ran
        busy = sorted(self._live().state.in_flight)[:5]
        raise HarnessError(f"still busy after {max_rounds} turns (in flight: {busy}); does a "
                           "runner continue forever?")

    def advance(self, seconds: float | timedelta) -> int:
        """Move the clock ``seconds`` ahead, running what falls due on the way; returns steps run.

        Due times are visited in order: a step delayed 10 s that delays again
        by 10 s runs twice in ``advance(30)``, as it would in 30 real seconds.
        """
        secs = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
        if not secs >= 0:
            raise ValueError(f"advance() takes seconds >= 0, got {seconds!r}")
        target = self.clock.now() + secs
        ran = self.run_until_idle()
        for _ in range(MAX_ROUNDS):
            due = self._next_due()
            if due is None or due > target:
                break
            if due > self.clock.now():
                self.clock.advance(due - self.clock.now())
            else:
                # Idle with a timer due: a stale one (its run was cancelled or
                # moved on). Pop it as a turn would, or it hides the next one.
                self._live().state.due_runs(self.clock.now(), 0)
                if self._live().state.next_due() == due:
                    break
            ran += self.run_until_idle()
        else:
            raise HarnessError("timers keep falling due; does a runner delay forever?")
        if target > self.clock.now():
            self.clock.advance(target - self.clock.now())
        return ran + self.run_until_idle()

    def _next_due(self) -> float | None:
        """The clock time of the next timer, or of the next token a rate-limited key waits for."""
        sup = self._live()
        due = sup.state.next_due()
        wake = sup._quota_wake  # the clock's monotonic time, as the leasing pass saw it
        if wake is not None:
            t = self.clock.now() + max(0.0, wake - self.clock.monotonic())
            due = t if due is None else min(due, t)
        return due

    def _until_answered(self, fut: Future) -> Any:
        for _ in range(MAX_ROUNDS):
            if fut.done():
                break
            sup = self._live()
            sup.turn(0.05 if sup._written else 0.0)  # commands run no steps
        return fut.result(0)

    # --------------------------------------------------------------- crash

    def crash_after(self, when: Callable[[StepCall], bool] | None = None) -> None:
        """Crash right after the next step ``when(call)`` accepts (any step if None).

        The runner has run (its side effects happened) and its result is lost:
        after the replay the same step runs again as a new attempt. One-shot.
        """
        self._crash_when = when or (lambda _call: True)

    def _after_step(self, step: Step, res: WorkerResult) -> None:
        call = StepCall(step.run_id, step.step_number, step.attempts, bytes(step.payload),
                        dict(step.headers), step.signal, res.kind,
                        res.data if isinstance(res.data, bytes) else b"", res.delay, res.key,
                        res.error)
        when = self._crash_when
        if when is not None and when(call):
            self._crash_when = None
            self._calls.append(replace(call, crashed=True))
            raise _Crash()
        self._calls.append(call)

    def crash(self) -> None:
        """``kill -9`` the supervisor, then start a new one that replays the journal.

        What was written to the journal file survives (a process crash, not a
        power loss); everything else in flight is dropped: the turn's
        unwritten records, steps leased but not run or not reported, results
        not yet read, commands not yet answered, hooks not yet fired.
        """
        sup = self._live()
        # What close() would still sync and act on: gone, as in a kill -9.
        sup._written.clear()
        sup._recs, sup._carry = [], []
        sup._commands.clear()
        sup.close()
        self._sup = self._rt = None
        self._crashes += 1
        self.start()

    @property
    def crashes(self) -> int:
        return self._crashes

    # ------------------------------------------------------------ commands

    def submit(self, input: bytes = b"", headers: dict[str, str] | None = None,
               run_id: str | None = None, **options: Any) -> str:
        """Start a run (durable on return; nothing runs until ``run_until_idle``).

        ``options`` are ``Runtime.submit``'s keywords (``priority``,
        ``max_attempts``, ``step_timeout``, ...).
        """
        return self._runtime().submit(input, headers, run_id, **options)

    def submit_many(self, inputs: Iterable[bytes], headers: dict[str, str] | None = None,
                    run_ids: list[str] | None = None, **options: Any) -> list[str]:
        return self._runtime().submit_many(inputs, headers, run_ids, **options)

    def signal(self, run_id: str, key: str, data: bytes = b"") -> None:
        """Send a signal (durable on return); the woken step runs at ``run_until_idle``."""
        self._runtime().signal(run_id, key, data)

    def cancel(self, run_id: str, reason: str = "cancelled") -> RunOutcome:
        return self._runtime().cancel(run_id, reason)

    def retry(self, run_id: str) -> None:
        self._runtime().retry(run_id)

    # ------------------------------------------------------------- queries

    def status(self, run_id: str) -> RunOutcome:
        return self._runtime().status(run_id)

    def result(self, run_id: str) -> bytes:
        """The result of a finished run (``RunNotTerminal`` before)."""
        return self._runtime().result(run_id)

    def history(self, run_id: str) -> list[Attempt]:
        return self._runtime().history(run_id)

    def runs(self, status: str | None = None) -> list[RunOutcome]:
        return self._runtime().runs(status, limit=None)

    def dead(self) -> list[DeadLetter]:
        return self._runtime().dead(limit=None)

    def steps(self, run_id: str | None = None) -> list[StepCall]:
        """What ran, in order (``workers="inline"`` only): every call of the runner."""
        if self.workers != "inline":
            raise HarnessError("steps() sees inline steps only; use history() with workers=N")
        return [c for c in self._calls if run_id is None or c.run_id == run_id]

