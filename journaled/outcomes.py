"""What one attempt's result becomes (a mixin of ``State``).

A worker answers with a ``WorkerResult``; ``complete`` turns it into the
records of one transition: the next step, the end of the run, or a retry
after a backoff under the supervisor's ``Policy``. It is its own module
because it is the one command whose input comes from a worker rather than
a caller, and because the pool, the executors and the harness need
``WorkerResult`` without the whole fold. Pure: time and jitter come in as
arguments.
"""

from __future__ import annotations

from typing import Callable, Union

import msgspec

from . import fanout
from .blobs import BlobRef
from .records import AttemptFailed, Record, StepDone, Terminated
from .run import CANCELLED, FAILED, SUCCEEDED, Run


class Policy(msgspec.Struct, frozen=True):
    """Supervisor-wide defaults; a run's own submit options win over them."""

    max_attempts: int = 3
    max_abandons: int = 10
    step_timeout: float = 0.0  # 0 = none
    backoff_base: float = 0.5
    backoff_cap: float = 60.0


class WorkerResult(msgspec.Struct, frozen=True, array_like=True, omit_defaults=True, gc=False):
    """What came back from one attempt, as the pool reports it.

    ``kind``: ``continue``, ``succeed``, ``fail``, ``cancel`` (runner
    verdicts), ``error`` (exception, bad return value), ``cancelled`` (the
    runner raised on its token), ``worker_died`` or ``timeout``.
    """

    kind: str
    data: Union[bytes, BlobRef] = b""  # a ref: the worker wrote the blob durably first
    delay: float = 0.0
    error: str = ""
    traceback: str = ""
    permanent: bool = False
    key: str = ""  # with kind "continue": park until this signal key (delay = timeout)
    peak_rss: int = 0  # kind "oom": the worker's peak resident bytes (the supervisor's view)
    children: list[Union[bytes, BlobRef]] = []  # kind "spawn": the children's inputs
    child_headers: Union[dict[str, str], None] = None  # kind "spawn": None = the parent's


def remaining_delay(due_at: float, now: float) -> float:
    """Seconds until ``due_at``; never negative."""
    return due_at - now if due_at > now else 0.0


def backoff(failures: int, policy: Policy, jitter: float) -> float:
    """Exponential backoff for the ``failures``-th failure; ``jitter`` in [0, 1)."""
    base = min(policy.backoff_cap, policy.backoff_base * 2.0 ** min(max(0, failures - 1), 64))
    return base * (0.5 + 0.5 * jitter)


class Outcomes:
    """``complete``: the part of ``State`` that judges a worker's answer."""

    # What this part needs of the state it is mixed into (set in ``State.__init__``).
    policy: Policy
    runs: dict[str, Run]
    records_applied: int
    _commit: Callable[[list[Record]], list[Record]]
    _terminated: Callable[[Terminated], None]

    def complete(self, run_id: str, attempt: int, res: WorkerResult, now: float,
                 jitter: float = 0.5) -> list[Record]:
        """Turn one attempt's result into records; a stale result gives none."""
        run = self.runs.get(run_id)
        if run is None or not run.leased or run.attempt != attempt:
            return []
        step = run.step
        kind = res.kind
        if run.cancel_reason is not None:
            # Outcomes of a cancelled run are discarded, whatever they were.
            return self._commit([Terminated(run_id, CANCELLED, now, step, attempt,
                                            error=run.cancel_reason, kind="cancel_request")])
        if kind == "continue":
            due = now + res.delay if res.delay > 0 else 0.0
            if res.key and res.key in run.used_keys:
                return self._commit([Terminated(
                    run_id, FAILED, now, step, attempt, dead=True, kind="error",
                    error=(f"step {step} dead-lettered (permanent error): waited on signal key "
                           f"{res.key!r} a second time; a run may wait on a key once"))])
            return self._commit([StepDone(run_id, step, attempt, res.data, now, due, res.key)])
        if kind == "spawn":
            return self._commit(fanout.spawn_records(self, run, res, now))
        if kind == "succeed":  # the common end: folded without the list-apply loop
            rec = Terminated(run_id, SUCCEEDED, now, step, attempt, res.data)  # positional: cheaper
            self._terminated(rec)
            self.records_applied += 1
            return [rec]
        if kind == "fail":
            return self._commit([Terminated(run_id, FAILED, now, step, attempt,
                                            error=res.error, kind="fail")])
        if kind in ("cancel", "cancelled"):
            return self._commit([Terminated(run_id, CANCELLED, now, step, attempt,
                                            error=res.error, kind="cancel")])
        # error, worker_died, timeout: an attempt failed.
        limit = run.max_attempts or self.policy.max_attempts
        if res.permanent or run.failures + 1 >= limit:
            why = "permanent error" if res.permanent else f"failed {run.failures + 1} times"
            return self._commit([Terminated(
                run_id, FAILED, now, step, attempt,
                error=f"step {step} dead-lettered ({why}): {res.error}", dead=True,
                traceback=res.traceback, kind=kind, peak_rss=res.peak_rss)])
        retry_at = now + backoff(run.failures + 1, self.policy, jitter)
        return self._commit([AttemptFailed(run_id, step, attempt, kind, res.error, now, retry_at,
                                           res.traceback, res.peak_rss)])
