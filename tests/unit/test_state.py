"""Unit tests for the pure state machine: one transition at a time, then replay and snapshots.

Every command builds records, applies them and returns them, so each test
checks three things where it matters: the records a command returned, the
live state it left behind, and that ``State().apply_all(journal)`` (replay)
reaches the same observable state.
"""

from __future__ import annotations

import pytest

from journaled.api import RunStatus
from journaled.errors import RunConflict, RunNotFound
from journaled.records import (
    AttemptFailed,
    CancelRequested,
    HookDelivered,
    Leased,
    Recovered,
    Redriven,
    Released,
    Snapshot,
    StepDone,
    Submitted,
    Terminated,
    decode,
    encode,
)
from journaled.state import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    WAITING,
    Policy,
    State,
    WorkerResult,
    backoff,
    outcome_of,
    remaining_delay,
)

T0 = 1_000_000.0

FIELDS = ("status", "step", "payload", "attempt", "failures", "abandons", "result", "error",
          "dead", "kind", "cancel_reason", "leased", "worker", "due_at", "finished_at",
          "hook_delivered", "input", "headers", "priority", "max_attempts", "step_timeout",
          "submitted_at", "traceback",
          # Later additions, compared when the Run has them.
          "wait_key", "signals", "woken", "used_keys", "memos", "history")


def observe(st: State) -> dict:
    """Everything a user or the supervisor can observe about a state."""
    runs = {rid: tuple(getattr(run, f, None) for f in FIELDS) for rid, run in st.runs.items()}
    return {"runs": runs, "in_flight": sorted(st.in_flight), "unhooked": sorted(st.unhooked)}


class Journal:
    """A State plus every record its commands returned, in order."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy
        self.st = State(policy)
        self.recs: list = []

    def __call__(self, recs):
        if isinstance(recs, list):
            self.recs.extend(recs)
        else:
            self.recs.append(recs)
        return recs

    def submit(self, rid: str, data: bytes = b"in", now: float = T0, **kw):
        return self(self.st.submit(rid, data, now, **kw))

    def lease(self, rid: str, now: float = T0, worker: int = 0) -> Leased:
        """Lease exactly ``rid`` (it must be due); everything else goes back in line."""
        due = self.st.due_runs(now, 10_000)
        mine = [r for r in due if r.run_id == rid]
        assert mine, f"run {rid} must be due at {now}"
        self.st.requeue([r for r in due if r.run_id != rid])
        return self(self.st.lease(mine[0], worker, now))

    def complete(self, rid: str, res: WorkerResult, now: float = T0, attempt: int | None = None,
                 jitter: float = 0.5):
        att = self.st.runs[rid].attempt if attempt is None else attempt
        return self(self.st.complete(rid, att, res, now, jitter))

    def replay(self) -> State:
        st = State(self.policy)
        st.apply_all(self.recs)
        return st

    def assert_replay_matches(self) -> None:
        assert observe(self.replay()) == observe(self.st), \
            "replaying the journal must reproduce the live state"


def due_ids(st: State, now: float, limit: int = 10_000) -> list[str]:
    """Run ids due at ``now`` in lease order, without taking them out of line."""
    runs = st.due_runs(now, limit)
    st.requeue(runs)
    return [r.run_id for r in runs]


def CONT(data: bytes = b"next", delay: float = 0.0) -> WorkerResult:  # noqa: N802
    return WorkerResult("continue", data, delay=delay)


SUCCEED = WorkerResult("succeed", b"result")
FAIL = WorkerResult("fail", error="no good")
CANCEL = WorkerResult("cancel", error="runner gave up")
TRANSIENT = WorkerResult("error", error="flaky", traceback="Traceback: flaky")
PERMANENT = WorkerResult("error", error="broken", permanent=True)
DIED = WorkerResult("worker_died", error="worker 0 died")


# ----------------------------------------------------------------- outcomes


@pytest.mark.timeout(10)
def test_continue_records_step_done_and_the_next_step_is_due_at_once():
    j = Journal()
    j.submit("r1", b"0")
    j.lease("r1")
    recs = j.complete("r1", CONT(b"1"), now=T0 + 1)
    assert recs == [StepDone("r1", 0, 1, b"1", T0 + 1, 0.0)], "continue must record one StepDone"
    run = j.st.runs["r1"]
    assert (run.step, run.payload, run.attempt, run.status) == (1, b"1", 0, RUNNING), \
        "continue must move the run to step 1 with the new payload and fresh attempts"
    assert not run.leased and "r1" not in j.st.in_flight, "a finished step holds no lease"
    assert due_ids(j.st, T0 + 1) == ["r1"], "the next step must be due at once"
    leased = j.lease("r1", now=T0 + 1)
    assert (leased.step, leased.attempt) == (1, 1), "step 1 must start at attempt 1"
    j.assert_replay_matches()


@pytest.mark.timeout(10)
def test_restart_resumes_at_next_step():
    j = Journal()
    j.submit("r1", b"0")
    j.lease("r1")
    j.complete("r1", CONT(b"1"))
    st = j.replay()
    recs = st.recover(T0 + 5)
    assert recs == [Recovered(T0 + 5)], "nothing was in flight, so recover only marks the start"
    runs = st.due_runs(T0 + 5, 10)
    assert [(r.run_id, r.step, r.payload) for r in runs] == [("r1", 1, b"1")], \
        "after a restart the run must resume at step 1 with step 0's output"


@pytest.mark.timeout(10)
def test_continue_after_delay_waits_until_its_due_time():
    j = Journal()
    j.submit("r1")
    j.lease("r1")
    recs = j.complete("r1", CONT(b"later", delay=30.0), now=T0 + 1)
    assert recs == [StepDone("r1", 0, 1, b"later", T0 + 1, T0 + 31)], \
        "a delay must be stored as a wall-clock due time"
    run = j.st.runs["r1"]
    assert run.status == WAITING and run.due_at == T0 + 31, "a delayed step must be waiting"
    assert j.st.next_due() == T0 + 31, "the timer must be the next thing due"
    assert due_ids(j.st, T0 + 30.999) == [], "a delayed step must not be due before its time"
    assert due_ids(j.st, T0 + 31) == ["r1"], "a delayed step must be due at its time"
    j.assert_replay_matches()




@pytest.mark.timeout(10)
def test_a_delay_survives_a_restart():
    j = Journal()
    j.submit("r1")
    j.lease("r1")
    j.complete("r1", CONT(b"later", delay=30.0), now=T0 + 1)
    replayed = j.replay()
    replayed.recover(T0 + 20)
    assert due_ids(replayed, T0 + 20) == [], "a delayed step must not run early after a restart"
    assert due_ids(replayed, T0 + 31) == ["r1"], "the replayed delay must end at the same time"


@pytest.mark.timeout(10)
def test_a_retry_backoff_survives_a_restart():
    j = Journal()
    j.submit("r1")
    j.lease("r1")
    (failed,) = j.complete("r1", TRANSIENT, now=T0, jitter=0.99)
    replayed = j.replay()
    replayed.recover(T0)
    assert due_ids(replayed, T0) == [], "a retry must not run before its backoff after a restart"
    assert due_ids(replayed, failed.retry_at) == ["r1"], "the retry is due when its backoff ends"


@pytest.mark.timeout(10)
def test_a_signal_wait_survives_a_restart():
    if "key" not in WorkerResult.__struct_fields__:
        pytest.skip("no signal waits in this State")
    j = Journal()
    j.submit("r1")
    j.lease("r1")
    j.complete("r1", WorkerResult("continue", b"parked", key="approve"), now=T0 + 1)
    assert due_ids(j.st, T0 + 2) == [], "a run parked on a signal is not due"
    replayed = j.replay()
    replayed.recover(T0 + 2)
    assert due_ids(replayed, T0 + 2) == [], \
        "a run parked on a signal without a timeout must stay parked after a restart"


@pytest.mark.timeout(10)
def test_succeed_terminates_the_run_with_its_result():
    j = Journal()
    j.submit("r1")
    j.lease("r1")
    recs = j.complete("r1", SUCCEED, now=T0 + 2)
    assert recs == [Terminated("r1", SUCCEEDED, T0 + 2, 0, 1, result=b"result")], \
        "succeed must record one Terminated succeeded with the result"
    run = j.st.runs["r1"]
    assert run.status == SUCCEEDED and run.result == b"result" and run.finished_at == T0 + 2
    assert j.st.unhooked == {"r1"}, "a terminal run waits for its hook"
    assert j.st.idle(), "nothing is left to do"
    out = outcome_of(run)
    assert (out.status, out.result, out.steps) == (RunStatus.SUCCEEDED, b"result", 1), \
        "the step that succeeded counts as a completed step"
    assert due_ids(j.st, T0 + 100) == [], "a terminal run is never due again"
    j.assert_replay_matches()


@pytest.mark.timeout(10)
def test_fail_verdict_terminates_failed_without_dead_lettering():
    j = Journal()
    j.submit("r1")
    j.lease("r1")
    recs = j.complete("r1", FAIL)
    assert recs == [Terminated("r1", FAILED, T0, 0, 1, error="no good", kind="fail")], \
        "fail must record one Terminated failed"
    run = j.st.runs["r1"]
    assert run.status == FAILED and not run.dead and run.error == "no good", \
        "a runner's fail verdict is not a dead letter"
    assert outcome_of(run).steps == 1, "the step that failed by verdict counts as completed"
    j.assert_replay_matches()


@pytest.mark.parametrize("kind", ["cancel", "cancelled"])
@pytest.mark.timeout(10)
def test_cancel_verdict_terminates_cancelled(kind):
    j = Journal()
    j.submit("r1")
    j.lease("r1")
    recs = j.complete("r1", WorkerResult(kind, error="stop"))
    assert len(recs) == 1 and isinstance(recs[0], Terminated), "cancel must end the run once"
    assert recs[0].status == CANCELLED and recs[0].error == "stop" and not recs[0].dead, \
        "a runner's cancel ends the run cancelled with its reason"
    assert j.st.runs["r1"].status == CANCELLED
    j.assert_replay_matches()


@pytest.mark.timeout(10)
def test_transient_error_records_attempt_failed_and_retries_after_backoff():
    policy = Policy()
    j = Journal(policy)
    j.submit("r1")
    j.lease("r1")
    recs = j.complete("r1", TRANSIENT, now=T0 + 1, jitter=0.5)
    retry_at = T0 + 1 + backoff(1, policy, 0.5)
    assert recs == [AttemptFailed("r1", 0, 1, "error", "flaky", T0 + 1, retry_at,
                                  "Traceback: flaky")], \
        "a transient error must record one AttemptFailed"
    assert retry_at > T0 + 1, "the retry must lie in the future"
    run = j.st.runs["r1"]
    assert (run.status, run.failures, run.error, run.kind) == (WAITING, 1, "flaky", "error"), \
        "a failed attempt counts one failure and backs off"
    assert due_ids(j.st, retry_at - 0.001) == [], "no retry before the backoff ends"
    assert due_ids(j.st, retry_at) == ["r1"], "the retry is due when the backoff ends"
    leased = j.lease("r1", now=retry_at)
    assert (leased.step, leased.attempt) == (0, 2), "the retry is attempt 2 of the same step"
    j.assert_replay_matches()


@pytest.mark.timeout(10)
def test_retries_exhausted_dead_letters_the_run():
    j = Journal(Policy(max_attempts=3))
    j.submit("r1")
    now = T0
    kinds = []
    for _ in range(3):
        j.lease("r1", now=now)
        recs = j.complete("r1", TRANSIENT, now=now)
        kinds.append(type(recs[0]).__name__)
        now += 1000
    assert kinds == ["AttemptFailed", "AttemptFailed", "Terminated"], \
        "max_attempts=3 allows two retries, the third failure dead-letters"
    end = j.recs[-1]
    assert end.status == FAILED and end.dead and end.kind == "error", \
        "a step out of retries ends the run failed and dead"
    assert "failed 3 times" in end.error and "flaky" in end.error, \
        "the dead letter must say why and keep the last error"
    assert end.traceback == "Traceback: flaky", "the last traceback must be kept"
    run = j.st.runs["r1"]
    assert run.failures <= 3 and run.dead and run.status == FAILED
    assert sum(isinstance(r, Terminated) for r in j.recs) == 1, "run r1 must end exactly once"
    j.assert_replay_matches()


@pytest.mark.timeout(10)
def test_per_run_max_attempts_overrides_the_policy():
    j = Journal(Policy(max_attempts=5))
    j.submit("r1", max_attempts=1)
    j.lease("r1")
    recs = j.complete("r1", TRANSIENT)
    assert isinstance(recs[0], Terminated) and recs[0].dead, \
        "a run submitted with max_attempts=1 dead-letters on its first failure"


@pytest.mark.timeout(10)
def test_permanent_error_dead_letters_at_once():
    j = Journal()
    j.submit("r1")
    j.lease("r1")
    recs = j.complete("r1", PERMANENT)
    assert len(recs) == 1 and isinstance(recs[0], Terminated), "no retry for a permanent error"
    assert recs[0].status == FAILED and recs[0].dead and "permanent" in recs[0].error, \
        "a permanent error ends the run failed and dead at once"
    assert j.st.runs["r1"].failures == 0, "no AttemptFailed was recorded"
    j.assert_replay_matches()


@pytest.mark.parametrize("kind", ["worker_died", "timeout"])
@pytest.mark.timeout(10)
def test_worker_death_and_timeout_count_as_failures(kind):
    j = Journal(Policy(max_attempts=2))
    j.submit("r1")
    j.lease("r1")
    first = j.complete("r1", WorkerResult(kind, error="gone"))
    assert isinstance(first[0], AttemptFailed) and first[0].kind == kind, \
        f"{kind} must count as a failed attempt"
    assert j.st.runs["r1"].failures == 1
    j.lease("r1", now=T0 + 1000)
    second = j.complete("r1", WorkerResult(kind, error="gone"), now=T0 + 1000)
    assert isinstance(second[0], Terminated) and second[0].dead and second[0].kind == kind, \
        f"a step whose {kind} repeats max_attempts times is dead-lettered (poison pill)"
    j.assert_replay_matches()


@pytest.mark.timeout(10)
def test_stale_result_yields_no_records():
    j = Journal()
    j.submit("r1")
    j.submit("idle")
    j.lease("r1")
    before = observe(j.st)
    assert j.st.complete("r1", 2, SUCCEED, T0) == [], "a result for another attempt is stale"
    assert j.st.complete("r1", 0, SUCCEED, T0) == [], "attempt 0 was never leased"
    assert j.st.complete("idle", 1, SUCCEED, T0) == [], "an unleased run takes no result"
    assert j.st.complete("nope", 1, SUCCEED, T0) == [], "an unknown run takes no result"
    assert observe(j.st) == before, "a stale result must not change the state"
    j.complete("r1", TRANSIENT)
    assert j.st.complete("r1", 1, SUCCEED, T0) == [], \
        "a second answer for an attempt already failed is stale"


# ------------------------------------------------------------------- cancel


@pytest.mark.timeout(10)
def test_cancel_of_a_pending_run_terminates_it_at_once():
    j = Journal()
    j.submit("r1")
    recs = j(j.st.cancel("r1", "user", T0 + 1))
    assert recs == [CancelRequested("r1", "user", T0 + 1),
                    Terminated("r1", CANCELLED, T0 + 1, 0, 0, error="user",
                               kind="cancel_request")], \
        "an idle run is cancelled in one batch: request and end"
    assert due_ids(j.st, T0 + 2) == [], "a cancelled run is never leased"
    j.assert_replay_matches()


@pytest.mark.timeout(10)
def test_cancel_of_a_waiting_run_terminates_it_and_its_timer_never_fires():
    j = Journal()
    j.submit("r1")
    j.lease("r1")
    j.complete("r1", CONT(delay=10))
    recs = j(j.st.cancel("r1", "user", T0 + 1))
    assert [type(r) for r in recs] == [CancelRequested, Terminated], \
        "a delayed run is not leased, so cancel ends it at once"
    assert due_ids(j.st, T0 + 100) == [], "the timer of a cancelled run must not fire"
    j.assert_replay_matches()


@pytest.mark.parametrize("result", [SUCCEED, CONT(), FAIL, TRANSIENT, PERMANENT, DIED],
                         ids=["succeed", "continue", "fail", "error", "permanent", "died"])
@pytest.mark.timeout(10)
def test_cancel_of_a_leased_run_waits_for_the_worker_and_discards_its_outcome(result):
    j = Journal()
    j.submit("r1")
    j.lease("r1")
    recs = j(j.st.cancel("r1", "user", T0 + 1))
    assert recs == [CancelRequested("r1", "user", T0 + 1)], \
        "a leased run only records the request until its worker answers"
    run = j.st.runs["r1"]
    assert run.leased and run.status == RUNNING and run.cancel_reason == "user"
    assert j.st.reconcile(T0 + 1) == [], "reconcile must not end a run a worker still holds"
    assert j(j.st.cancel("r1", "again", T0 + 2)) == [], "a second cancel records nothing"
    end = j.complete("r1", result, now=T0 + 3)
    assert end == [Terminated("r1", CANCELLED, T0 + 3, 0, 1, error="user",
                              kind="cancel_request")], \
        "whatever the worker says, a cancelled run ends cancelled with the request's reason"
    assert sum(isinstance(r, Terminated) for r in j.recs) == 1, "run r1 must end exactly once"
    j.assert_replay_matches()


@pytest.mark.timeout(10)
def test_cancel_of_a_terminal_run_is_a_no_op():
    j = Journal()
    j.submit("r1")
    j.lease("r1")
    j.complete("r1", SUCCEED)
    before = observe(j.st)
    assert j.st.cancel("r1", "late", T0 + 1) == [], "a terminal run cannot be cancelled"
    assert observe(j.st) == before, "cancelling a finished run changes nothing"


@pytest.mark.timeout(10)
def test_cancel_of_an_unknown_run_raises_run_not_found():
    with pytest.raises(RunNotFound):
        State().cancel("ghost", "user", T0)


@pytest.mark.timeout(10)
def test_a_released_lease_of_a_cancel_requested_run_ends_it_on_reconcile():
    j = Journal()
    j.submit("r1")
    leased = j.lease("r1")
    j(j.st.cancel("r1", "user", T0))
    assert j(j.st.release("r1", leased.attempt)) == [Released("r1", 0, 1)]
    assert due_ids(j.st, T0) == [], "a cancel-requested run must not be leased again"
    recs = j(j.st.reconcile(T0 + 1))
    assert [type(r) for r in recs] == [Terminated] and recs[0].status == CANCELLED, \
        "the supervisor's per-turn reconcile must end the released cancelled run"
    j.assert_replay_matches()


# ------------------------------------------------------------------- submit


@pytest.mark.timeout(10)
def test_duplicate_submit_with_same_input_is_idempotent():
    j = Journal()
    first = j.submit("r1", b"x", headers={"a": "1"})
    assert first == [Submitted("r1", b"x", T0, {"a": "1"})]
    assert j.submit("r1", b"x", now=T0 + 9, headers={"a": "1"}) == [], \
        "a duplicate submission must record nothing"
    j.lease("r1")
    j.complete("r1", SUCCEED)
    assert j.submit("r1", b"x", now=T0 + 9, headers={"a": "1"}) == [], \
        "a duplicate of a finished run must not start it again"
    assert j.st.runs["r1"].submitted_at == T0, "the first submission's time stands"


@pytest.mark.timeout(10)
def test_submit_of_a_taken_id_with_other_input_or_headers_raises_run_conflict():
    st = State()
    st.submit("r1", b"x", T0)
    with pytest.raises(RunConflict):
        st.submit("r1", b"y", T0)
    with pytest.raises(RunConflict):
        st.submit("r1", b"x", T0, headers={"k": "v"})
    assert list(st.runs) == ["r1"] and st.runs["r1"].input == b"x", \
        "a conflicting submission must leave the first run untouched"


@pytest.mark.timeout(10)
def test_submit_keeps_run_options_and_starts_pending():
    st = State()
    st.submit("r1", b"x", T0, priority=7, max_attempts=9, step_timeout=2.5)
    run = st.runs["r1"]
    assert (run.priority, run.max_attempts, run.step_timeout) == (7, 9, 2.5)
    assert (run.status, run.step, run.attempt, run.payload) == (PENDING, 0, 0, b"x"), \
        "a new run is pending at step 0 with its input as payload"


# ---------------------------------------------------------- recover, release


@pytest.mark.timeout(10)
def test_recover_abandons_in_flight_leases_without_counting_a_failure():
    j = Journal()
    j.submit("r1")
    j.submit("r2")
    j.lease("r1", worker=3)
    live = j.replay()  # the supervisor died with r1 in flight
    assert "r1" in live.in_flight and live.runs["r1"].worker == 3, \
        "replay must show the lease that was open at the crash"
    recs = live.recover(T0 + 10, pid=42)
    assert recs == [Recovered(T0 + 10, 42)], "abandoning a lease ends nothing"
    run = live.runs["r1"]
    assert not run.leased and not live.in_flight, "recover must drop every open lease"
    assert (run.failures, run.abandons, run.attempt) == (0, 1, 1), \
        "an abandoned lease is not a failure, but its attempt stays spent"
    assert set(due_ids(live, T0 + 10)) == {"r1", "r2"}, "an abandoned run is due at once"
    rerun = live.due_runs(T0 + 10, 10)
    leased = live.lease(next(r for r in rerun if r.run_id == "r1"), 0, T0 + 10)
    assert leased.attempt == 2, "the next delivery after an abandon is attempt 2"


@pytest.mark.timeout(10)
def test_exceeding_max_abandons_dead_letters_the_step_on_recover():
    policy = Policy(max_abandons=2)
    journal: list = []
    st = State(policy)
    journal += st.submit("r1", b"", T0)
    ends = []
    for crash in range(1, 4):
        runs = st.due_runs(T0 + crash, 10)
        assert [r.run_id for r in runs] == ["r1"], f"r1 must be due after {crash - 1} crashes"
        journal.append(st.lease(runs[0], 0, T0 + crash))
        st = State(policy)
        st.apply_all(journal)
        recs = st.recover(T0 + crash)
        journal += recs
        ends = [r for r in recs if isinstance(r, Terminated)]
        if crash <= 2:
            assert not ends, f"{crash} abandons are within max_abandons=2"
    assert len(ends) == 1, "the third abandon must dead-letter the step"
    end = ends[0]
    assert end.status == FAILED and end.dead and end.kind == "abandoned", \
        "a step that keeps taking the supervisor down ends failed and dead"
    assert "3 supervisor crashes" in end.error
    assert st.runs["r1"].failures == 0, "abandons are not failures"
    assert due_ids(st, T0 + 100) == [], "a dead-lettered run is never leased again"


@pytest.mark.timeout(10)
def test_recover_ends_a_run_that_was_cancelled_while_leased():
    j = Journal()
    j.submit("r1")
    j.lease("r1")
    j(j.st.cancel("r1", "user", T0))
    st = j.replay()
    recs = st.recover(T0 + 1)
    assert [type(r) for r in recs] == [Recovered, Terminated], \
        "a cancel-requested lease abandoned by a crash must end cancelled on recover"
    assert recs[1].status == CANCELLED and recs[1].error == "user"


@pytest.mark.timeout(10)
def test_release_hands_back_the_attempt_without_a_failure():
    j = Journal()
    j.submit("r1")
    leased = j.lease("r1")
    recs = j(j.st.release("r1", leased.attempt))
    assert recs == [Released("r1", 0, 1)], "release must record the handed-back attempt"
    run = j.st.runs["r1"]
    assert (run.attempt, run.failures, run.abandons, run.status) == (0, 0, 0, PENDING), \
        "an unstarted step 0 is pending again and its attempt is not spent"
    assert not run.leased and not j.st.in_flight
    again = j.lease("r1", now=T0 + 1)
    assert again.attempt == 1, "the next lease reuses the released attempt number"
    j.assert_replay_matches()


@pytest.mark.timeout(10)
def test_release_of_a_step_that_may_have_run_spends_its_attempt_as_an_abandon():
    j = Journal(Policy(max_abandons=1))
    j.submit("r1")
    leased = j.lease("r1")
    recs = j(j.st.release("r1", leased.attempt, True, T0 + 1))
    assert recs == [Released("r1", 0, 1, True, T0 + 1)]
    run = j.st.runs["r1"]
    assert (run.attempt, run.failures, run.abandons) == (1, 0, 1), \
        "a delivery whose outcome was lost is spent, counted as an abandon, not a failure"
    assert [h[5] for h in run.history] == ["abandoned"], "history shows it as abandoned"
    again = j.lease("r1", now=T0 + 2)
    assert again.attempt == 2, "an attempt number is never reused for a step that may have run"
    j(j.st.release("r1", again.attempt, True, T0 + 3))
    ends = j(j.st.reconcile(T0 + 3))
    assert len(ends) == 1 and ends[0].dead and ends[0].kind == "abandoned", \
        "past max_abandons the step is dead-lettered"
    j.assert_replay_matches()


@pytest.mark.timeout(10)
def test_release_of_a_later_step_keeps_it_running_and_due():
    j = Journal()
    j.submit("r1")
    j.lease("r1")
    j.complete("r1", CONT(delay=5))
    j.lease("r1", now=T0 + 5)
    j(j.st.release("r1", 1))
    run = j.st.runs["r1"]
    assert (run.step, run.attempt, run.status) == (1, 0, RUNNING), \
        "a released later step stays in progress with its attempt handed back"
    assert due_ids(j.st, T0 + 5) == ["r1"], "a released run is due again at once"
    j.assert_replay_matches()


@pytest.mark.timeout(10)
def test_release_of_a_stale_attempt_or_idle_run_records_nothing():
    j = Journal()
    j.submit("r1")
    assert j.st.release("r1", 1) == [], "an unleased run has nothing to release"
    j.lease("r1")
    assert j.st.release("r1", 2) == [], "a release for another attempt is stale"
    assert j.st.release("ghost", 1) == [], "an unknown run has nothing to release"
    assert j.st.runs["r1"].leased, "a stale release must leave the lease alone"


# --------------------------------------------------------------- due order


@pytest.mark.timeout(10)
def test_due_runs_orders_by_priority_then_first_in_first_out():
    st = State()
    for i, prio in enumerate([0, 5, 0, 5, -1, 0]):
        st.submit(f"r{i}", b"", T0 + i, priority=prio)
    assert due_ids(st, T0 + 10) == ["r1", "r3", "r0", "r2", "r5", "r4"], \
        "higher priority first, submission order within a priority"
    assert due_ids(st, T0 + 10, limit=2) == ["r1", "r3"], "limit takes the head of the line"
    assert due_ids(st, T0 + 10) == ["r1", "r3", "r0", "r2", "r5", "r4"], \
        "requeue must put the runs back in their places"


@pytest.mark.timeout(10)
def test_a_continued_run_goes_before_newer_runs_of_its_priority():
    j = Journal()
    j.submit("a")
    j.submit("b")
    j.submit("hi", priority=1)
    j.lease("a")
    j.complete("a", CONT())
    assert due_ids(j.st, T0) == ["hi", "a", "b"], \
        "depth-first: a started run's next step goes before step 0 of newer runs, " \
        "and priority still comes first"
    j.assert_replay_matches()
    assert due_ids(j.replay(), T0) == ["hi", "a", "b"], "replay reproduces the same order"
    parts = snapshot_parts(j.st, T0, 86400)
    assert due_ids(restore(parts, None), T0) == ["hi", "a", "b"], "so does a snapshot"


@pytest.mark.timeout(10)
def test_due_runs_skips_leased_and_terminal_runs():
    j = Journal()
    for rid in ("a", "b", "c"):
        j.submit(rid)
    j.lease("a")
    j.lease("b")
    j.complete("b", SUCCEED)
    assert due_ids(j.st, T0) == ["c"], "leased and finished runs are not due"
    taken = j.st.due_runs(T0, 10)
    assert j.st.due_runs(T0, 10) == [], "runs handed out are out of line until requeued"
    j.st.requeue(taken)


# ------------------------------------------------------ delay arithmetic


@pytest.mark.timeout(10)
def test_remaining_delay_before_at_and_long_after_the_due_time():
    assert remaining_delay(T0 + 10, T0) == 10.0, "before: the time left"
    assert remaining_delay(T0 + 10, T0 + 10) == 0.0, "at: nothing left"
    assert remaining_delay(T0 + 10, T0 + 1e6) == 0.0, "long after: never negative"


@pytest.mark.timeout(10)
def test_backoff_grows_exponentially_then_stays_at_the_cap():
    p = Policy(backoff_base=0.5, backoff_cap=60.0)
    full = [backoff(n, p, 0.999999) for n in range(1, 10)]
    half = [backoff(n, p, 0.0) for n in range(1, 10)]
    assert half[:5] == [0.25, 0.5, 1.0, 2.0, 4.0], "before the cap each failure doubles"
    assert backoff(8, p, 0.0) == 30.0 and backoff(9, p, 0.0) == 30.0, "at the cap it stops"
    assert backoff(60, p, 0.0) == 30.0, "long after the cap it stays there"
    assert all(b <= 60.0 for b in full), "jitter never goes past the cap"
    assert all(0.5 * f <= h + 1e-9 for f, h in zip(full, half, strict=True)), \
        "jitter scales between half and all of the exponential step"
    assert backoff(0, p, 0.0) == backoff(1, p, 0.0), "a zeroth failure backs off like the first"


@pytest.mark.timeout(10)
def test_backoff_stays_at_the_cap_for_huge_failure_counts():
    p = Policy(backoff_base=0.5, backoff_cap=60.0)
    assert backoff(2000, p, 0.0) == 30.0, "a run with a huge max_attempts must keep retrying"


@pytest.mark.timeout(10)
def test_a_run_with_a_huge_max_attempts_keeps_retrying():
    st = State()
    st.submit("r1", b"", T0, max_attempts=5000)
    now = T0
    for _ in range(1100):
        run = st.due_runs(now, 1)[0]
        st.lease(run, 0, now)
        recs = st.complete("r1", run.attempt, TRANSIENT, now)
        assert isinstance(recs[0], AttemptFailed), "retries remain, so the attempt must retry"
        now = recs[0].retry_at


# ------------------------------------------------------ snapshot, retention


def _busy_journal() -> Journal:
    """One run in every interesting place."""
    j = Journal(Policy(max_attempts=2))
    for rid in ("pending", "leased", "waiting", "retrying", "done", "dead", "cancelled",
                "cancel_leased", "released"):
        j.submit(rid, rid.encode(), headers={"h": rid})
    j.lease("leased", worker=4)
    j.lease("waiting")
    j.complete("waiting", CONT(b"w1", delay=50))
    j.lease("retrying")
    j.complete("retrying", TRANSIENT)
    j.lease("done")
    j.complete("done", CONT(b"d1"))
    j.lease("done")
    j.complete("done", SUCCEED)
    j(j.st.hook_delivered("done"))
    j.lease("dead")
    j.complete("dead", PERMANENT)
    j(j.st.cancel("cancelled", "bye", T0))
    j.lease("cancel_leased")
    j(j.st.cancel("cancel_leased", "bye", T0))
    j.lease("released")
    j(j.st.release("released", 1))
    return j


def snapshot_parts(st: State, now: float, retention: float, **kw) -> list[Snapshot]:
    """``State.snapshot`` as a list of parts (one part for a small state)."""
    out = st.snapshot(now, retention, **kw)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def restore(parts: list[Snapshot], policy: Policy | None) -> State:
    """A fresh State from snapshot parts that went through the disk format."""
    st = State(policy)
    st.apply_all(decode(encode(p)) for p in parts)
    return st


@pytest.mark.timeout(10)
def test_snapshot_restores_the_same_observable_state():
    j = _busy_journal()
    parts = snapshot_parts(j.st, T0 + 1, retention=7 * 86400)
    assert all(isinstance(p, Snapshot) for p in parts)
    assert sum(len(p.runs) for p in parts) == len(j.st.runs), "nothing is old enough to drop"
    restored = restore(parts, j.policy)
    assert observe(restored) == observe(j.st), \
        "a snapshot must reproduce status, step, payload, attempts and results of every run"
    assert observe(restored) == observe(j.replay()), "snapshot and full replay must agree"
    for st in (restored, j.st):
        assert st.runs["leased"].leased and st.runs["leased"].worker == 4, \
            "a leased run must stay leased to its worker"
        assert st.runs["waiting"].status == WAITING and st.runs["waiting"].due_at == T0 + 50, \
            "a waiting run must keep its due time"
    assert sorted(due_ids(restored, T0 + 1)) == ["pending", "released", "retrying"], \
        "only the pending, released and backed-off runs are due a second later"
    a = restore(parts, j.policy)
    b = j.replay()
    for st in (a, b):
        st.complete("leased", 1, SUCCEED, T0 + 2)
        st.complete("cancel_leased", 1, SUCCEED, T0 + 2)
        st.recover(T0 + 3)
    assert observe(a) == observe(b), "snapshot and replay must keep agreeing after new commands"
    assert sorted(due_ids(a, T0 + 1000)) == sorted(due_ids(b, T0 + 1000)) == \
        ["pending", "released", "retrying", "waiting"], \
        "timers restored from a snapshot must fire like replayed ones"


@pytest.mark.timeout(10)
def test_a_snapshot_in_several_parts_restores_every_run():
    j = _busy_journal()
    parts = snapshot_parts(j.st, T0 + 1, retention=86400, part_bytes=1)
    assert len(parts) == len(j.st.runs), "a run bigger than a part gets a part of its own"
    assert [p.part for p in parts] == list(range(len(parts)))
    assert observe(restore(parts, j.policy)) == observe(j.st), \
        "all parts together must reproduce the live state"


@pytest.mark.timeout(10)
def test_snapshot_then_recover_abandons_the_snapshotted_lease():
    j = _busy_journal()
    st = restore(snapshot_parts(j.st, T0, 86400), j.policy)
    recs = st.recover(T0 + 1)
    ends = {r.run_id: r.status for r in recs if isinstance(r, Terminated)}
    assert ends == {"cancel_leased": CANCELLED}, \
        "only the cancel-requested lease ends on recover; the other is abandoned"
    assert st.runs["leased"].abandons == 1 and not st.in_flight, \
        "the snapshotted lease is abandoned once"
    assert "leased" in due_ids(st, T0 + 1), "the abandoned lease is due again"


def _finished_runs() -> State:
    st = State()
    for rid in ("old", "old_unhooked", "young", "live"):
        st.submit(rid, b"", T0)
    for rid, at in (("old", T0), ("old_unhooked", T0), ("young", T0 + 900)):
        run = st.due_runs(T0, 10)
        mine = next(r for r in run if r.run_id == rid)
        st.requeue([r for r in run if r is not mine])
        st.lease(mine, 0, at)
        st.complete(rid, 1, SUCCEED, at)
    st.hook_delivered("old")
    st.hook_delivered("young")
    return st


@pytest.mark.timeout(10)
def test_snapshot_keeps_every_finished_run_until_archived_whatever_its_age():
    st = _finished_runs()
    parts = snapshot_parts(st, T0 + 1e9, retention=500)
    kept = sorted(r.run_id for p in parts for r in p.runs)
    assert kept == ["live", "old", "old_unhooked", "young"], \
        "retention is the archive's: a snapshot never drops a run the archive may not hold"
    fresh = restore(parts, None)
    assert fresh.unhooked == {"old_unhooked"}, \
        "a run whose hook is owed must still owe it after the snapshot"


@pytest.mark.timeout(10)
def test_archived_drops_the_runs_from_every_index_and_snapshots():
    st = _finished_runs()
    at = {rid: st.runs[rid].finished_at for rid in ("old", "old_unhooked")}
    recs = st.archived([("old", at["old"]), ("old_unhooked", at["old_unhooked"]),
                        ("live", 0.0), ("young", -1.0)], T0 + 2000)
    assert [r.run_ids for r in recs] == [["old", "old_unhooked"]], \
        "only terminal runs archived with their current finished_at are dropped"
    assert sorted(st.runs) == ["live", "young"] and st.unhooked == set()
    kept = sorted(r.run_id for p in snapshot_parts(st, T0 + 3000, 1.0) for r in p.runs)
    assert kept == ["live", "young"], "an archived run is in no later snapshot"
    replayed = restore(snapshot_parts(_finished_runs(), T0, 1.0) + recs, None)
    assert sorted(replayed.runs) == ["live", "young"], "replay drops archived runs the same way"
    assert st.submit("old", b"again", T0 + 2000) != [], \
        "the state no longer knows an archived id (the supervisor asks the archive)"
    assert [r.run_id for r in st.due_runs(T0 + 4000, 10)] == ["live", "old"], \
        "a stale ready-queue entry of an archived run is skipped"


@pytest.mark.timeout(10)
def test_snapshot_mid_journal_replaces_everything_before_it():
    j = _busy_journal()
    tail = Journal(j.policy)
    parts = snapshot_parts(j.st, T0, 86400)
    tail.st.apply_all(parts)
    tail.recs = list(parts)
    tail.lease("pending", now=T0 + 1)
    tail.complete("pending", SUCCEED, now=T0 + 1)
    replayed = State(j.policy)
    replayed.apply_all(j.recs + tail.recs)
    assert observe(replayed) == observe(tail.st), \
        "a Snapshot record must reset the fold, whatever came before it"


# ----------------------------------------------------------- hooks, redrive


@pytest.mark.timeout(10)
def test_hook_is_delivered_once():
    j = Journal()
    j.submit("r1")
    assert j.st.hook_delivered("r1") == [], "a live run has no hook to deliver"
    j.lease("r1")
    j.complete("r1", SUCCEED)
    assert j(j.st.hook_delivered("r1")) == [HookDelivered("r1")]
    assert j.st.hook_delivered("r1") == [], "a hook is delivered once"
    assert not j.st.unhooked and j.st.runs["r1"].hook_delivered
    assert j.replay().unhooked == set(), "a delivered hook must not fire again after replay"


@pytest.mark.timeout(10)
def test_redrive_reruns_the_dead_step_with_fresh_failures_and_counting_deliveries():
    j = Journal(Policy(max_attempts=2))
    j.submit("r1", b"0")
    j.lease("r1")
    j.complete("r1", CONT(b"1"))
    j.lease("r1")
    j.complete("r1", PERMANENT)
    assert j.st.runs["r1"].dead
    recs = j(j.st.redrive("r1", T0 + 5))
    assert recs == [Redriven("r1", T0 + 5)]
    run = j.st.runs["r1"]
    assert (run.status, run.step, run.payload, run.attempt, run.failures) == \
        (RUNNING, 1, b"1", 1, 0), "a redriven run retries its dead step with its input"
    assert run.error is None and not run.dead and run.result is None
    assert "r1" not in j.st.unhooked, "a redriven run owes no hook until it ends again"
    leased = j.lease("r1", now=T0 + 5)
    assert (leased.step, leased.attempt) == (1, 2), \
        "failures start over, but attempts keep counting deliveries"
    j.complete("r1", SUCCEED, now=T0 + 6)
    assert j.st.runs["r1"].status == SUCCEEDED and j.st.unhooked == {"r1"}
    ends = [r for r in j.recs if isinstance(r, Terminated)]
    assert len(ends) == 2 and isinstance(j.recs[j.recs.index(ends[0]) + 1], Redriven), \
        "a run ends twice only with a Redriven between"
    j.assert_replay_matches()


@pytest.mark.timeout(10)
def test_redrive_of_a_run_that_is_not_dead_is_a_no_op():
    j = Journal()
    j.submit("live")
    j.submit("ok")
    j.lease("ok")
    j.complete("ok", FAIL)
    assert j.st.redrive("live", T0) == [], "a live run cannot be redriven"
    assert j.st.redrive("ok", T0) == [], "a run failed by its verdict is not dead-lettered"
    with pytest.raises(RunNotFound):
        j.st.redrive("ghost", T0)


# ---------------------------------------------------------- replay, queries


@pytest.mark.timeout(10)
def test_every_record_survives_a_msgpack_round_trip():
    j = _busy_journal()
    j(j.st.recover(T0 + 1))
    j(snapshot_parts(j.st, T0 + 2, 86400))
    decoded = [decode(encode(r)) for r in j.recs]
    assert decoded == j.recs, "every record must decode to itself"
    st = State(j.policy)
    st.apply_all(decoded)
    assert observe(st) == observe(j.st), "replay from decoded bytes must match the live state"
    assert st.records_applied == len(j.recs)


@pytest.mark.timeout(10)
def test_status_counts_and_idle_follow_the_runs():
    j = _busy_journal()
    counts = j.st.status_counts()
    assert sum(counts.values()) == len(j.st.runs), "each run is counted once"
    assert counts[SUCCEEDED] == 1 and counts[FAILED] == 1 and counts[CANCELLED] == 1
    assert counts[WAITING] == 2 and counts[PENDING] == 2, \
        "the delayed and the backing-off runs wait; pending and released runs are pending"
    assert not j.st.idle()


@pytest.mark.timeout(10)
def test_outcome_hides_result_and_finish_time_until_the_run_ends():
    j = Journal()
    j.submit("r1")
    j.lease("r1")
    j.complete("r1", CONT(b"1"))
    out = outcome_of(j.st.runs["r1"])
    assert (out.status, out.result, out.finished_at, out.steps) == \
        (RunStatus.RUNNING, None, None, 1), "a live run shows progress but no result"


# ------------------------------------------- issue 11: snapshots, policy, drain


@pytest.mark.timeout(10)
def test_snapshot_fold_keeps_signal_wait_without_timeout_asleep():
    j = Journal()
    j.submit("parked")
    j.submit("timed")
    j.lease("parked")
    j.complete("parked", WorkerResult("continue", b"p", key="approve"), now=T0 + 1)
    j.lease("timed")
    j.complete("timed", WorkerResult("continue", b"t", delay=60, key="go"), now=T0 + 1)
    for folded in (restore(snapshot_parts(j.st, T0 + 2, 86400), None), j.st):
        if folded is j.st:  # the live supervisor folds its own snapshot
            folded.apply_all(snapshot_parts(j.st, T0 + 2, 86400))
        assert due_ids(folded, T0 + 3) == [], \
            "a run parked on a signal with no timeout has no timer after a snapshot fold"
        assert due_ids(folded, T0 + 1e6) == ["timed"], "a wait with a timeout keeps its timer"
        folded.signal("parked", "approve", b"yes", T0 + 1e6)
        runs = folded.due_runs(T0 + 1e6, 10)
        woken = {r.run_id: State.woken_by(r) for r in runs}
        assert woken == {"parked": ["approve", b"yes", False], "timed": ["go", b"", True]}, \
            "a real signal wakes it, not timed out; the timed wait times out"


@pytest.mark.timeout(10)
def test_snapshot_parts_are_cut_by_bytes_so_33_runs_of_1mib_fit():
    st = State()
    for i in range(40):
        st.submit(f"r{i}", b"x" * (1 << 20), T0)
    parts = st.snapshot(T0, 86400)
    sizes = [len(encode(p)) for p in parts]
    assert len(parts) > 1 and max(sizes) < (20 << 20), f"parts of bounded bytes, got {sizes}"
    assert sum(len(p.runs) for p in parts) == 40
    assert len(restore(parts, None).runs) == 40


@pytest.mark.timeout(10)
def test_fold_does_not_depend_on_policy_and_abandon_limit_is_decided_by_reconcile():
    j = Journal(Policy(max_abandons=0))
    j.submit("r")
    j.lease("r")
    recs = j(j.st.recover(T0 + 5))
    assert any(isinstance(r, Terminated) and r.kind == "abandoned" for r in recs), \
        "one abandon over max_abandons=0 dead-letters the step"
    # Folding the same records under any policy gives the same state.
    a, b = State(Policy(max_abandons=0)), State(Policy(max_abandons=99))
    a.apply_all(j.recs[:-1])
    b.apply_all(j.recs[:-1])
    assert observe(a) == observe(b), "the fold never reads the policy"


@pytest.mark.timeout(10)
def test_abandon_limit_decision_survives_a_snapshot():
    j = Journal(Policy(max_abandons=1))
    j.submit("r")
    for k in range(2):
        j.lease("r", now=T0 + k)
        j(j.st.release("r", j.st.runs["r"].attempt, started=True, now=T0 + k))
        if k == 0:
            assert not j.st.runs["r"].terminal
    # A fold of a journal whose last records were not reconciled (an offline compaction,
    # a Client): the decision must still be made by the next reconcile.
    raw = State()
    for rec in j.recs:
        if not isinstance(rec, Terminated):
            raw.apply(rec)
    st = restore(snapshot_parts(raw, T0 + 9, 86400), Policy(max_abandons=1))
    ends = [r for r in st.reconcile(T0 + 10) if isinstance(r, Terminated)]
    assert ends and ends[0].dead and ends[0].kind == "abandoned", \
        "a run abandoned too often is dead-lettered after a snapshot too, not leased again"


@pytest.mark.timeout(10)
def test_drain_cut_is_interrupted_and_never_counts_toward_max_abandons():
    j = Journal(Policy(max_abandons=1))
    j.submit("r")
    for k in range(12):
        j.lease("r", now=T0 + k)
        j(j.st.release("r", j.st.runs["r"].attempt, started=True, now=T0 + k + 0.5,
                       shutdown=True))
        j(j.st.reconcile(T0 + k + 0.5))
    run = j.st.runs["r"]
    assert not run.terminal and run.abandons == 0 and run.attempt == 12, \
        "twelve drain cuts: twelve deliveries, no abandon"
    assert {h[5] for h in run.history} == {"interrupted"}
    assert "shutdown" in run.history[0][6], "the history entry says it was a shutdown"
    j.assert_replay_matches()
    old = Released("r", 0, 1, True, T0)
    assert decode(encode(old)) == old and not decode(encode(old)).shutdown, \
        "a Released without the new field still decodes, as an abandon"


@pytest.mark.timeout(10)
def test_abandoned_attempt_ends_at_the_last_record_before_the_crash_not_the_restart():
    j = Journal()
    j.submit("r")
    j.submit("other")
    j.lease("r", now=T0 + 1)
    j.lease("other", now=T0 + 2)
    j.complete("other", SUCCEED, now=T0 + 3)
    j(j.st.recover(T0 + 3600))
    h = j.st.runs["r"].history[0]
    assert h[5] == "abandoned" and h[4] == T0 + 3, \
        "the attempt ended when the old supervisor was last seen, not an hour later"
    st = restore(snapshot_parts(j.replay(), T0 + 4000, 86400), None)
    st.lease(st.due_runs(T0 + 4000, 10)[0], 0, T0 + 4000)
    st.recover(T0 + 9000)
    assert st.runs["r"].history[-1][4] == T0 + 4000, "a snapshot keeps the last time seen"


@pytest.mark.timeout(10)
def test_offline_snapshot_keeps_finished_runs_and_remembers_hooks_in_use():
    j = Journal()
    for rid in ("hooked", "owed"):
        j.submit(rid)
        j.lease(rid)
        j.complete(rid, SUCCEED)
    j(j.st.hook_delivered("hooked"))
    offline = j.replay()  # 'journaled compact' folds the journal, knowing no hook
    kept = [r.run_id for p in offline.snapshot(T0 + 1e9, 1.0) for r in p.runs]
    assert kept == ["hooked", "owed"], "finished runs leave the journal only by Archived"
    again = restore(offline.snapshot(T0 + 1e9, 1.0), None)
    assert again.hooks_in_use and again.unhooked == {"owed"}, \
        "the snapshot remembers that hooks were in use, and which one is owed"


@pytest.mark.timeout(10)
def test_started_runs_go_before_new_runs_depth_first_40_runs_3_steps_1_worker():
    st = State()
    order = []
    for i in range(40):
        st.submit(f"r{i:02}", b"", T0 + i)
    for _ in range(200):
        runs = st.due_runs(T0 + 100, 1)
        if not runs:
            break
        run = runs[0]
        st.lease(run, 0, T0 + 100)
        order.append((run.run_id, run.step))
        res = CONT() if run.step < 2 else SUCCEED
        st.complete(run.run_id, run.attempt, res, T0 + 100)
    assert order[:3] == [("r00", 0), ("r00", 1), ("r00", 2)], \
        "the first run finishes before any other run starts"
    assert order.index(("r00", 2)) < order.index(("r39", 0))


def test_a_run_snapshot_holds_every_field_of_its_run_by_name():
    # run_to_snapshot passes fields by position (keywords cost msgspec a name match each):
    # a field added out of order would land in another's place.
    from journaled.records import RunSnapshot, Submitted
    from journaled.run import Run, run_from_snapshot, run_to_snapshot

    run = Run(Submitted("r", b"in", 1.0, {"h": "1"}, 2, 3, 4.0, runner="x",
                        resources={"gpu": 1.0}, key="k", parent="p"), 5)
    values = {}
    for i, name in enumerate(RunSnapshot.__struct_fields__):
        old = getattr(run, name)
        # A value of its own per field (no validation on construction: any type will do).
        new = ({f"k{i}": i} if isinstance(old, dict) else [b"t" * i] if name == "trail"
               else [[i]] if isinstance(old, list) else float(i) if isinstance(old, float)
               else f"v{i}")
        setattr(run, name, new)
        values[name] = new
    snap = run_to_snapshot(run)
    assert {n: getattr(snap, n) for n in RunSnapshot.__struct_fields__} == values
    back = run_to_snapshot(run_from_snapshot(snap))
    assert back == snap
