"""Property test: random interleavings of commands, crashes, torn tails and restarts.

A hypothesis state machine plays the supervisor. Each rule is one turn of
its loop: it runs commands on the live ``State``, then appends the records
they returned to the journal as one batch (one group commit), reconciling
at the end of the turn as the supervisor does. A crash keeps the journal
and may tear a suffix off the last batch (the one being written); a
restart replays the journal into a fresh ``State`` and runs ``recover``.

Besides the journal (which compaction replaces by a ``Snapshot``) the
machine keeps the full history of durable records; the invariants read
it as an independent reference model of the fold:

(a) replaying the journal, and the history, gives the live state;
(b) no run has two ``Terminated`` without a ``Redriven`` between them;
(c) every run ends exactly once when a fair scheduler drives it (teardown);
(d) a run is in ``in_flight`` iff it is leased, and iff a worker holds it;
(e) failures stay below ``max_attempts``; the step is dead-lettered on the
    ``max_attempts``-th failure and on the ``max_abandons + 1``-th abandon;
(f) successive ``Leased`` attempts of one step go up by one (an unstarted
    ``Released`` hands its attempt back);
(g) what ``due_runs`` hands out (and the signal each run sees) a moment and
    a long time later is the same for a state folded from a snapshot as for
    the full history: a snapshot gives no run a timer it did not have;
(h) a lost worker charges a failure only to the step it was running, and
    only for a death of its own or that step's own timeout
    (``dispatch.worker_lost``); a drain cut counts toward nothing.
(i) archiving (issue 12): a finished run written to the (model) archive and
    then dropped by ``Archived`` — or crashed in between, so it is in both
    and archived again — is never lost, never ends twice, answers re-submits
    from the archive, and comes back by ``Restored`` when redriven.

``JOURNALED_HYPOTHESIS_EXAMPLES`` raises the number of examples.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from journaled import dispatch
from journaled.errors import RunConflict, RunNotFound, RunNotLive
from journaled.records import (
    Archived,
    AttemptFailed,
    CancelRequested,
    Leased,
    Recovered,
    Redriven,
    Released,
    Restored,
    Snapshot,
    Spawned,
    StepDone,
    Submitted,
    Terminated,
    decode,
    encode,
)
from journaled.state import (
    CANCELLED,
    FAILED,
    SUCCEEDED,
    WAITING,
    Policy,
    State,
    WorkerResult,
    run_to_snapshot,
)

EXAMPLES = int(os.environ.get("JOURNALED_HYPOTHESIS_EXAMPLES", "200"))
T0 = 1_000_000.0
K = 3  # leases per turn, at most
POLICY = Policy(max_attempts=3, max_abandons=2, backoff_base=5.0, backoff_cap=40.0)
IDS = ("a", "b", "c", "d", "e")
KEYS = ("k1", "k2", "k3")
KILL_REASONS = ("", "", "timeout", "cancelled", "shutdown", "lost", "reload")
FAILURE_KINDS = ("error", "worker_died", "timeout")
FIELDS = ("status", "step", "payload", "attempt", "failures", "abandons", "result", "error",
          "dead", "kind", "cancel_reason", "leased", "worker", "due_at", "finished_at",
          "hook_delivered", "input", "priority", "max_attempts", "traceback",
          # Later additions, compared when the Run has them.
          "wait_key", "signals", "woken", "used_keys", "memos", "history", "order",
          "parent", "spawn_step", "spawned", "pending")

# Continuing outcomes come more often than ending ones, so runs live long enough to be
# caught by crashes mid-step, mid-delay and mid-backoff.
OUTCOMES = st.sampled_from([
    WorkerResult("continue", b"x"),
    WorkerResult("continue", b"y"),
    WorkerResult("continue", b"later", delay=0.5),
    WorkerResult("continue", b"later", delay=30.0),
    WorkerResult("continue", b"later", delay=300.0),
    WorkerResult("continue", b"later", delay=300.0),
    WorkerResult("succeed", b"ok"),
    WorkerResult("fail", error="verdict"),
    WorkerResult("cancel", error="runner cancel"),
    WorkerResult("error", error="flaky", traceback="tb"),
    WorkerResult("error", error="flaky", traceback="tb"),
    WorkerResult("error", error="broken", permanent=True),
    WorkerResult("worker_died", error="segfault"),
    WorkerResult("timeout", error="too slow"),
    # Signal waits: without a timeout, with one; a run may wait on a key once.
    WorkerResult("continue", b"w1", key="k1"),
    WorkerResult("continue", b"w2", key="k2"),
    WorkerResult("continue", b"w3", delay=30.0, key="k3"),
    # Fan-out (journaled.fanout): children run through the same outcomes, so they may
    # spawn too; an empty spawn fans in at once.
    WorkerResult("spawn", b"then", children=[b"c0", b"c1"]),
    WorkerResult("spawn", b"then", children=[b"c0"], child_headers={"h": "1"}),
    WorkerResult("spawn", b"none", children=[]),
])


def is_child(rid: str) -> bool:
    return ":s" in rid


def observe(state: State) -> dict:
    runs = {rid: tuple(getattr(run, f, None) for f in FIELDS)
            for rid, run in state.runs.items()}
    return {"runs": runs, "in_flight": sorted(state.in_flight), "unhooked": sorted(state.unhooked)}


def replay(recs: list) -> State:
    state = State(POLICY)
    state.apply_all(recs)
    return state


def due_view(state: State, now: float) -> list:
    """(g) What would be leased, in order, and what signal each run sees, now and later.

    Takes the runs and puts them back, so ``state`` keeps its lease order.
    """
    out = []
    for dt in (0.0, 1.0, 100.0, 1e6):
        runs = state.due_runs(now + dt, 10_000)
        out.append([(r.run_id, tuple(State.woken_by(r) or ())) for r in runs])
        state.requeue(runs)
    return out


class SupervisorModel(RuleBasedStateMachine):
    """The supervisor's loop over a pure ``State``, with crashes between any two turns."""

    strict_timers = False  # also require that nothing is leased before its due time

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.state = State(POLICY)
        self.journal: list = []  # what replay reads; compaction swaps in a Snapshot
        self.history: list = []  # every durable record, never compacted
        self.tail = 0  # records of the last batch, which a crash may tear
        self.held: dict[str, int] = {}  # leases out at workers: run id -> attempt
        self.up = True
        self.inbox: dict[str, tuple[bytes, int, int]] = {}  # every accepted submission
        self.archive: dict = {}  # run id -> RunSnapshot: durable apart from the journal

    # ------------------------------------------------------------- helpers

    def commit(self, recs: list) -> None:
        """End of one turn: the turn's records plus reconcile's go out as one batch."""
        recs = recs + self.state.reconcile(self.now)
        for rec in recs:
            decode(encode(rec))  # every record must be encodable on disk
        self.journal += recs
        self.history += recs
        self.tail = len(recs)

    def check_due(self, runs: list) -> None:
        """What ``due_runs`` hands out must be leasable now, highest priority first."""
        prios = [run.priority for run in runs]
        assert prios == sorted(prios, reverse=True), "due runs come highest priority first"
        keys = [(-run.priority, run.order) for run in runs]
        assert keys == sorted(keys), "within a priority the oldest run goes first (depth-first)"
        assert len({run.run_id for run in runs}) == len(runs), "a due run is handed out once"
        for run in runs:
            assert run.run_id not in self.held and not run.leased, \
                f"run {run.run_id} must not be leased twice at the same time"
            assert not run.terminal and run.cancel_reason is None, \
                f"run {run.run_id} is finished or cancelled and must not be leased"
            if self.strict_timers:
                assert run.status != WAITING or run.due_at <= self.now, \
                    f"run {run.run_id} must not be leased before its due time {run.due_at}"

    def lease_due(self, limit: int) -> list[Leased]:
        runs = self.state.due_runs(self.now, limit)
        try:
            self.check_due(runs)
        except AssertionError:
            self.state.requeue(runs)
            raise
        out = []
        for run in runs:
            rec = self.state.lease(run, len(out), self.now)
            self.held[run.run_id] = rec.attempt
            out.append(rec)
        return out

    def complete_checked(self, rid: str, res: WorkerResult, jitter: float) -> list:
        """Complete a held lease and check the records against the step contract."""
        attempt = self.held.pop(rid)
        run = self.state.runs[rid]
        step, failures, cancel = run.step, run.failures, run.cancel_reason
        used_keys, buffered = list(run.used_keys), dict(run.signals)
        limit = run.max_attempts or POLICY.max_attempts
        recs = self.state.complete(rid, attempt, res, self.now, jitter)
        assert len(recs) == 1, f"one result of run {rid} must give one record"
        rec = recs[0]
        assert (rec.run_id, rec.attempt, rec.step) == (rid, attempt, step), \
            "the record must name the run, step and attempt that answered"
        if cancel is not None:
            assert isinstance(rec, Terminated) and rec.status == CANCELLED, \
                "the outcome of a cancel-requested run is discarded: it ends cancelled"
        elif res.kind == "continue" and res.key and res.key in used_keys:
            assert isinstance(rec, Terminated) and rec.status == FAILED and rec.dead, \
                "waiting on a signal key a second time dead-letters the step"
        elif res.kind == "continue":
            assert isinstance(rec, StepDone) and rec.payload == res.data, "continue: StepDone"
            assert (run.step, run.attempt, run.failures) == (step + 1, 0, 0), \
                "continue moves to the next step with fresh attempts"
            if res.key and res.key in buffered:
                assert run.status != WAITING and run.woken == [res.key, buffered[res.key],
                                                               False], \
                    "a signal sent before the wait wakes the run at once"
            elif res.key:
                assert run.status == WAITING and run.due_at == (
                    self.now + res.delay if res.delay > 0 else 0.0), \
                    "a signal wait has a timer only when it has a timeout"
            elif res.delay > 0:
                assert rec.due_at == self.now + res.delay and run.status == WAITING, \
                    "a delayed step waits until now + delay"
        elif res.kind == "spawn":
            assert isinstance(rec, Spawned) and rec.children == res.children, \
                "a spawn is one Spawned record carrying every child"
            assert (run.step, run.attempt, run.spawn_step, run.spawned) == \
                (step + 1, 0, step, len(res.children)), "a spawn moves to the fan-in step"
            assert (run.status == WAITING) == (run.pending > 0), \
                "the parent parks while it has children to wait for, else is ready"
            for i in range(len(res.children)):
                child = self.state.runs[f"{rid}:s{step}.{i}"]
                assert child.parent == rid and child.input == res.children[i], \
                    "child i exists with its input and its parent named"
        elif res.kind == "succeed":
            assert isinstance(rec, Terminated) and rec.status == SUCCEEDED, \
                "succeed ends the run succeeded"
            assert rec.result == res.data, "succeed keeps the result"
        elif res.kind in ("fail", "cancel", "cancelled"):
            want = FAILED if res.kind == "fail" else CANCELLED
            assert isinstance(rec, Terminated) and rec.status == want and not rec.dead, \
                f"a {res.kind} verdict ends the run {want}, not dead"
        elif res.permanent or failures + 1 >= limit:
            assert isinstance(rec, Terminated) and rec.status == FAILED and rec.dead, \
                "a permanent error or the max_attempts-th failure dead-letters the step"
        else:
            assert isinstance(rec, AttemptFailed) and rec.kind == res.kind, \
                f"{res.kind} is a failed attempt to retry"
            assert rec.retry_at > self.now, "a retry lies in the future"
            assert run.failures == failures + 1 and run.status == WAITING, \
                "a failed attempt counts one failure and waits for its retry"
        return recs

    def held_at(self, i: int) -> str:
        keys = sorted(self.held)
        return keys[i % len(keys)]

    # --------------------------------------------------------------- rules

    @initialize(priorities=st.lists(st.integers(0, 2), min_size=1, max_size=len(IDS)))
    def first_submissions(self, priorities):
        recs: list = []
        for rid, priority in zip(IDS, priorities, strict=False):
            data = b"in-" + rid.encode()
            recs += self.state.submit(rid, data, self.now, priority=priority)
            self.inbox[rid] = (data, priority, 0)
        self.commit(recs)

    @precondition(lambda self: self.up)
    @rule(results=st.lists(st.tuples(st.integers(0, 20), OUTCOMES, st.floats(0.0, 0.99)),
                           max_size=K),
          k=st.integers(0, K), dt=st.sampled_from([0.0, 0.5, 2.0, 10.0, 60.0]))
    def turn(self, results, k, dt):
        """One busy turn of the loop: results in, reconcile, new leases out, one batch."""
        recs: list = []
        for i, res, jitter in results:
            if self.held:
                recs += self.complete_checked(self.held_at(i), res, jitter)
        self.now += dt
        self.commit(recs + self.lease_due(k))

    @precondition(lambda self: self.up)
    @rule(rid=st.sampled_from(IDS), other_input=st.booleans(),
          priority=st.integers(0, 2), max_attempts=st.sampled_from([0, 0, 1, 2]))
    def submit(self, rid, other_input, priority, max_attempts):
        data = b"in-" + rid.encode()
        if other_input:
            data += b"!"
        known = self.state.runs.get(rid)
        if known is None and rid in self.archive:
            # The supervisor asks the archive for ids the state no longer knows.
            if self.archive[rid].input != data:
                return  # RunConflict (tested end to end)
            return  # a no-op re-submit of an archived run
        if known is not None and known.input != data:
            with pytest.raises(RunConflict):
                self.state.submit(rid, data, self.now, priority=priority,
                                  max_attempts=max_attempts)
            return
        recs = self.state.submit(rid, data, self.now, priority=priority,
                                 max_attempts=max_attempts)
        assert (recs == []) == (known is not None), "a duplicate submission records nothing"
        if known is None:
            self.inbox[rid] = (data, priority, max_attempts)
        self.commit(recs)

    @precondition(lambda self: self.up)
    @rule(k=st.integers(1, K), dt=st.sampled_from([0.0, 0.0, 0.5, 2.0, 10.0, 60.0]))
    def lease(self, k, dt):
        self.now += dt
        self.commit(self.lease_due(k))

    @precondition(lambda self: self.up and self.held)
    @rule(i=st.integers(0, 20), res=OUTCOMES, jitter=st.floats(0.0, 0.99))
    def complete(self, i, res, jitter):
        self.commit(self.complete_checked(self.held_at(i), res, jitter))

    @precondition(lambda self: self.up)
    @rule(rid=st.sampled_from(IDS), attempt=st.integers(0, 4))
    def stale_result(self, rid, attempt):
        if self.held.get(rid) == attempt:
            return
        before = observe(self.state)
        assert self.state.complete(rid, attempt, WorkerResult("succeed"), self.now) == [], \
            "a result for an attempt nobody holds must give no records"
        assert observe(self.state) == before, "a stale result must not change the state"

    @precondition(lambda self: self.up and self.held)
    @rule(i=st.integers(0, 20))
    def release(self, i):
        rid = self.held_at(i)
        attempt = self.held.pop(rid)
        recs = self.state.release(rid, attempt)
        assert recs == [Released(rid, self.state.runs[rid].step, attempt)], \
            "a held lease must be released"
        self.commit(recs)

    @precondition(lambda self: self.up)
    @rule(rid=st.sampled_from(IDS))
    def cancel(self, rid):
        run = self.state.runs.get(rid)
        if run is None:
            with pytest.raises(RunNotFound):
                self.state.cancel(rid, "user", self.now)
            return
        was_leased, was_done = run.leased, run.terminal or run.cancel_reason is not None
        recs = self.state.cancel(rid, "user", self.now)
        if was_done:
            assert recs == [], "cancelling a finished or already cancelled run records nothing"
        elif was_leased:
            assert recs == [CancelRequested(rid, "user", self.now)], \
                "a leased run only records the request; its worker's answer ends it"
        else:
            assert [type(r) for r in recs if r.run_id == rid] == [CancelRequested, Terminated], \
                "an idle run ends cancelled in the same batch"
        self.commit(recs)

    @precondition(lambda self: self.up)
    @rule(rid=st.sampled_from(IDS))
    def deliver_hook(self, rid):
        self.commit(self.state.hook_delivered(rid))

    @precondition(lambda self: self.up)
    @rule(crash_before_drop=st.booleans())
    def archive_finished(self, crash_before_drop):
        """(i) The archiver: upsert hooked finished runs, then journal ``Archived`` (or crash)."""
        done = [r for r in self.state.runs.values() if r.terminal and r.hook_delivered]
        if not done:
            return
        for run in done:
            self.archive[run.run_id] = run_to_snapshot(run)  # committed: durable
        if crash_before_drop:
            self.crash(0)  # killed before Archived was written: the runs are in both
            return
        recs = self.state.archived([(r.run_id, r.finished_at) for r in done], self.now)
        assert [r.run_ids for r in recs] == [[r.run_id for r in done]]
        assert not any(r.run_id in self.state.runs for r in done), "Archived drops them"
        self.commit(recs)

    @precondition(lambda self: self.up)
    @rule(rid=st.sampled_from(IDS))
    def redrive(self, rid):
        run = self.state.runs.get(rid)
        if run is None and rid in self.archive and self.archive[rid].dead:
            # An archived dead letter comes back first (the supervisor's redrive).
            recs = self.state.restore(self.archive[rid])
            assert [type(r) for r in recs] == [Restored]
            self.commit(recs)
            run = self.state.runs.get(rid)
        if run is None:
            return
        dead = run.dead
        recs = self.state.redrive(rid, self.now)
        assert recs == ([Redriven(rid, self.now)] if dead else []), \
            "only a dead-lettered run can be redriven"
        if dead:
            assert not run.terminal and run.failures == 0 and run.abandons == 0, \
                "a redriven run retries its dead step with a fresh series of failures"
        self.commit(recs)

    @precondition(lambda self: self.up)
    @rule(rid=st.sampled_from(IDS), key=st.sampled_from(KEYS), data=st.sampled_from([b"", b"s"]))
    def signal(self, rid, key, data):
        run = self.state.runs.get(rid)
        if run is None:
            with pytest.raises(RunNotFound):
                self.state.signal(rid, key, data, self.now)
            return
        if run.terminal:
            with pytest.raises(RunNotLive):
                self.state.signal(rid, key, data, self.now)
            return
        parked = run.status == WAITING and run.wait_key == key and run.woken is None \
            and not run.leased
        self.commit(self.state.signal(rid, key, data, self.now))
        if parked:
            assert run.woken == [key, data, False] and run.status != WAITING, \
                "a signal wakes the run parked on its key, not timed out"

    @precondition(lambda self: self.up and self.held)
    @rule(picks=st.lists(st.integers(0, 20), min_size=1, max_size=4),
          running=st.integers(-1, 3), reason=st.sampled_from(KILL_REASONS),
          cause=st.integers(-1, 3), stopping=st.booleans())
    def worker_lost(self, picks, running, reason, cause, stopping):
        """(h) A worker holding some leases dies: dispatch decides, the state records."""
        rids: list[str] = []
        for i in picks:
            rid = self.held_at(i)
            if rid not in rids:
                rids.append(rid)
        items = [dispatch.StepView(n + 1, rid, self.held[rid]) for n, rid in enumerate(rids)]
        running_seq = running + 1 if 0 <= running < len(items) else 0
        kill_seq = cause + 1 if 0 <= cause < len(items) and reason else 0
        recs: list = []
        if reason == "cancelled" and kill_seq:  # a kill for a cancel follows a cancel request
            recs += self.state.cancel(items[kill_seq - 1].run_id, "user", self.now)
        verdicts = dispatch.worker_lost(items, running_seq, reason, kill_seq, stopping)
        assert [v[0] for v in verdicts] == items, "one verdict per step, in order"
        for item, verdict in verdicts:
            run = self.state.runs[item.run_id]
            before = (run.failures, run.abandons, run.attempt)
            ran = item.seq == running_seq
            if verdict.startswith("fail:") or verdict == dispatch.CANCELLED:
                assert ran and not stopping, \
                    "(h) only the running step is charged, never while stopping"
            if verdict == dispatch.FAIL_TIMEOUT or verdict == dispatch.CANCELLED:
                assert kill_seq == item.seq, "(h) a kill charges only the step that caused it"
            if verdict == dispatch.FAIL_DIED:
                assert reason in ("", "reload"), "(h) our own kills are never a worker death"
            if running_seq and item.seq > running_seq:
                assert verdict == dispatch.RELEASE, "(h) steps after the running one never ran"
            if reason == "shutdown" and verdict != dispatch.RELEASE:
                assert verdict == dispatch.INTERRUPT, "(h) a shutdown kill interrupts"
            if verdict.startswith("fail:") or verdict == dispatch.CANCELLED:
                kind = verdict[5:] if verdict.startswith("fail:") else "cancelled"
                recs += self.complete_checked(item.run_id, WorkerResult(kind, error="lost"),
                                              0.5)
                continue
            attempt = self.held.pop(item.run_id)
            got = self.state.release(item.run_id, attempt, verdict != dispatch.RELEASE,
                                     self.now, shutdown=verdict == dispatch.INTERRUPT)
            assert len(got) == 1 and isinstance(got[0], Released)
            recs += got
            after = (run.failures, run.abandons, run.attempt)
            if verdict == dispatch.RELEASE:
                assert after == (before[0], before[1], before[2] - 1), \
                    "(h) an unstarted step gets its attempt back"
            elif verdict == dispatch.ABANDON:
                assert after == (before[0], before[1] + 1, before[2]), \
                    "(h) an abandoned step spends its attempt and counts one abandon"
            else:
                assert after == before, "(h) an interrupted step spends its attempt, nothing else"
                assert run.history[-1][5] == "interrupted", "its history says interrupted"
        self.commit(recs)

    @precondition(lambda self: self.up)
    @rule()
    def compact(self):
        parts = self.state.snapshot(self.now, retention=1e18)
        parts = list(parts) if isinstance(parts, (list, tuple)) else [parts]
        parts = [decode(encode(p)) for p in parts]  # what the new base segment holds
        restored = State(POLICY)
        restored.apply_all(parts)
        before = observe(self.state)
        assert observe(restored) == before, "a snapshot must reproduce the live state"
        assert due_view(restored, self.now) == due_view(replay(self.history), self.now), \
            "(g) a state folded from a snapshot must hand out the same runs, woken alike"
        self.state.apply_all(parts)  # as the supervisor does, to drop expired runs
        assert observe(self.state) == before, "folding its own snapshot changes nothing live"
        self.journal = parts
        self.tail = 0  # written to a new segment and renamed in: never torn

    @precondition(lambda self: self.up)
    @rule(torn=st.integers(0, 4))
    def crash(self, torn):
        """The supervisor dies; the batch being written may lose a suffix."""
        cut = min(torn, self.tail)
        if cut:
            del self.journal[-cut:]
            del self.history[-cut:]
        self.tail = 0
        self.up = False
        self.held.clear()  # workers die with their supervisor; their results go nowhere

    @precondition(lambda self: not self.up)
    @rule(dt=st.sampled_from([0.0, 0.0, 1.0, 5.0, 30.0]))
    def restart(self, dt):
        self.now += dt
        self.restart_now()

    def restart_now(self) -> None:
        state = replay(self.journal)
        if self.journal != self.history:
            assert observe(state) == observe(replay(self.history)), \
                "the compacted journal and the full history must replay alike"
        open_leases = {rid: (run.abandons, run.cancel_reason) for rid, run in
                       state.in_flight.items()}
        self.state = state
        recs = state.recover(self.now)
        assert isinstance(recs[0], Recovered) and not state.in_flight, \
            "recover must abandon every open lease"
        for rid, (abandons, cancel) in open_leases.items():
            run = state.runs[rid]
            assert run.abandons == abandons + 1 and not run.leased, "one abandon per crash"
            ends = [r for r in recs if isinstance(r, Terminated) and r.run_id == rid]
            if cancel is not None:
                assert ends and ends[0].status == CANCELLED, \
                    "a cancel-requested lease ends cancelled on recover"
            elif run.abandons > POLICY.max_abandons:
                assert ends and ends[0].dead and ends[0].kind == "abandoned", \
                    "more than max_abandons abandons dead-letter the step"
            else:
                assert not ends, "an abandon within max_abandons ends nothing"
        # The inbox still holds submissions whose record was torn off: they come again.
        for rid, (data, priority, max_attempts) in self.inbox.items():
            if rid not in state.runs and rid not in self.archive:
                recs += state.submit(rid, data, self.now, priority=priority,
                                     max_attempts=max_attempts)
        self.up = True
        self.commit(recs)

    # ---------------------------------------------------------- invariants

    @invariant()
    def replay_matches_live_state(self):
        if not self.up:
            return
        live = observe(self.state)
        assert observe(replay(self.journal)) == live, \
            "(a) replaying the journal must give the live state"
        if self.journal != self.history:  # compacted: the history must agree too
            full = replay(self.history)
            assert observe(full) == live, \
                "(a) replaying the uncompacted history must give the live state"
            assert due_view(replay(self.journal), self.now) == due_view(full, self.now), \
                "(g) a restart from a snapshot must hand out the same runs, woken alike"
        assert set(self.inbox) <= set(self.state.runs) | set(self.archive), \
            "no accepted submission is ever lost (it is live, or archived)"

    @invariant()
    def leases_are_consistent(self):
        if not self.up:
            return
        for rid, run in self.state.runs.items():
            assert (rid in self.state.in_flight) == run.leased, \
                f"(d) run {rid} is in in_flight iff it is leased"
            assert (rid in self.held) == run.leased, \
                f"(d) run {rid} is leased iff a worker holds it"
            if run.leased:
                assert self.state.in_flight[rid] is run and self.held[rid] == run.attempt, \
                    f"(d) run {rid}: the worker holds the attempt the state leased"
                assert not run.terminal, f"(d) finished run {rid} holds no lease"
            if run.cancel_reason is not None and not run.leased:
                assert run.terminal, f"idle cancel-requested run {rid} must end in the same turn"
            if run.abandons > POLICY.max_abandons:
                assert run.terminal, f"run {rid} abandoned too often must be dead-lettered"
        assert set(self.state.unhooked) == {
            rid for rid, r in self.state.runs.items() if r.terminal and not r.hook_delivered
        }, "unhooked holds exactly the finished runs whose hook is owed"

    @invariant()
    def history_follows_the_step_contract(self):
        """(b), (e), (f): an independent fold of the history, run by run."""
        model: dict[str, dict] = {}
        for rec in self.history:
            if isinstance(rec, (Archived, Restored)):
                continue  # (i) a run leaves the journal and comes back as it was
            if isinstance(rec, Recovered):
                for m in model.values():
                    if m["leased"]:
                        m["leased"] = False
                        m["abandons"] += 1
                continue
            if isinstance(rec, Submitted):
                if rec.run_id not in model:
                    model[rec.run_id] = dict(ends=0, step=0, spent=0, failures=0, abandons=0,
                                             leased=False, limit=rec.max_attempts
                                             or POLICY.max_attempts)
                continue
            m = model.get(rec.run_id)
            if m is None:
                continue
            rid = rec.run_id
            if isinstance(rec, Leased):
                assert rec.step == m["step"], f"(f) run {rid} leases its current step"
                assert rec.attempt == m["spent"] + 1, \
                    f"(f) run {rid} step {rec.step}: attempt {rec.attempt} must follow " \
                    f"{m['spent']}"
                assert not m["leased"], f"(d) run {rid} leased twice at once"
                m["spent"], m["leased"] = rec.attempt, True
            elif isinstance(rec, Released):
                m["leased"] = False
                if not rec.started:
                    m["spent"] = rec.attempt - 1
                elif not rec.shutdown:
                    m["abandons"] += 1
            elif isinstance(rec, (StepDone, Spawned)):
                m.update(step=rec.step + 1, spent=0, failures=0, abandons=0, leased=False)
                if isinstance(rec, Spawned):
                    for i in range(len(rec.children)):
                        cid = f"{rid}:s{rec.step}.{i}"
                        assert cid not in model, f"(b) child {cid} is spawned once"
                        model[cid] = dict(ends=0, step=0, spent=0, failures=0, abandons=0,
                                          leased=False, limit=m["limit"])
            elif isinstance(rec, AttemptFailed):
                m["failures"] += 1
                m["leased"] = False
                assert m["failures"] < m["limit"], \
                    f"(e) run {rid} failures must stay below max_attempts"
            elif isinstance(rec, Terminated):
                m["ends"] += 1
                m["leased"] = False
                assert m["ends"] == 1, f"(b) run {rid} must end exactly once"
                if rec.dead and rec.kind in FAILURE_KINDS and "permanent" not in rec.error:
                    assert m["failures"] + 1 == m["limit"], \
                        f"(e) run {rid} is dead-lettered on its max_attempts-th failure"
                if rec.dead and rec.kind == "abandoned":
                    assert m["abandons"] == POLICY.max_abandons + 1, \
                        f"(e) run {rid} is dead-lettered on abandon max_abandons + 1"
            elif isinstance(rec, Redriven):
                m.update(ends=0, failures=0, abandons=0)  # deliveries keep counting
        if not self.up:
            return
        for rid, m in model.items():
            run = self.state.runs.get(rid)
            if run is None:
                assert rid in self.archive, f"(i) run {rid} left the journal unarchived"
                continue
            assert (run.step, run.attempt, run.failures, run.abandons) == \
                (m["step"], m["spent"], m["failures"], m["abandons"]), \
                f"run {rid}: step, attempt, failures and abandons must match the history"
            assert run.failures < m["limit"], f"(e) run {rid} failures below max_attempts"

    @invariant()
    def parents_count_their_live_children(self):
        """Fan-in: a parked parent waits for exactly its live children, and only then."""
        if not self.up:
            return
        runs = self.state.runs
        for rid, run in runs.items():
            if run.spawn_step < 0 or run.terminal:
                continue
            prefix = f"{rid}:s{run.spawn_step}."
            live = sum(1 for i in range(run.spawned)
                       if (c := runs.get(prefix + str(i))) is not None and not c.terminal)
            if run.status == WAITING and run.pending:
                assert run.pending == live, \
                    f"parent {rid} waits for {run.pending} children, {live} are live"
            if run.cancel_reason is None and run.step == run.spawn_step + 1 and not live:
                assert run.pending == 0, f"parent {rid} waits for children that ended"
        for rid, run in runs.items():
            parent = runs.get(run.parent) if run.parent else None
            if parent is not None and parent.status == CANCELLED and not run.terminal and \
                    run.cancel_reason is None and \
                    run.run_id.startswith(f"{parent.run_id}:s{parent.spawn_step}."):
                raise AssertionError(f"child {rid} of cancelled parent {parent.run_id} lives on")

    @invariant()
    def due_runs_are_leasable(self):
        """Peek at what would be leased now (taking it and putting it back)."""
        if self.up and self.strict_timers:
            runs = self.state.due_runs(self.now, 10_000)
            self.state.requeue(runs)
            self.check_due(runs)

    # ------------------------------------------------------------ teardown

    def teardown(self):
        """(c) A fair scheduler finishes every run, and each ends exactly once."""
        if self.up:
            try:
                self.replay_matches_live_state()
                self.leases_are_consistent()
            except AssertionError:
                return  # a rule failed half-way: that failure is the one to report
        else:
            self.restart_now()
        for rid in sorted(self.held):
            self.commit(self.complete_checked(rid, WorkerResult("succeed", b"end"), 0.5))
        for _ in range(100):
            if all(run.terminal for run in self.state.runs.values()):
                break
            for rid, run in sorted(self.state.runs.items()):
                if run.status == WAITING and run.wait_key and run.woken is None \
                        and not run.due_at:
                    self.commit(self.state.signal(rid, run.wait_key, b"end", self.now))
            leased = self.lease_due(10_000)
            recs: list = list(leased)
            for rec in leased:
                recs += self.complete_checked(rec.run_id, WorkerResult("succeed", b"end"), 0.5)
            self.commit(recs)
            if not leased:
                due = self.state.next_due()
                assert due is not None, "a live run with nothing due and no timer is stuck"
                self.now = max(self.now, due)
        self.replay_matches_live_state()
        self.leases_are_consistent()
        self.history_follows_the_step_contract()
        stuck = sorted(rid for rid, run in self.state.runs.items() if not run.terminal)
        assert not stuck, f"(c) every run must end, these did not: {stuck}"
        known = set(self.state.runs) | set(self.archive)
        assert set(self.inbox) == {r for r in known if not is_child(r)}, \
            "every accepted submission is a run (live or archived)"
        ends: dict[str, int] = {}
        for rec in self.history:
            if isinstance(rec, Terminated):
                ends[rec.run_id] = ends.get(rec.run_id, 0) + 1
            elif isinstance(rec, Redriven):
                ends[rec.run_id] = 0
        assert ends == dict.fromkeys(known, 1), "(c) every run must end exactly once"
        for rid, snap in self.archive.items():
            if rid not in self.state.runs:
                assert snap.status in (SUCCEEDED, FAILED, CANCELLED), \
                    f"(i) run {rid} is only in the archive, and finished there"
        kinds = [isinstance(r, Snapshot) for r in self.journal]
        assert kinds == sorted(kinds, reverse=True), \
            "compaction leaves snapshots only at the head of the journal"


class StrictTimersModel(SupervisorModel):
    strict_timers = True


SETTINGS = settings(max_examples=EXAMPLES, deadline=None, stateful_step_count=40,
                    database=None, suppress_health_check=[HealthCheck.too_slow])

TestSupervisorModel = SupervisorModel.TestCase
TestSupervisorModel.settings = SETTINGS
TestSupervisorModel = pytest.mark.timeout(300)(TestSupervisorModel)


class TestStrictTimers(StrictTimersModel.TestCase):
    """Nothing is leased before its due time, across restarts (State._leased bumps seq)."""

    settings = settings(SETTINGS, derandomize=True, phases=[Phase.explicit, Phase.generate])


TestStrictTimers = pytest.mark.timeout(300)(TestStrictTimers)
