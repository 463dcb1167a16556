"""Unit and property tests of the pure dispatch decisions (``journaled.dispatch``).

Who is killed, who is charged for a lost worker, what is taken back and who
gets work: the rules S2-10 and S2-11 of the 2026-12 review broke.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from journaled import dispatch
from journaled.dispatch import (
    ABANDON,
    CANCELLED,
    FAIL_DIED,
    FAIL_TIMEOUT,
    INTERRUPT,
    RELEASE,
    StepView,
    WorkerView,
    kill_due,
    lease_plan,
    next_deadline,
    signal_name,
    steal_candidates,
    worker_lost,
)


def steps(n: int, **head) -> tuple[StepView, ...]:
    out = [StepView(i + 1, f"r{i + 1}", 1) for i in range(n)]
    if head:
        out[0] = out[0]._replace(**head)
    return tuple(out)


def verdicts(items, running, reason, cause, stopping=False) -> list[str]:
    return [v for _, v in worker_lost(items, running, reason, cause, stopping)]


@pytest.mark.timeout(10)
def test_worker_lost_charges_a_death_of_its_own_to_the_running_step_only():
    assert verdicts(steps(3), 2, "", 0) == [ABANDON, FAIL_DIED, RELEASE], \
        "before the running step: maybe ran (abandon); after it: never started (release)"


@pytest.mark.timeout(10)
def test_worker_lost_with_nothing_running_charges_nothing():
    assert verdicts(steps(2), 0, "", 0) == [ABANDON, ABANDON], \
        "between steps we cannot tell: delivered, but nobody's fault"


@pytest.mark.timeout(10)
def test_a_kill_for_a_queued_steps_cancel_never_charges_the_running_step():
    # The kill was meant for step 2 (its cancel deadline), but step 3 runs by now.
    assert verdicts(steps(3), 3, "cancelled", 2) == [ABANDON, ABANDON, ABANDON], \
        "only the step whose own cancel caused the kill may be charged"
    assert verdicts(steps(3), 3, "timeout", 1) == [ABANDON, ABANDON, ABANDON]


@pytest.mark.timeout(10)
def test_a_kill_charges_the_step_whose_own_deadline_caused_it():
    assert verdicts(steps(2), 1, "timeout", 1) == [FAIL_TIMEOUT, RELEASE]
    assert verdicts(steps(2), 1, "cancelled", 1) == [CANCELLED, RELEASE]


@pytest.mark.timeout(10)
def test_a_death_while_stopping_is_an_abandon_and_a_shutdown_kill_an_interrupt():
    assert verdicts(steps(2), 1, "", 0, stopping=True) == [ABANDON, RELEASE], \
        "a worker death while the supervisor stops is never worker_died"
    assert verdicts(steps(2), 1, "shutdown", 1, stopping=True) == [INTERRUPT, RELEASE], \
        "a step cut at the drain timeout is interrupted, not abandoned"
    assert verdicts(steps(1), 0, "shutdown", 0, stopping=True) == [INTERRUPT]


@pytest.mark.timeout(10)
def test_a_lost_executor_is_an_abandon():
    assert verdicts(steps(2), 1, "lost", 0) == [ABANDON, RELEASE]


@pytest.mark.timeout(10)
def test_kill_due_only_while_the_cause_is_the_running_step():
    w = WorkerView(0, steps(2, cancel_at=5.0), running_seq=1, head_started=0.0)
    assert kill_due(w, 4.9, False) is None
    assert kill_due(w, 5.0, False) == ("cancelled", 1)
    assert kill_due(w, 5.0, True) == ("shutdown", 1), "our own shutdown's cancel"
    between = w._replace(running_seq=0)
    assert kill_due(between, 9.0, False) is None, "between steps: its result is on the way"
    assert next_deadline(between, 9.0) == pytest.approx(9.01), "look again soon, not spin"
    queued = WorkerView(0, (StepView(1, "a", 1), StepView(2, "b", 1, cancel_at=1.0)), 1, 0.0)
    assert kill_due(queued, 100.0, False) is None, "a queued step's cancel is a skip, not a kill"


@pytest.mark.timeout(10)
def test_kill_due_for_the_running_steps_own_timeout():
    w = WorkerView(0, steps(1, limit=5.0), running_seq=1, head_started=10.0)
    assert kill_due(w, 14.9, False) is None
    assert kill_due(w, 15.0, False) == ("timeout", 1)
    assert next_deadline(w, 0.0) == 15.0


@pytest.mark.timeout(10)
def test_steal_only_when_a_worker_idles_and_another_is_stuck():
    busy = WorkerView(0, steps(3), 1, head_started=0.0, avg_step=0.01)
    idle = WorkerView(1, (), 0, 0.0)
    assert steal_candidates([busy, idle], 1.0) == [0]
    assert steal_candidates([busy, idle], 0.03) == [], "not yet stuck (4 x avg, >= 20 ms)"
    assert steal_candidates([busy], 1.0) == [], "nobody idles: nothing to gain"
    assert steal_candidates([busy, idle._replace(alive=False)], 1.0) == []


@pytest.mark.timeout(10)
def test_lease_plan_shares_fairly_least_loaded_first():
    a = WorkerView(0, steps(1), 1, 0.0, depth=10)
    b = WorkerView(1, (), 0, 0.0, depth=10)
    assert lease_plan([a, b], ready=6) == [(1, 3), (0, 3)], \
        "idle first; a busy worker may hold one beyond its share"
    assert lease_plan([a, b._replace(alive=False)], ready=6) == [(0, 6)]
    assert lease_plan([WorkerView(0, (), 0, 0.0, depth=1)], ready=50) == [(0, 1)]


@pytest.mark.timeout(10)
def test_signal_name_names_signals_not_negative_codes():
    assert signal_name(-11) == "killed by SIGSEGV"
    assert signal_name(-9) == "killed by SIGKILL"
    assert signal_name(3) == "exit code 3"
    assert signal_name(None) == "exit code unknown"


REASONS = st.sampled_from(["", "timeout", "cancelled", "shutdown", "lost", "reload", "storage"])


@pytest.mark.timeout(60)
@settings(max_examples=500, deadline=None)
@given(n=st.integers(0, 6), running=st.integers(0, 7), reason=REASONS,
       cause=st.integers(0, 7), stopping=st.booleans())
def test_worker_lost_rules_hold_for_any_loss(n, running, reason, cause, stopping):
    items = steps(n)
    out = worker_lost(items, running, reason, cause, stopping)
    assert [i for i, _ in out] == list(items), "one verdict per step, in order"
    charged = [i for i, v in out if v in (FAIL_DIED, FAIL_TIMEOUT, CANCELLED)]
    assert len(charged) <= 1, "at most one step is charged for one death"
    for item, v in out:
        if v in (FAIL_TIMEOUT, CANCELLED):
            assert item.seq == running == cause, "only the cause, and only while it runs"
        if v == FAIL_DIED:
            assert item.seq == running and reason in ("", "reload") and not stopping
        if running and item.seq > running and any(i.seq == running for i in items):
            assert v == RELEASE, "steps after the running one never started"
        if stopping:
            assert v in (RELEASE, ABANDON, INTERRUPT), "no failure while stopping"
    assert dispatch.RELEASE != dispatch.ABANDON
