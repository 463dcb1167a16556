"""``Runtime``: a supervisor embedded in your process, in a background thread.

It is the same supervisor ``journaled run`` starts, with ``Client``'s
methods answered from memory instead of from files: ``submit`` returns
once the ``Submitted`` record is synced, ``wait`` wakes on the commit that
made the outcome durable.

Every query runs on the caller's thread while holding the supervisor's
``state_lock``, which the loop holds while it changes state (a turn, a
compaction), and returns public copies (``RunOutcome``, ``Attempt``,
``DeadLetter``), never the supervisor's own ``Run`` objects. ``Runtime`` and
``Client`` agree on every shared method: same checks and errors, runs
newest first, inbox runs ``pending`` with an empty history, ``retry`` of a
run with no dead letter raises ``RunNotDead``.

Runners and the forkserver: workers start from a fresh interpreter that
imports the runner's module, so a script that builds a ``Runtime`` must
guard it with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, NoReturn, Sequence

from .api import Attempt, DeadLetter, RunOutcome, RunStatus
from .app import check_runner_name, spec_modules
from .blobs import DEFAULT_THRESHOLD
from .client import Client, dead_letter, merge_dead, merge_runs, pending_outcome, submit_msgs
from .errors import (
    JournaledError,
    RunNotDead,
    RunNotFound,
    RunNotLive,
    RunNotTerminal,
    SubmissionRejected,
)
from .inbox import (
    check_bytes,
    check_run_id,
    check_signal_key,
    pending_submissions,
    rejection,
    seconds,
)
from .journal import Parker
from .limits import MAX_TEXT, check_size
from .ops_client import OpsCalls
from .pool.hygiene import Hygiene
from .quotas import make_quotas
from .state import Policy, Run, State, attempts_of, outcome_of, run_from_snapshot, run_to_snapshot
from .submission import is_plain, new_run_id
from .supervisor import DAY, Future, Supervisor
from .typed import decode_result

_INF = float("inf")


class Runtime(OpsCalls):
    """Run a supervisor in this process.

    Args:
        state_dir: state directory (``str`` or path-like), created 0700.
        runner: ``runner(step)`` function or object with ``run_step(step)``
            (``async def`` too, or a ``journaled.chain``); or several named
            ones, as an ``App`` or a ``{name: runner}`` dict (a run without a
            ``runner=`` name goes to ``default`` if there is one, else the
            first). They must be importable by worker processes (module level).
        workers: worker processes.
        max_attempts: failures a step may have before it is dead-lettered.
        step_timeout: seconds a step may run before it is killed (None: no limit).
        on_terminal: ``hook(outcome)``, at least once per terminal run.
        executor: ``"local"`` (worker processes here) or ``"dask://HOST:PORT"``.
        replay_outputs: accepted for the Taquba-style option; always on here. An
            outcome is durable before the supervisor acts on it, so a step whose
            outcome was journaled is never run again after a crash. The window
            that remains: a step that finished in its worker but whose outcome
            was not yet synced runs again (at-least-once).
        call_timeout: seconds ``submit``/``cancel``/``signal``/``retry`` wait for
            the supervisor to make their records durable before raising
            ``TimeoutError`` (None: as long as the supervisor runs; a stopped
            supervisor always raises at once). Unset, a waiting caller may
            run the journal sync of its run's end itself (one thread hop
            fewer); set, the flusher thread runs every sync, so a stuck disk
            cannot hold a caller past its timeout.
        blob_threshold: inputs, payloads, results and memo values longer than
            this many bytes are stored once under ``STATE/blobs/`` and the
            journal holds only their hash and size (default 64 KiB).
        limits: resource name -> the most leased steps may hold at once
            (``--limit``); a name with no limit is unlimited.
        key_concurrency: most leased steps per run key (0: no limit).
        rates: run key (``"*"``: every key) -> steps per second it may start.
        threads_per_worker: BLAS/OpenMP threads per worker (0: left alone; so
            are they when any of ``OMP_NUM_THREADS`` and friends is set).
        max_steps_per_worker: replace a worker after this many steps (0: never).
        max_worker_rss: MB; a busy worker over it is killed (the step's attempt
            is ``oom``), an idle one replaced (0: no limit).
        pin_workers: pin each worker to one CPU, round-robin.

    Use it as a context manager; leaving the block drains and stops.
    """

    def __init__(self, state_dir: str | os.PathLike[str], runner: Any, workers: int = 2,
                 max_attempts: int = 3, step_timeout: float | timedelta | None = None,
                 on_terminal: Callable[[RunOutcome], Any] | None = None, *,
                 max_abandons: int = 10, cancel_grace: float = 2.0, drain_timeout: float = 30.0,
                 backoff_base: float = 0.5, backoff_cap: float = 60.0,
                 retention: float = 7 * DAY, unsafe_no_fsync: bool = False,
                 replay_outputs: bool = True, executor: str = "local",
                 call_timeout: float | None = None,
                 blob_threshold: int = DEFAULT_THRESHOLD,
                 limits: dict[str, float] | None = None, key_concurrency: int = 0,
                 rates: dict[str, float] | None = None, threads_per_worker: int = 1,
                 max_steps_per_worker: int = 0, max_worker_rss: float = 0.0,
                 pin_workers: bool = False) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        policy = Policy(max_attempts=max_attempts, max_abandons=max_abandons,
                        step_timeout=seconds("step_timeout", step_timeout),
                        backoff_base=backoff_base, backoff_cap=backoff_cap)
        preload = [m for m in spec_modules(runner) if m != "__main__"] or None
        self.state_dir = Path(state_dir)
        self._sup = Supervisor(self.state_dir, runner, workers=workers, policy=policy,
                               on_terminal=on_terminal, cancel_grace=cancel_grace,
                               drain_timeout=drain_timeout, preload=preload,
                               retention=retention, unsafe_no_fsync=unsafe_no_fsync,
                               executor=executor, blob_threshold=blob_threshold,
                               quotas=make_quotas(limits, key_concurrency, rates),
                               hygiene=Hygiene(threads_per_worker, max_steps_per_worker,
                                               max_worker_rss, pin_workers))
        self.blobs = self._sup.blobs
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._client: Client | None = None
        self._call_timeout = call_timeout
        self._sup.caller_syncs = call_timeout is None  # bounded calls never sync themselves

    # ------------------------------------------------------------ lifecycle

    def start(self) -> "Runtime":
        self._sup.start()
        self._thread = threading.Thread(target=self._loop, name="journaled-supervisor",
                                        daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        try:
            self._sup.run()
        except BaseException as e:  # noqa: BLE001 - reported to every caller
            self._error = e

    def close(self, drain: bool = True) -> None:
        """Stop: let in-flight steps finish (``drain``) or abandon them now."""
        if self._thread is None:
            return
        self._sup.request_stop()
        if not drain:
            self._sup.request_stop()
        self._thread.join()
        self._thread = None

    def __enter__(self) -> "Runtime":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def supervisor(self) -> Supervisor:
        return self._sup

    def _check(self) -> None:
        if self._error is not None:
            raise JournaledError(f"the supervisor stopped: {self._error}") from self._error
        if self._thread is None:
            raise JournaledError("the runtime is not started; use 'with Runtime(...) as rt:'")

    # ------------------------------------------------------------- commands

    def _await(self, fut: Future) -> Any:
        """The command's answer once durable; never blocks past the supervisor's end.

        Waits in slices so a supervisor thread that died, or stopped before it
        took the command, raises ``JournaledError`` instead of hanging the
        caller; ``call_timeout`` (if set) bounds a live but stuck supervisor.
        """
        deadline = None if self._call_timeout is None else \
            time.monotonic() + self._call_timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"the supervisor did not answer within {self._call_timeout} "
                                   "s (call_timeout); the command may still take effect")
            try:
                return fut.result(0.25 if left is None else min(left, 0.25))
            except TimeoutError:
                pass
            thread = self._thread
            if self._error is not None or thread is None or not thread.is_alive() \
                    or self._sup.stopped.is_set():
                try:
                    return fut.result(0)  # answered just as it stopped
                except TimeoutError:
                    pass
                self._check()
                raise JournaledError("the supervisor stopped before this was durable; "
                                     "it may or may not take effect after a restart")

    def submit(self, input: Any = b"", headers: dict[str, str] | None = None,
               run_id: str | None = None, *, priority: int = 0, max_attempts: int = 0,
               step_timeout: float | timedelta | None = 0.0, runner: str | None = None,
               resources: dict[str, float] | None = None, key: str | None = None) -> str:
        """Start a run; returns its id once the submission is durable.

        Same checks and errors as ``Client.submit`` (``OverLimit`` for more
        than this runtime's ``limits`` allow).
        """
        if is_plain(input, headers, run_id, runner, priority, max_attempts, step_timeout,
                    resources, key, self.blobs.threshold):
            # The common call, bytes and no options: what submit_msgs would make
            # of it, built directly (every option at its default passes its
            # check as is; an input this small stays inline, MAX_VALUE applies).
            self._check()
            check_size("the input", input)
            rid = new_run_id()
            self._await(self._sup.call("submit_many",
                                       [(rid, input, {}, 0, 0, 0.0, {}, "", "")], True))
            return rid
        return self.submit_many([input], headers, [run_id] if run_id is not None else None,
                                priority=priority, max_attempts=max_attempts,
                                step_timeout=step_timeout, runner=runner,
                                resources=resources, key=key)[0]

    def submit_many(self, inputs: Iterable[Any], headers: dict[str, str] | None = None,
                    run_ids: Sequence[str] | None = None, *, priority: int = 0,
                    max_attempts: int = 0, step_timeout: float | timedelta | None = 0.0,
                    runner: str | None = None, resources: dict[str, float] | None = None,
                    key: str | None = None) -> list[str]:
        """Start many runs with one journal sync; all or nothing.

        Every item (and every duplicate id inside the batch) is checked before
        any is applied: on ``RunConflict`` or a bad item no run of the batch
        was started.
        """
        self._check()
        # Big inputs are written as blobs here, on the caller's thread, before
        # the supervisor sees the command: it only ever gets their refs.
        if runner:
            self._sup.runner_table.check(check_runner_name(runner))
        msgs, ids = submit_msgs(inputs, headers, run_ids, priority, max_attempts, step_timeout,
                                self.blobs, runner, resources=resources, key=key,
                                limits=self._sup.quotas.limits)
        items = [(m.run_id, m.input, m.headers, m.priority, m.max_attempts, m.step_timeout,
                  m.resources, m.key, m.runner) for m in msgs]
        # Ids minted here (run_ids None) are new by construction: the supervisor
        # skips their archive lookup (Intake._run_commands).
        self._await(self._sup.call("submit_many", items, run_ids is None))
        return ids

    def cancel(self, run_id: str, reason: str = "cancelled") -> RunOutcome:
        """Request cancel; returns the status the request found, once it is durable.

        A terminal status in the answer means the cancel lost the race (as ``Client``).
        """
        self._check()
        check_run_id(run_id)
        if not isinstance(reason, str):
            raise TypeError(f"the cancel reason must be a str, got {type(reason).__name__}")
        check_size("the cancel reason", reason, MAX_TEXT)
        try:
            was = RunStatus(self._await(self._sup.call("cancel", run_id, reason)))
        except RunNotFound:
            run = self._archived(run_id)  # finished and archived: the cancel lost the race
            if run is None:
                raise
            return outcome_of(run)
        out = self.status(run_id)
        if out.status.terminal and not was.terminal:
            # It ended after the request was recorded: the cancel did not lose the
            # race, so answer as Client does, with the status the request found.
            out = RunOutcome(run_id, was, None, None, out.steps, out.submitted_at)
        return out

    def retry(self, run_id: str) -> None:
        """Redrive a dead-lettered run's step as a new series of attempts.

        Raises ``RunNotDead`` for a run with no dead-lettered step (as ``Client``).
        """
        out = self.status(run_id)  # RunNotFound, SubmissionRejected, or pending in the inbox
        with self._sup.state_lock:
            run = self._sup.state.runs.get(run_id)
        if run is None:
            run = self._archived(run_id)  # an archived dead letter is brought back to redrive
        if run is None or not run.dead:
            raise RunNotDead(run_id, out.status.value)
        self._check()
        self._await(self._sup.call("redrive", run_id))

    def signal(self, run_id: str, key: str, data: bytes = b"") -> None:
        """Wake the run parked on ``key`` (or buffer it); returns once durable."""
        self._check()
        check_run_id(run_id)
        check_signal_key(key)
        raw = check_bytes("the signal data", data)
        try:
            self._await(self._sup.call("signal", run_id, key, raw))
        except RunNotFound:
            run = self._archived(run_id)
            if run is None:
                raise
            raise RunNotLive(run_id, run.status) from None

    # -------------------------------------------------------------- queries

    def _archived(self, run_id: str) -> Run | None:
        """The run rebuilt from its archive row (asked after the live state: see Client)."""
        row = self._sup.archive_reader.call("get", run_id)
        return None if row is None else row.run()

    def _not_found(self, run_id: str) -> NoReturn:
        """Like ``Client``: a rejected submission says so, anything else is not found."""
        why = rejection(self.state_dir, run_id)
        if why is not None:
            raise SubmissionRejected(run_id, why)
        raise RunNotFound(run_id)

    def history(self, run_id: str) -> list[Attempt]:
        """Every delivery of every step of the run; ``[]`` while it waits in the inbox."""
        with self._sup.state_lock:
            run = self._sup.state.runs.get(run_id)
            if run is not None:
                return attempts_of(run)
        if run_id in pending_submissions(self.state_dir):
            return []
        with self._sup.state_lock:  # taken from the inbox since we looked
            run = self._sup.state.runs.get(run_id)
            if run is not None:
                return attempts_of(run)
        run = self._archived(run_id)
        if run is not None:
            return attempts_of(run)
        self._not_found(run_id)

    def status(self, run_id: str) -> RunOutcome:
        """Where the run is; a run still in the inbox (another process posted it) is pending.

        A result stored as a blob is read (outside the supervisor's lock) into ``result``.
        """
        return self.blobs.resolve_outcome(self._outcome(run_id))

    def _outcome(self, run_id: str) -> RunOutcome:
        """``status`` with a big result left as its ``BlobRef``."""
        out = self._sup.status(run_id)
        if out is not None:
            return out
        out = self._sup.recent_end(run_id)  # ended lately, archived: no inbox listing, no SQLite
        if out is not None:
            return out
        msg = pending_submissions(self.state_dir).get(run_id)
        if msg is not None:
            return pending_outcome(msg)
        out = self._sup.status(run_id)  # taken from the inbox since we looked
        if out is not None:
            return out
        run = self._archived(run_id)
        if run is not None:
            return outcome_of(run)
        self._not_found(run_id)

    def wait(self, run_id: str, timeout: float | timedelta | None = None) -> RunOutcome:
        """Block until the run's outcome is durable; builtin ``TimeoutError`` otherwise."""
        kind = type(timeout)
        if (kind is float or kind is int) and 0 <= timeout < _INF:  # type: ignore[operator]
            limit: float | None = float(timeout)  # the common call, checked inline (no bool)
        else:
            limit = None if timeout is None or timeout == _INF else seconds("timeout", timeout)
        deadline = None if limit is None else time.monotonic() + limit
        sup = self._sup
        ev: Parker | None = None
        out: RunOutcome | None
        try:
            while True:
                with sup.state_lock:  # no commit between the look and the subscription
                    run = sup.state.runs.get(run_id)
                    if run is not None:
                        # Live: what sup.status says, without building an outcome
                        # until it is the durable end (the common case, twice a wait).
                        if run_id in sup.outcomes:
                            out = outcome_of(run)
                            break
                        out = None
                    else:
                        out = self._outcome(run_id)
                        if out.status.terminal:
                            break
                    if self._error is not None or sup.stopped.is_set():
                        self._check()
                        raise JournaledError("the runtime stopped before the run finished")
                    if ev is None:
                        ev = Parker()
                    # Set (and taken off the list) by the commit that makes this
                    # run's end durable: only this run's waiters wake, not every
                    # waiter at every commit. Put back if a redrive undid that end.
                    evs = sup.run_waiters.setdefault(run_id, [])
                    if ev not in evs:
                        evs.append(ev)
                    ev.clear()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    if out is None:
                        out = self._outcome(run_id)
                    raise TimeoutError(f"run {run_id!r} is still {out.status.value} after "
                                       f"{limit:g} s")
                # Wake now and then: a run still in the inbox is taken without a commit
                # notification of its own, and a supervisor thread may die silently.
                pause = 1.0 if left is None else min(left, 1.0)
                fl = sup._flusher
                if fl is None or not sup.caller_syncs:
                    ev.wait(pause)
                else:
                    # Parked as the flusher's guest: the sync of this run's end (or
                    # any other) may run on this thread, which then acts on it and
                    # finds its own parker set, one hand-off fewer (Flusher.park).
                    fl.park(ev, pause)
        finally:
            # Only this thread adds `ev`, the commit that sets it takes the list
            # away: not in it now, it never will be again (no lock to know that).
            mine = sup.run_waiters.get(run_id) if ev is not None else None
            if mine is not None and ev in mine:
                with sup.state_lock:
                    mine = sup.run_waiters.get(run_id)
                    if mine is not None and ev in mine:
                        mine.remove(ev)
                        if not mine:
                            del sup.run_waiters[run_id]
        assert out is not None  # set by the look that broke the loop
        return self.blobs.resolve_outcome(out)  # a big result is read without the lock

    def _result_value(self, run_id: str) -> Any:
        out = self._outcome(run_id)
        if not out.status.terminal:
            raise RunNotTerminal(run_id, out.status.value)
        return out.result or b""

    def result(self, run_id: str, type: Any = None) -> Any:
        """As ``Client.result``: bytes, or with ``type`` the msgpack result decoded as it."""
        data = self.blobs.resolve(self._result_value(run_id)) or b""
        return data if type is None else decode_result(type, data)

    def result_view(self, run_id: str) -> memoryview:
        """As ``Client.result_view``: zero-copy over an ``mmap`` for a big result."""
        return self.blobs.resolve_view(self._result_value(run_id)).toreadonly()

    def open_result(self, run_id: str) -> BinaryIO:
        """As ``Client.open_result``: the result as a binary file to stream."""
        return self.blobs.open_value(self._result_value(run_id))

    def runs(self, status: str | RunStatus | None = None, since: float | None = None,
             limit: int | None = 100) -> list[RunOutcome]:
        """Runs newest first, live (inbox ones ``pending``) and archived, like ``Client.runs``."""
        sup = self._sup
        with sup.state_lock:
            out = [o for o in (sup.status(r) for r in sup.state.runs) if o is not None]
            known = set(sup.state.runs)
        out += [pending_outcome(m) for rid, m in pending_submissions(self.state_dir).items()
                if rid not in known]
        want = RunStatus(status) if status is not None else None
        rows = [] if want is not None and not want.terminal else \
            sup.archive_reader.call("runs", want and want.value, since, limit) or []
        return [self.blobs.resolve_outcome(o) for o in
                merge_runs(out, [r.outcome() for r in rows], status, since, limit)]

    def dead(self, limit: int | None = 100) -> list[DeadLetter]:
        """Dead-lettered runs (durably), live and archived, newest first; copies only."""
        sup = self._sup
        with sup.state_lock:
            live = [dead_letter(r) for r in sup.state.runs.values()
                    if r.dead and r.run_id in sup.outcomes]
        rows = sup.archive_reader.call("runs", "failed", None, limit, True) or []
        return merge_dead(live, [r.dead_letter() for r in rows], limit)

    # Operator calls (ops_client.OpsCalls): queued commands, answered once durable.

    def _send_ops(self, msg: Any) -> None:
        self._check()
        self._await(self._sup.call("ops", msg))

    def _ops_state(self) -> State:
        """Copies of the schedules and pauses, taken under the state lock."""
        out = State()
        with self._sup.state_lock:
            live = self._sup.state
            out.schedules.restore(live.schedules.snapshot())
            out.pauses.restore(live.pauses.snapshot())
        return out

    def _ops_run(self, run_id: str) -> Run | None:
        with self._sup.state_lock:
            run = self._sup.state.runs.get(run_id)
            if run is not None:
                return run_from_snapshot(run_to_snapshot(run))  # a copy: the loop mutates it
        if run_id in pending_submissions(self.state_dir):
            raise ValueError(f"run {run_id} has not started yet (it waits in the inbox)")
        return self._archived(run_id)

    def client(self) -> Client:
        """A file-based client on the same state directory."""
        if self._client is None:
            self._client = Client(self.state_dir, self._sup.blob_threshold)
        return self._client
