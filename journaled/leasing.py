"""Leasing: the worker side of the supervisor's loop.

Who gets work (fair share, then stealing steps queued behind a long one),
what comes back (results, memo puts), when a worker is killed (a cancel
past its grace, a step timeout, the end of a drain), and what a dead
worker's steps become (released, abandoned, interrupted, failed) and
whether it is respawned at once, after a back-off, or not at all.

Every decision is the pure ``dispatch`` module's, asked with a
``WorkerView`` of each worker; this part turns workers into views, acts on
the answers and appends the records they call for to the turn. Leases
leave this process only after the commit (``Supervisor._commit``); what
acts at once is the advisory cancel token (see ``_signal_cancel``) and
kills, whose outcome is journaled when the worker's death is seen.
"""

from __future__ import annotations

import logging
import random
import threading
from pathlib import Path
from typing import Any, Callable

from . import dispatch, failpoints, fanout, quotas
from .api import Signal
from .clock import Clock
from .errors import JournaledError
from .pool import Dispatch, InFlight, Pool, Worker
from .records import Record
from .state import Policy, State, WorkerResult

log = logging.getLogger("journaled.supervisor")

# A step queued behind a worker's head in a light view (``_view``): only counted.
_QUEUED = dispatch.StepView(0, "", 0)


class Leasing:
    """The supervisor's worker side (a mixin): decisions from ``dispatch``, records to the turn."""

    # What this part needs of the supervisor it is mixed into.
    state: State
    policy: Policy
    pool: Pool | None
    cancel_grace: float
    clock: Clock
    _recs: list[Record]
    _dispatch: list[tuple[Worker, list[Dispatch]]]
    _memo_acks: list[tuple[Worker, int]]
    _wait_map: dict[Any, tuple[str, Worker]]
    _stopping: bool
    _shutdown_cancelled: bool
    _drain_deadline: float
    _reload: threading.Event
    reload_dir: Path | None
    _written: Any  # the supervisor's turns waiting for their sync
    _unsent_views: Callable[[Worker], tuple[dispatch.StepView, ...]]
    _unsent_n: dict[int, int]  # slot -> leases written, not yet sent (flushing)
    quotas: quotas.Quotas
    _unsent: Callable[[Worker], bool]
    _recycle_workers: Callable[[Callable[[Worker], bool]], None]
    _oom_of: Callable[..., tuple[int, str] | None]
    _archived_children: fanout.ArchivedLookup

    def _init_leasing(self) -> None:
        self.steps_done = 0
        self._rng = random.Random()
        self._startup_deaths = 0
        self._kill_seq: dict[int, int] = {}  # slot -> the step whose own deadline killed it
        self._respawn_at: dict[int, float] = {}  # slot -> monotonic respawn time (back-off)
        self._respawn_delay = 0.0
        self.reloads = 0
        self._buckets = quotas.Buckets()  # --rate: in memory only (a restart refills them)
        self._quota_wake: float | None = None  # monotonic: a rate-limited key gets a token
        self._over_warned: set[str] = set()  # keys logged as waiting for a higher --limit

    # -------------------------------------------------------- who gets work

    def _lease(self, now: float, mono: float) -> None:
        pool = self.pool
        assert pool is not None
        state = self.state
        self._quota_wake = None
        self._recycle_workers(self._unsent)  # --max-steps-per-worker, --max-worker-rss
        due = state.next_due()
        if not state.has_ready() and (due is None or due > now):
            if not self._steal(mono):
                return
        recs = self._recs
        by_slot = {w.slot: w for w in pool.workers}
        plan = dispatch.plan_by_counts(self._loads(), state.ready_count())
        # What leased steps hold is recomputed from the state (never journaled), so
        # nothing a crash abandoned stays held. Without --limit, --key-concurrency
        # or --rate every run is admitted (``quotas.ADMIT_ALL``): no gate to build.
        gate = quotas.Gate(self.quotas, state.in_flight.values, self._buckets, mono) \
            if self.quotas.active else None
        lease, next_seq = state.lease, pool.next_seq
        for slot, want in plan:
            w = by_slot[slot]
            runs = state.due_runs(now, want, gate)
            if not runs:
                break
            items = []
            for run in runs:
                rec = lease(run, slot, now)
                recs.append(rec)
                kids = sig = None
                if run.spawn_step >= 0 and fanout.fans_in(run):  # the step after a Spawn
                    kids = fanout.outcomes(state, run, self._archived_children)
                    if failpoints.ENABLED:
                        failpoints.hit("fanout.fan_in")
                if run.woken is not None or run.wait_key:  # the step after a signal wait
                    sig = Signal(*state.woken_by(run))  # type: ignore[misc]
                items.append(Dispatch(next_seq(), run.run_id, run.step, rec.attempt,
                                      run.payload, run.headers, sig, run.memos or None,
                                      run.runner, kids))
            self._dispatch.append((w, items))
        if gate is None:
            return
        self._quota_wake = gate.wake
        for key in gate.over - self._over_warned:
            self._over_warned.add(key)
            log.warning("runs%s ask for more than a --limit allows; they wait for a "
                        "supervisor with higher limits", f" of key {key!r}" if key else "")

    def _steal(self, mono: float) -> bool:
        """An idle worker and nothing ready: take back steps queued behind a long one.

        Returns whether anything was taken back (it is ready again at once).
        """
        pool = self.pool
        assert pool is not None
        if not hasattr(pool, "revoke_queued"):
            return False
        if not any(len(w.outstanding) > 1 for w in pool.workers):
            return False  # no step queued behind another: nothing to take back
        took = False
        by_slot = {w.slot: w for w in pool.workers}
        for slot in dispatch.steal_candidates([self._view(w) for w in pool.workers], mono):
            for item in pool.revoke_queued(by_slot[slot]):
                self._recs += self.state.release(item.run_id, item.attempt)
                took = True
        return took

    # ------------------------------------------------------ what comes back

    def _results(self, w: Worker, done: list[tuple[InFlight, WorkerResult]], now: float) -> None:
        complete = self.state.complete
        recs = self._recs
        rng = self._rng.random
        for item, res in done:
            if res.kind == "revoked":  # skipped unstarted (the worker was told to stop)
                recs += self.state.release(item.run_id, item.attempt, False, now)
                continue
            if self._shutdown_cancelled and item.cancel_at and res.kind in ("cancel", "cancelled"):
                # Our own shutdown set that token: the step was interrupted, not cancelled,
                # and a deploy is no crash: it counts toward nothing.
                recs += self.state.release(item.run_id, item.attempt, True, now, shutdown=True)
                continue
            recs += complete(item.run_id, item.attempt, res, now, rng())
            if failpoints.ENABLED and res.kind == "spawn":
                failpoints.hit("fanout.spawn")
        self.steps_done += len(done)
        w.steps_run += len(done)

    def _worker_messages(self, w: Worker) -> None:
        """Memo puts: journaled this turn, acknowledged to the worker after the commit."""
        state = self.state
        for put in w.memo_puts:
            item = next((i for i in w.outstanding if i.seq == put.seq), None)
            if item is not None:
                self._recs += state.memo_put(item.run_id, item.attempt, put.key, put.value)
            self._memo_acks.append((w, put.seq))
        w.memo_puts.clear()

    # ----------------------------------------- cancels, deadlines and kills

    def _signal_cancel(self, run_id: str) -> None:
        pool = self.pool
        assert pool is not None
        mono = self.clock.monotonic()
        # Set before the CancelRequested record is synced: the token is advisory,
        # and whatever the step answers is journaled after that record anyway.
        for w in pool.workers:
            for item in w.outstanding:
                if item.run_id == run_id:
                    if not item.cancel_at:
                        pool.cancel(w, item, self.cancel_grace, mono)
                    return

    def _deadlines(self, mono: float, now: float) -> None:
        pool = self.pool
        assert pool is not None
        if self._stopping and not self._shutdown_cancelled and mono >= self._drain_deadline:
            # Drain time is up: ask running steps to stop, kill them after the grace.
            self._shutdown_cancelled = True
            for w in pool.workers:
                if w.outstanding:
                    pool.cancel(w, w.outstanding[0], self.cancel_grace, mono)
        for w in pool.workers:
            out = w.outstanding
            if not out or w.proc is None:
                continue
            head = out[0]
            if not head.cancel_at and not self._step_limit(head.run_id):
                continue  # kill_due needs a cancel deadline or a step limit: no view to build
            due = dispatch.kill_due(self._view(w), mono, self._shutdown_cancelled)
            if due is not None:
                self._kill(w, *due)

    def _kill(self, w: Worker, reason: str, seq: int) -> None:
        """Kill ``w`` for step ``seq``'s sake: only that step may be charged for it."""
        pool = self.pool
        assert pool is not None
        if w.proc is not None and not w.kill_reason:
            self._kill_seq[w.slot] = seq
        pool.kill(w, reason)

    def _step_limit(self, run_id: str) -> float:
        """Seconds a step of this run may take (0 = no limit); a run's own option wins."""
        run = self.state.runs.get(run_id)
        return run.step_timeout if run is not None and run.step_timeout else \
            self.policy.step_timeout

    def _loads(self) -> list[tuple[int, int, int]]:
        """``(slot, steps held, depth)`` of each live worker that may get work: all
        ``plan_by_counts`` reads (leases whose sync runs fill a worker too)."""
        pool = self.pool
        assert pool is not None
        unsent = self._unsent_n if self._written else None
        return [(w.slot, len(w.outstanding) + (unsent.get(w.slot, 0) if unsent else 0),
                 pool.depth(w))
                for w in pool.workers if w.proc is not None and not w.stopping]

    def _load_view(self, w: Worker, head_started: float = 0.0) -> dispatch.WorkerView:
        """How full ``w`` is and how deep it may go: all ``lease_plan`` and ``next_steal``
        read (no head step, step limit or running word)."""
        pool = self.pool
        assert pool is not None
        items = (_QUEUED,) * len(w.outstanding)
        if self._written:  # leases not sent yet (their sync runs) fill the worker too
            items += self._unsent_views(w)
        alive = w.proc is not None
        return dispatch.WorkerView(w.slot, items, 0, head_started, w.avg_step,
                                   alive and not w.stopping, pool.depth(w) if alive else 0)

    def _view(self, w: Worker, full: bool = False) -> dispatch.WorkerView:
        """What the pure dispatch decisions need of ``w`` (the head's step limit only).

        Only ``worker_lost`` reads past the head (``full``); every other decision
        reads the head and how many steps ``w`` holds, so the rest are stand-ins:
        O(1) a view instead of O(depth), and a worker holds up to 256 tiny steps.
        """
        pool = self.pool
        assert pool is not None
        out = w.outstanding
        if full:
            items = tuple(dispatch.StepView(i.seq, i.run_id, i.attempt, i.cancel_at,
                                            self._step_limit(i.run_id) if n == 0 else 0.0)
                          for n, i in enumerate(out))
        elif out:
            i = out[0]
            items = (dispatch.StepView(i.seq, i.run_id, i.attempt, i.cancel_at,
                                       self._step_limit(i.run_id)),)
            if len(out) > 1:
                items += (_QUEUED,) * (len(out) - 1)
        else:
            items = ()
        alive = w.proc is not None
        if self._written:  # leases not sent yet (their sync runs) fill the worker too
            items += self._unsent_views(w)
        return dispatch.WorkerView(w.slot, items, pool.running_seq(w) if alive else 0,
                                   w.head_started, w.avg_step, alive and not w.stopping,
                                   pool.depth(w) if alive else 0)

    # -------------------------------------------------- deaths and respawns

    def _worker_died(self, w: Worker, now: float) -> None:
        pool = self.pool
        assert pool is not None
        try:
            while w.conn is not None and w.conn.poll(0):
                self._results(w, pool.read(w, self.clock.monotonic()), now)
        except (EOFError, OSError):
            pass
        view = self._view(w, full=True)
        running = view.running_seq
        reason = w.kill_reason
        kill_seq = self._kill_seq.pop(w.slot, 0)
        pid = w.pid
        code = pool.reap(w)
        died = self._death_message(w, pid, code)
        oom = self._oom_of(w, pid, code, reason, running)
        w.outstanding.clear()
        state = self.state
        rng = self._rng.random
        for item, verdict in dispatch.worker_lost(view.items, running, reason, kill_seq,
                                                  self._stopping):
            run = state.runs.get(item.run_id)
            step = run.step if run is not None else -1
            if verdict == dispatch.RELEASE:
                self._recs += state.release(item.run_id, item.attempt, False, now)
            elif verdict == dispatch.ABANDON:
                self._recs += state.release(item.run_id, item.attempt, True, now)
            elif verdict == dispatch.INTERRUPT:
                self._recs += state.release(item.run_id, item.attempt, True, now,
                                            shutdown=True)
            elif verdict == dispatch.CANCELLED:
                self._recs += state.complete(item.run_id, item.attempt, WorkerResult(
                    "cancelled", error="cancelled; its worker was killed after the grace "
                    "period"), now, rng())
            elif verdict == dispatch.FAIL_TIMEOUT:
                limit = self._step_limit(item.run_id)
                log.warning("run %s step %d attempt %d timed out after %g s (step_timeout=%g);"
                            " killing its worker", item.run_id, step, item.attempt, limit, limit)
                self._recs += state.complete(item.run_id, item.attempt, WorkerResult(
                    "timeout", error=f"step timed out after {limit:g} s (step_timeout="
                    f"{limit:g}) and its worker was killed"), now, rng())
            elif oom is not None and item.seq == running:  # FAIL_DIED, for memory
                log.warning("worker %d (pid %s) %s in run %s step %d attempt %d; respawning",
                            w.slot, pid, oom[1], item.run_id, step, item.attempt)
                self._recs += state.complete(item.run_id, item.attempt, WorkerResult(
                    "oom", error=f"worker {oom[1]} during the step", peak_rss=oom[0]),
                    now, rng())
            else:  # FAIL_DIED
                log.warning("%s in run %s step %d attempt %d%s", died, item.run_id, step,
                            item.attempt, "" if self._stopping else "; respawning")
                self._recs += state.complete(item.run_id, item.attempt, WorkerResult(
                    "worker_died", error=f"{died} during the step"), now, rng())
        self._startup_death(w, running, reason, code, died)
        self._wait_map = pool.wait_objects()

    def _death_message(self, w: Worker, pid: int | None, code: int | None) -> str:
        why = getattr(self.pool, "death_reason", None)
        if why is not None:
            return str(why(w, code))
        return f"worker {w.slot} (pid {pid}) {dispatch.signal_name(code)}"

    def _startup_death(self, w: Worker, running: int, reason: str, code: int | None,
                       died: str) -> None:
        """Respawn ``w``; stop only if fresh workers keep *exiting* before any step.

        A runner that cannot import exits with an error code at start-up, every
        time: that is a clear stop. A worker killed by a signal (the OOM killer,
        an operator, a dying helper process) is no verdict on the runner: back
        off the respawn instead, so the service never goes down for it.
        """
        pool = self.pool
        assert pool is not None
        if self._stopping:
            return  # a worker told to stop exits; no verdict on the runner, no respawn
        if w.ever_ran or running or reason:
            self._startup_deaths = 0  # it got as far as a step (or we killed it)
            self._respawn_delay = 0.0
        elif code is not None and code > 0 and self.reload_dir is not None:
            # --reload: the code is mid-edit; keep retrying (backed off) until it imports.
            self._respawn_delay = min(5.0, max(0.5, 2 * self._respawn_delay))
            log.warning("%s at start-up (does the code import?); retrying in %.1f s",
                        died, self._respawn_delay)
            self._respawn_at[w.slot] = self.clock.monotonic() + self._respawn_delay
            return
        elif code is not None and code > 0:
            self._startup_deaths += 1
            if self._startup_deaths >= 5:
                raise JournaledError(
                    f"worker processes keep dying at start-up ({died}); check that the "
                    "runner's module imports cleanly in a fresh process (guard script code "
                    "with 'if __name__ == \"__main__\":')")
        else:
            self._respawn_delay = min(5.0, max(0.1, 2 * self._respawn_delay))
            log.warning("%s at start-up; respawning in %.1f s", died, self._respawn_delay)
            self._respawn_at[w.slot] = self.clock.monotonic() + self._respawn_delay
            return
        if not self._stopping:
            pool.respawn(w)

    def _respawn_due(self, mono: float) -> None:
        """Respawn workers whose back-off after a start-up kill is over."""
        pool = self.pool
        assert pool is not None
        for w in pool.workers:
            at = self._respawn_at.get(w.slot)
            if at is not None and mono >= at:
                del self._respawn_at[w.slot]
                if not self._stopping and w.proc is None:
                    pool.respawn(w)
                    self._wait_map = pool.wait_objects()

    def _restart_workers(self) -> None:
        """Stop every worker after its running step; each is replaced when it exits."""
        self._reload.clear()
        self.reloads += 1
        pool = self.pool
        assert pool is not None
        self._respawn_delay = 0.0
        for slot in self._respawn_at:  # backed off after a broken import: try the new code now
            self._respawn_at[slot] = 0.0
        for w in pool.workers:
            if w.proc is not None:
                w.kill_reason = "reload"
                pool.stop(w)

    def _worker_timers(self, mono: float) -> list[float]:
        """When the worker side next needs the loop (monotonic): deadlines, steals, respawns."""
        times: list[float] = []
        pool = self.pool
        assert pool is not None
        loads = []
        unsent = self._unsent_n if self._written else None
        for w in pool.workers:
            out = w.outstanding
            # next_deadline needs a head with a cancel deadline or a step limit: only
            # then a full view (the step limit, the running word); next_steal counts.
            if out and (out[0].cancel_at or self._step_limit(out[0].run_id)):
                t = dispatch.next_deadline(self._view(w), mono)
                if t is not None:
                    times.append(t)
            if w.proc is not None and not w.stopping:
                loads.append((len(out) + (unsent.get(w.slot, 0) if unsent else 0),
                              w.head_started, w.avg_step))
        t = dispatch.steal_at(loads)
        if t is not None:
            times.append(t)
        if self._stopping and not self._shutdown_cancelled:
            times.append(self._drain_deadline)
        times.extend(self._respawn_at.values())
        if self._quota_wake is not None:
            times.append(self._quota_wake)
        return times
