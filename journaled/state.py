"""The pure state machine: records in, state and decisions out, no I/O.

Replay is a fold: ``State.apply`` over every record in the journal. The
supervisor drives the same machine through *commands* (``submit``,
``lease``, ``complete``, ...): each takes the current wall-clock time as
an argument, builds the records for one transition, applies them and
returns them so the caller can make them durable before it acts. Nothing
here reads a clock, logs, or touches a file, which is what lets the
property tests run thousands of crash/replay interleavings a second.
"""

from __future__ import annotations

import heapq
from typing import Callable, Iterable

from . import fanout, quotas
from .blobs import BlobRef, same_content
from .errors import RunConflict, RunNotFound, RunNotLive
from .forking import forked_run
from .outcomes import (  # noqa: F401 - re-exported: callers import these from here
    Outcomes,
    Policy,
    WorkerResult,
    backoff,
    remaining_delay,
)
from .pausing import Pauses
from .ready import ReadyQueue
from .records import (
    Archived,
    AttemptFailed,
    CancelRequested,
    DispatchPaused,
    Forked,
    HookDelivered,
    Leased,
    MemoPut,
    Record,
    Recovered,
    Redriven,
    Released,
    Restored,
    SignalSent,
    Snapshot,
    Spawned,
    StepDone,
    Submitted,
    Terminated,
)
from .run import (  # noqa: F401 - re-exported: callers import these from here
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    WAITING,
    Run,
    attempts_of,
    outcome_of,
    run_from_snapshot,
    run_to_snapshot,
    same_submission,
)
from .schedules import Schedules
from .snapshots import SnapshotFold

_FAILED_AS = {"timeout": "timed_out", "worker_died": "worker_died", "error": "retried",
              "oom": "oom"}


class State(Outcomes, ReadyQueue, SnapshotFold):
    """All runs, the ready queue and the timers: the fold of the journal.

    The ready queue and timers live in ``journaled.ready``, snapshots and the
    archive handoff in ``journaled.snapshots``, what an attempt's result
    becomes in ``journaled.outcomes``; all are pure mixins.
    """

    def __init__(self, policy: Policy | None = None) -> None:
        # Commands read the policy (retries, backoff, the abandon limit); the
        # fold never does, so every reader folds a journal to the same state.
        self.policy = policy or Policy()
        self.runs: dict[str, Run] = {}
        self.in_flight: dict[str, Run] = {}
        # (-priority, order, seq, run_id), lazy: a stale entry has an old seq.
        # Ordered by submission, not readiness: a started run's next step goes
        # before step 0 of newer runs, so results stream out (depth-first).
        self._ready: list[tuple[int, int, int, str]] = []
        self._timers: list[tuple[float, str]] = []  # (due_at, run_id), lazy
        self._attention: set[str] = set()  # runs a command must decide on
        self.unhooked: set[str] = set()  # terminal, hook not yet delivered
        self.app = ""  # the runner's import string last recovered (kept across snapshots)
        self._seq = 0
        self._order = 0
        self.last_at = 0.0  # latest time of a supervisor record folded so far
        # A hook ran on this journal (a HookDelivered, or a snapshot that says so):
        # an offline compaction, which has no hook to ask, keeps what is still owed.
        self.hooks_in_use = False
        self.records_applied = 0
        # Ready runs with a key or resources wait here, served in turn (journaled.quotas);
        # the limits they are checked against at submit are the supervisor's.
        self.fair = quotas.FairQueues()
        self.quotas = quotas.NO_QUOTAS
        self._apply: dict[type, Callable[[Record], None]] = {
            Submitted: self._submitted, Leased: self._leased, Released: self._released,
            StepDone: self._step_done, AttemptFailed: self._attempt_failed,
            CancelRequested: self._cancel_requested, Terminated: self._terminated,
            HookDelivered: self._hook_delivered, Recovered: self._recovered,
            Redriven: self._redriven, SignalSent: self._signal_sent, MemoPut: self._memo_put,
            Snapshot: self._snapshot, Archived: self._archived, Restored: self._restored,
            DispatchPaused: self._dispatch_paused, Forked: self._forked,
            Spawned: self._spawned,
        }
        # Operations (issue 15): schedules and pauses fold in their own pure modules.
        self.schedules = Schedules()
        self.pauses = Pauses()
        self._apply.update(self.schedules.handlers())

    # ----------------------------------------------------------------- fold

    def apply(self, rec: Record) -> None:
        """Fold one record into the state (replay and live use the same path)."""
        self._apply[type(rec)](rec)
        self.records_applied += 1

    def apply_all(self, recs: Iterable[Record]) -> None:
        table = self._apply
        n = 0
        for rec in recs:
            table[type(rec)](rec)
            n += 1
        self.records_applied += n

    def _saw(self, at: float) -> None:
        if at > self.last_at:
            self.last_at = at

    def _unlease(self, run: Run) -> None:
        if run.leased:
            run.leased = False
            run.worker = -1
            self.in_flight.pop(run.run_id, None)

    def _submitted(self, rec: Submitted) -> None:
        runs = self.runs
        if rec.run_id in runs:
            return
        run = Run(rec, 0)
        self._order += 1
        run.order = self._order
        runs[rec.run_id] = run
        self._seq += 1  # _make_ready, inline: once per run
        run.seq = self._seq
        if rec.key or rec.resources:
            self._queue(run)
        else:
            heapq.heappush(self._ready, (-run.priority, run.order, run.seq, rec.run_id))

    def _end_attempt(self, run: Run, at: float, outcome: str, error: str = "",
                     tb: str = "", peak_rss: int = 0) -> None:
        h = run.history
        if h and h[-1][4] is None:
            h[-1][4] = at
            h[-1][5] = outcome
            h[-1][6] = error
            h[-1][7] = tb
            if peak_rss:
                h[-1][8:] = [peak_rss]

    def _leased(self, rec: Leased) -> None:
        if rec.at > self.last_at:  # _saw, inline: once per step
            self.last_at = rec.at
        run = self.runs[rec.run_id]
        # Out of line now: any ready-queue entry for the run is stale. Replay
        # never pops the queue, so without this a restart would find the old
        # entry valid and run a delayed step (or a signal wait) at once.
        self._seq += 1
        run.seq = self._seq
        run.history.append([rec.step, rec.attempt, rec.worker, rec.at, None, "running", "", ""])
        run.attempt = rec.attempt
        run.leased = True
        run.worker = rec.worker
        run.leased_at = rec.at
        run.status = RUNNING
        self.in_flight[rec.run_id] = run

    def _released(self, rec: Released) -> None:
        self._saw(rec.at)
        run = self.runs[rec.run_id]
        if not run.leased or run.attempt != rec.attempt:
            return
        self._unlease(run)
        if rec.started and rec.shutdown:
            # Our own drain cut it: the delivery is spent, nothing is counted.
            self._end_attempt(run, rec.at, "interrupted", "interrupted by shutdown: the step "
                              "ran past the drain timeout and was stopped")
        elif rec.started:
            # Delivered, outcome lost: counts like a supervisor crash would;
            # ``reconcile`` decides whether that was one abandon too many.
            self._end_attempt(run, rec.at, "abandoned", "its worker stopped before the outcome "
                              "was recorded")
            run.abandons += 1
            self._attention.add(run.run_id)
        else:
            if run.history and run.history[-1][4] is None:
                run.history.pop()  # never delivered: not an attempt
            run.attempt -= 1
            if run.step == 0 and run.attempt == 0:
                run.status = PENDING
        self._after_unlease(run)

    def _after_unlease(self, run: Run) -> None:
        if run.cancel_reason is not None:
            self._attention.add(run.run_id)
        else:
            self._make_ready(run)

    def _step_done(self, rec: StepDone) -> None:
        self._saw(rec.at)
        run = self.runs[rec.run_id]
        self._unlease(run)
        if run.history:
            self._end_attempt(run, rec.at, "completed")
        run.step = rec.step + 1
        run.payload = rec.payload
        run.keep_payload(rec.payload)
        run.attempt = run.failures = run.abandons = 0
        run.due_at = rec.due_at
        run.woken = None
        if run.memos:
            run.memos = {}
        key = rec.signal_key
        run.wait_key = key
        if key:
            run.used_keys.append(key)
            if key in run.signals:  # sent before we waited: deliver now
                run.woken = [key, run.signals.pop(key), False]
                run.status = RUNNING
                self._make_ready(run)
            else:
                run.status = WAITING
                if rec.due_at:
                    heapq.heappush(self._timers, (rec.due_at, run.run_id))
        elif rec.due_at > rec.at:
            run.status = WAITING
            heapq.heappush(self._timers, (rec.due_at, run.run_id))
        else:
            run.status = RUNNING
            self._make_ready(run)

    def _spawned(self, rec: Spawned) -> None:
        self._step_done(StepDone(rec.run_id, rec.step, rec.attempt, rec.then, rec.at))
        fanout.fold_spawned(self, rec, self.runs[rec.run_id])

    def _park(self, run: Run) -> None:
        """Out of the ready queue until its children are done (``fanout``)."""
        self._seq += 1
        run.seq = self._seq
        run.status = WAITING

    def _attempt_failed(self, rec: AttemptFailed) -> None:
        self._saw(rec.at)
        run = self.runs[rec.run_id]
        self._unlease(run)
        self._end_attempt(run, rec.at, _FAILED_AS.get(rec.kind, "retried"), rec.error,
                          rec.traceback, rec.peak_rss)
        run.failures += 1
        run.error = rec.error
        run.traceback = rec.traceback
        run.kind = rec.kind
        run.due_at = rec.retry_at
        run.status = WAITING
        heapq.heappush(self._timers, (rec.retry_at, run.run_id))

    def _cancel_requested(self, rec: CancelRequested) -> None:
        self._saw(rec.at)
        run = self.runs[rec.run_id]
        if run.terminal or run.cancel_reason is not None:
            return
        run.cancel_reason = rec.reason
        if not run.leased:
            self._attention.add(run.run_id)

    def _terminated(self, rec: Terminated) -> None:
        if rec.at > self.last_at:  # _saw, inline: once per run
            self.last_at = rec.at
        run = self.runs[rec.run_id]
        if run.leased:
            how = ("cancelled" if rec.status == CANCELLED else
                   "dead_lettered" if rec.dead else "completed")
            self._end_attempt(run, rec.at, how, rec.error or "" if rec.dead else "",
                              rec.traceback, rec.peak_rss)
            self._unlease(run)
        run.step = rec.step
        run.result = rec.result
        run.error = rec.error
        run.finished_at = rec.at
        run.dead = rec.dead
        run.traceback = rec.traceback
        run.kind = rec.kind
        run.hook_delivered = False
        run.status = rec.status  # last: other threads read status first
        self.unhooked.add(run.run_id)
        self._attention.discard(run.run_id)
        if run.parent:
            fanout.child_ended(self, run)

    def _hook_delivered(self, rec: HookDelivered) -> None:
        run = self.runs.get(rec.run_id)
        if run is not None:
            run.hook_delivered = True
        self.unhooked.discard(rec.run_id)
        self.hooks_in_use = True  # a hook ran on this journal

    def _recovered(self, rec: Recovered) -> None:
        if rec.app:
            self.app = rec.app
        # The attempt ended when the old supervisor was last seen working, not
        # at this restart: the downtime is not the step's duration.
        for run in list(self.in_flight.values()):
            self._end_attempt(run, max(run.leased_at, self.last_at) if self.last_at else rec.at,
                              "abandoned", "the supervisor stopped during the step")
            self._unlease(run)
            run.abandons += 1
            self._attention.add(run.run_id)  # reconcile: cancelled, or abandoned too often?
            if run.cancel_reason is None:
                self._make_ready(run)
        self._saw(rec.at)

    def _redriven(self, rec: Redriven) -> None:
        self._saw(rec.at)
        run = self.runs[rec.run_id]
        self.unhooked.discard(run.run_id)
        run.status = RUNNING if run.step or run.attempt else PENDING
        # A new series of failures; ``attempt`` keeps counting deliveries.
        run.failures = run.abandons = 0
        run.result = run.error = run.finished_at = run.cancel_reason = None
        run.dead = False
        run.traceback = run.kind = ""
        run.due_at = 0.0
        run.hook_delivered = False
        self._make_ready(run)
        if run.parent:
            fanout.child_redriven(self, run)

    def _signal_sent(self, rec: SignalSent) -> None:
        self._saw(rec.at)
        run = self.runs.get(rec.run_id)
        if run is None or run.terminal:
            return
        if (run.wait_key == rec.key and run.status == WAITING and not run.leased
                and run.woken is None):
            run.woken = [rec.key, rec.data, False]
            run.status = RUNNING
            self._make_ready(run)
        else:
            run.signals[rec.key] = rec.data  # last write wins

    def _memo_put(self, rec: MemoPut) -> None:
        run = self.runs.get(rec.run_id)
        if run is not None and run.step == rec.step and not run.terminal:
            run.memos[rec.key] = rec.value

    def _dispatch_paused(self, rec: DispatchPaused) -> None:
        self.pauses.apply(rec)

    def _forked(self, rec: Forked) -> None:
        if rec.run_id in self.runs:
            return
        run = forked_run(rec)
        self._order += 1
        run.order = self._order
        self.runs[rec.run_id] = run
        self._make_ready(run)

    # ------------------------------------------------------------- commands

    def _commit(self, recs: list[Record]) -> list[Record]:
        table = self._apply
        for r in recs:
            table[type(r)](r)
        self.records_applied += len(recs)
        return recs

    def submit(self, run_id: str, input: bytes | BlobRef, now: float,
               headers: dict[str, str] | None = None, priority: int = 0, max_attempts: int = 0,
               step_timeout: float = 0.0, *, runner: str = "",
               resources: dict[str, float] | None = None, key: str = "") -> list[Record]:
        """A new run; nothing for a duplicate, ``RunConflict`` for a clash.

        ``OverLimit`` for a run asking for more than a limit in ``self.quotas``
        allows: it could never be leased.
        """
        runs = self.runs
        old = runs.get(run_id)
        hdrs = dict(headers) if headers else {}
        if old is not None:
            if same_submission((old.input, old.headers, old.runner), input, hdrs, runner):
                return []
            raise RunConflict(run_id)
        if resources:
            res = quotas.check_resources(resources)
            if res:
                quotas.check_fits(run_id, res, self.quotas.limits)
        else:
            res = {}  # check_resources' common case, without the call: once per run
        rec = Submitted(run_id, input, now, hdrs, priority, max_attempts, step_timeout,
                        runner, res, key if key == "" else quotas.check_key(key))
        self._submitted(rec)  # apply(), without the table look-up: once per run
        self.records_applied += 1
        return [rec]

    def ops(self, recs: list[Record]) -> list[Record]:
        """Apply records built by the operations modules (schedules, pauses, forks)."""
        return self._commit(recs)

    def fork(self, rec: Forked) -> list[Record]:
        """A forked run; nothing for the same fork again, ``RunConflict`` for a taken id."""
        old = self.runs.get(rec.run_id)
        if old is not None:
            if same_content(old.input, rec.input) and old.headers == rec.headers:
                return []
            raise RunConflict(rec.run_id)
        return self._commit([rec])

    def lease(self, run: Run, worker: int, now: float) -> Leased:
        rec = Leased(run.run_id, run.step, run.attempt + 1, worker, now)
        self._leased(rec)  # apply(), without the table look-up: once per step leased
        self.records_applied += 1
        return rec

    def release(self, run_id: str, attempt: int, started: bool = False, now: float = 0.0,
                shutdown: bool = False) -> list[Record]:
        """Hand back a lease without an outcome; ``started``: it may have run.

        ``shutdown`` (with ``started``): our own drain timeout cut the step;
        it is recorded as interrupted and never counts toward ``max_abandons``.
        """
        run = self.runs.get(run_id)
        if run is None or not run.leased or run.attempt != attempt:
            return []
        return self._commit([Released(run_id, run.step, run.attempt, started, now,
                                      started and shutdown)])

    def signal(self, run_id: str, key: str, data: bytes, now: float) -> list[Record]:
        """Wake the run parked on ``key``, or buffer the signal until it parks there."""
        run = self.runs.get(run_id)
        if run is None:
            raise RunNotFound(run_id)
        if run.terminal:
            raise RunNotLive(run_id, run.status)
        return self._commit([SignalSent(run_id, key, data, now)])

    def memo_put(self, run_id: str, attempt: int, key: str, value: bytes | BlobRef
                 ) -> list[Record]:
        """Record a memo of the step ``attempt`` is running; nothing for a stale attempt."""
        run = self.runs.get(run_id)
        if run is None or not run.leased or run.attempt != attempt:
            return []
        return self._commit([MemoPut(run_id, run.step, key, value)])

    @staticmethod
    def woken_by(run: Run) -> list | None:
        """``[key, data, timed_out]`` for the step about to run, if a signal wait preceded it."""
        if run.woken is not None:
            return run.woken
        if run.wait_key:
            return [run.wait_key, b"", True]  # made ready by its timer: the wait timed out
        return None

    def cancel(self, run_id: str, reason: str, now: float) -> list[Record]:
        """Request cancel; a leased run ends when its worker answers or is killed."""
        run = self.runs.get(run_id)
        if run is None:
            raise RunNotFound(run_id)
        if run.terminal or run.cancel_reason is not None:
            return []
        recs = self._commit([CancelRequested(run_id, reason, now)])
        if run.pending:  # after the parent's: a torn write is caught by ``fanout.orphans``
            recs += self._commit(fanout.cancel_records(self, run, reason, now))
        return recs + self.reconcile(now)

    def recover(self, now: float, pid: int = 0, app: str = "") -> list[Record]:
        """A supervisor starts: abandon open leases, then settle what that leaves."""
        recs = self._commit([Recovered(now, pid, app)])
        return recs + self._commit(fanout.orphans(self, now)) + self.reconcile(now)

    def reconcile(self, now: float) -> list[Record]:
        """Decide runs that need no worker: cancelled while idle, abandoned too often."""
        if not self._attention:
            return []  # most turns: nothing to decide (no sort, no commit of nothing)
        out: list[Record] = []
        for rid in sorted(self._attention):
            run = self.runs[rid]
            if run.terminal or run.leased:
                continue
            if run.cancel_reason is not None:
                out.append(Terminated(rid, CANCELLED, now, run.step, run.attempt,
                                      error=run.cancel_reason, kind="cancel_request"))
            elif run.abandons > self.policy.max_abandons:
                out.append(Terminated(
                    rid, FAILED, now, run.step, run.attempt,
                    error=(f"step {run.step} dead-lettered: abandoned by {run.abandons} "
                           "supervisor crashes; suspected of taking the supervisor down"),
                    dead=True, kind="abandoned"))
        self._attention.clear()
        return self._commit(out)

    def hook_delivered(self, run_id: str) -> list[Record]:
        if run_id not in self.unhooked:
            return []
        return self._commit([HookDelivered(run_id)])

    def redrive(self, run_id: str, now: float) -> list[Record]:
        run = self.runs.get(run_id)
        if run is None:
            raise RunNotFound(run_id)
        if not run.dead:
            return []
        return self._commit([Redriven(run_id, now)])

    # -------------------------------------------------------------- queries

    def status_counts(self) -> dict[str, int]:
        counts = dict.fromkeys((PENDING, RUNNING, WAITING, SUCCEEDED, FAILED, CANCELLED), 0)
        for run in self.runs.values():
            counts[run.status] += 1
        return counts
