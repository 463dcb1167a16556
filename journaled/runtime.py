"""``Runtime``: a supervisor embedded in your process, in a background thread.

It is the same supervisor ``journaled run`` starts, with ``Client``'s
methods answered from memory instead of from files: ``submit`` returns
once the ``Submitted`` record is synced, ``wait`` wakes on the commit that
made the outcome durable.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .api import Attempt, RunOutcome, RunStatus
from .client import Client, _submit_msgs, check_run_id
from .errors import JournaledError, RunNotFound, RunNotTerminal
from .state import Policy, Run, attempts_of
from .supervisor import DAY, Supervisor


def _seconds(x: float | timedelta | None) -> float:
    if x is None:
        return 0.0
    return x.total_seconds() if isinstance(x, timedelta) else float(x)


class Runtime:
    """Run a supervisor in this process.

    Args:
        state_dir: state directory (``str`` or path-like), created 0700.
        runner: ``runner(step)`` function or object with ``run_step(step)``;
            it must be importable by worker processes (module level).
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

    Use it as a context manager; leaving the block drains and stops.
    """

    def __init__(self, state_dir: str | os.PathLike[str], runner: Any, workers: int = 2,
                 max_attempts: int = 3, step_timeout: float | timedelta | None = None,
                 on_terminal: Callable[[RunOutcome], Any] | None = None, *,
                 max_abandons: int = 10, cancel_grace: float = 2.0, drain_timeout: float = 30.0,
                 backoff_base: float = 0.5, backoff_cap: float = 60.0,
                 retention: float = 7 * DAY, unsafe_no_fsync: bool = False,
                 replay_outputs: bool = True, executor: str = "local") -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        policy = Policy(max_attempts=max_attempts, max_abandons=max_abandons,
                        step_timeout=_seconds(step_timeout), backoff_base=backoff_base,
                        backoff_cap=backoff_cap)
        mod = getattr(runner, "__module__", None) or type(runner).__module__
        preload = [mod] if mod and mod != "__main__" else None
        self.state_dir = Path(state_dir)
        self._sup = Supervisor(self.state_dir, runner, workers=workers, policy=policy,
                               on_terminal=on_terminal, cancel_grace=cancel_grace,
                               drain_timeout=drain_timeout, preload=preload,
                               retention=retention, unsafe_no_fsync=unsafe_no_fsync,
                               executor=executor)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._client: Client | None = None

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

    def submit(self, input: bytes = b"", headers: dict[str, str] | None = None,
               run_id: str | None = None, *, priority: int = 0, max_attempts: int = 0,
               step_timeout: float = 0.0) -> str:
        """Start a run; returns its id once the submission is durable."""
        return self.submit_many([input], headers, [run_id] if run_id is not None else None,
                                priority=priority, max_attempts=max_attempts,
                                step_timeout=step_timeout)[0]

    def submit_many(self, inputs: Iterable[bytes], headers: dict[str, str] | None = None,
                    run_ids: Sequence[str] | None = None, *, priority: int = 0,
                    max_attempts: int = 0, step_timeout: float = 0.0) -> list[str]:
        """Start many runs with one journal sync."""
        self._check()
        msgs = _submit_msgs(inputs, headers, run_ids, priority, max_attempts, step_timeout)
        items = [(m.run_id, m.input, m.headers, m.priority, m.max_attempts, m.step_timeout)
                 for m in msgs]
        self._sup.call("submit_many", items).result()
        return [m.run_id for m in msgs]

    def cancel(self, run_id: str, reason: str = "cancelled") -> RunOutcome:
        """Request cancel; returns the status right after the request is durable."""
        self._check()
        check_run_id(run_id)
        self._sup.call("cancel", run_id, reason).result()
        return self.status(run_id)

    def retry(self, run_id: str) -> None:
        """Redrive a dead-lettered run's step as a new series of attempts."""
        self._check()
        self._sup.call("redrive", run_id).result()

    def signal(self, run_id: str, key: str, data: bytes = b"") -> None:
        """Wake the run parked on ``key`` (or buffer it); returns once durable."""
        self._check()
        if not isinstance(key, str) or not key:
            raise ValueError("signal key must be a non-empty str")
        self._sup.call("signal", run_id, key, bytes(data)).result()

    def history(self, run_id: str) -> list[Attempt]:
        """Every delivery of every step of the run (durable or in flight)."""
        run = self._sup.state.runs.get(run_id)
        if run is None:
            raise RunNotFound(run_id)
        return attempts_of(run)

    # -------------------------------------------------------------- queries

    def status(self, run_id: str) -> RunOutcome:
        out = self._sup.status(run_id)
        if out is None:
            raise RunNotFound(run_id)
        return out

    def wait(self, run_id: str, timeout: float | None = None) -> RunOutcome:
        """Block until the run's outcome is durable; builtin ``TimeoutError`` otherwise."""
        deadline = None if timeout is None else time.monotonic() + timeout
        sup = self._sup
        with sup.cond:
            while True:
                out = self.status(run_id)
                if out.status.terminal:
                    return out
                if self._error is not None or sup.stopped.is_set():
                    self._check()
                    raise JournaledError("the runtime stopped before the run finished")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"run {run_id!r} is still {out.status.value} after "
                                       f"{timeout} s")
                sup.cond.wait(left)

    def result(self, run_id: str) -> bytes:
        out = self.status(run_id)
        if not out.status.terminal:
            raise RunNotTerminal(run_id, out.status.value)
        return out.result or b""

    def runs(self, status: str | RunStatus | None = None) -> list[RunOutcome]:
        ids = list(self._sup.state.runs)
        out = [o for o in (self._sup.status(r) for r in ids) if o is not None]
        if status is not None:
            want = RunStatus(status)
            out = [o for o in out if o.status == want]
        return out

    def dead(self) -> list[Run]:
        """Runs whose step was dead-lettered."""
        return [r for r in list(self._sup.state.runs.values())
                if r.dead and r.run_id in self._sup.outcomes]

    def client(self) -> Client:
        """A file-based client on the same state directory."""
        if self._client is None:
            self._client = Client(self.state_dir)
        return self._client
