"""End to end through the embedded ``Runtime``: real worker processes, a real journal.

Every outcome a runner can give, every failure path (retry, dead letter,
worker death, timeout), cancellation in its three shapes, idempotent
submission and the terminal hook. Runners live in ``tests.apps.basic`` and
report what they saw through their results; the journal is read back after
the runtime stops to check what was recorded.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from journaled import RunOutcome, RunStatus, Runtime
from journaled.client import Client
from journaled.errors import InvalidRunId, JournaledError, RunConflict, StateLocked
from journaled.records import (
    AttemptFailed,
    CancelRequested,
    HookDelivered,
    Leased,
    StepDone,
    Submitted,
    Terminated,
)
from tests.apps import basic

from .helpers import journal_records, pid_alive, wait_for


def _records_of(state: Path, run_id: str, kind: type) -> list:
    return [r for r in journal_records(state) if type(r) is kind and r.run_id == run_id]


# --------------------------------------------------------------------------- outcomes


@pytest.mark.timeout(30)
def test_a_multi_step_run_threads_its_payload_through_every_step_and_succeeds(runtime, state_dir):
    rt = runtime()
    headers = {"app": "chain", "user": "ann", "journaled.secret": "hidden"}
    rid = rt.submit(b"7", headers=headers, run_id="chain-1")
    out = rt.wait(rid, timeout=20)
    rt.close()

    assert rid == "chain-1", "a given run id must be the id returned"
    assert out.status is RunStatus.SUCCEEDED, f"the chain must succeed, got {out}"
    seen = json.loads(out.result)
    assert seen["n"] == 7 * 2 ** (basic.CHAIN_STEPS - 1), "each step must get the previous payload"
    obs = seen["obs"]
    assert [o["step"] for o in obs] == list(range(basic.CHAIN_STEPS)), \
        "step_number must count 0, 1, 2, ... one per step"
    assert all(o["run_id"] == rid for o in obs), "every step must see its run id"
    assert all(o["headers"] == {"app": "chain", "user": "ann"} for o in obs), \
        "steps must see the submitted headers with journaled.* keys stripped"
    assert [o["attempts"] for o in obs] == [1, 2, 1, 1], \
        "attempts must be 1 on first delivery and 2 on the retry of step 1"
    assert len({o["job_id"] for o in obs}) == basic.CHAIN_STEPS, "job_id must be unique per step"
    assert out.steps == basic.CHAIN_STEPS, "steps must count every step run to completion"

    failed = _records_of(state_dir, rid, AttemptFailed)
    assert len(failed) == 1 and failed[0].step == 1, "step 1 must have failed exactly once"
    assert f"first delivery of {obs[1]['job_id']} fails" == failed[0].error, \
        "job_id must be the same on the failed attempt and on its retry"


@pytest.mark.timeout(30)
def test_continue_after_holds_the_next_step_until_its_due_time(runtime, state_dir):
    rt = runtime()
    delay = 0.5
    rid = rt.submit(b"", headers={"app": "delay", "delay": str(delay)})
    out = rt.wait(rid, timeout=20)
    rt.close()

    assert out.status is RunStatus.SUCCEEDED, f"the delayed run must succeed, got {out}"
    seen = json.loads(out.result)
    assert seen["started_at"] - seen["returned_at"] >= delay, \
        "step 1 must not start before step 0 returned plus the delay"
    done = _records_of(state_dir, rid, StepDone)
    assert len(done) == 1 and done[0].due_at == pytest.approx(done[0].at + delay), \
        "the due time must be recorded as the step's end plus the delay"
    step1 = [r for r in _records_of(state_dir, rid, Leased) if r.step == 1]
    assert len(step1) == 1 and step1[0].at >= done[0].due_at, \
        "step 1 must not be leased before its recorded due time"


@pytest.mark.timeout(20)
def test_succeed_ends_the_run_with_its_result_bytes(runtime):
    rt = runtime()
    data = b"\x00\xffbinary\nresult"
    out = rt.wait(rt.submit(data), timeout=10)
    assert (out.status, out.result, out.steps) == (RunStatus.SUCCEEDED, data, 1), \
        "Succeed(result) must end the run succeeded with exactly those bytes after one step"
    assert out.error is None, "a succeeded run has no error"


@pytest.mark.timeout(20)
def test_a_fail_verdict_ends_the_run_failed_with_its_reason_and_dead_letters_nothing(
        runtime, state_dir):
    rt = runtime()
    rid = rt.submit(b"nope", headers={"app": "fail"})
    out = rt.wait(rid, timeout=10)
    rt.close()
    assert out.status is RunStatus.FAILED, "Fail must end the run failed"
    assert out.error == "verdict: nope", "the run's error must be the Fail reason"
    assert out.result is None, "a failed run has no result"
    assert Client(state_dir).dead() == [], "a Fail verdict must not dead-letter the step"
    assert len(_records_of(state_dir, rid, Leased)) == 1, "a Fail verdict must not be retried"


@pytest.mark.timeout(20)
def test_a_cancel_verdict_ends_the_run_cancelled_with_its_reason(runtime):
    rt = runtime()
    out = rt.wait(rt.submit(b"", headers={"app": "cancel_verdict"}), timeout=10)
    assert out.status is RunStatus.CANCELLED, "Cancel must end the run cancelled"
    assert out.error == "the runner decided to stop", "the run's error must be the Cancel reason"


# ------------------------------------------------------------------- errors, dead letters


@pytest.mark.timeout(20)
def test_a_transient_error_is_retried_and_the_retry_sees_attempts_2(runtime, state_dir):
    rt = runtime()
    rid = rt.submit(b"", headers={"app": "flaky"})
    out = rt.wait(rid, timeout=10)
    rt.close()
    assert (out.status, out.result) == (RunStatus.SUCCEEDED, b"2"), \
        "the retry after a transient error must succeed and see attempts == 2"
    failed = _records_of(state_dir, rid, AttemptFailed)
    assert [f.kind for f in failed] == ["error"], "exactly one failed attempt must be recorded"
    assert "flaky service timed out" in failed[0].error, "the failure must keep its message"


@pytest.mark.timeout(20)
def test_a_step_failing_max_attempts_times_is_dead_lettered_and_the_run_fails(
        runtime, state_dir, caplog):
    rt = runtime(max_attempts=3)
    rid = rt.submit(b"", headers={"app": "always_transient"})
    verdict = rt.submit(b"no", headers={"app": "fail"})
    with caplog.at_level(logging.WARNING, logger="journaled"):
        out = rt.wait(rid, timeout=10)
        rt.wait(verdict, timeout=10)
        rt.close()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith(f"run {rid} failed: ") and "still broken at attempt 3" in m
               and f"journaled retry {rid}" in m for m in warned), \
        f"a dead letter must be logged for the operator: {warned}"
    assert not any(verdict in m for m in warned), "a Fail verdict is no dead letter"
    assert out.status is RunStatus.FAILED, "exhausted retries must end the run failed"
    assert "still broken at attempt 3" in out.error, "the error must be the last failure's"
    dead = {r.run_id: r for r in Client(state_dir).dead()}
    assert rid in dead, "a step out of attempts must be listed by Client.dead()"
    assert dead[rid].attempt == 3, "the step must have been delivered max_attempts times"
    assert "still broken at attempt 3" in dead[rid].error, "the dead letter must keep the error"
    assert len(_records_of(state_dir, rid, Leased)) == 3, "no delivery beyond max_attempts"


@pytest.mark.timeout(20)
def test_a_permanent_error_dead_letters_the_step_after_one_attempt(runtime, state_dir):
    rt = runtime(max_attempts=3)
    rid = rt.submit(b"", headers={"app": "permanent"})
    out = rt.wait(rid, timeout=10)
    rt.close()
    assert out.status is RunStatus.FAILED, "a permanent error must end the run failed"
    assert "input can never be processed" in out.error, "the error must carry the message"
    dead = {r.run_id: r for r in Client(state_dir).dead()}
    assert rid in dead and dead[rid].attempt == 1, "a permanent error must dead-letter at once"
    assert len(_records_of(state_dir, rid, Leased)) == 1, "a permanent error must not be retried"


@pytest.mark.timeout(20)
def test_a_plain_exception_is_retried_as_transient_and_its_traceback_is_kept(runtime, state_dir):
    rt = runtime(max_attempts=3)
    rid = rt.submit(b"", headers={"app": "exception"})
    out = rt.wait(rid, timeout=10)
    rt.close()
    assert out.status is RunStatus.FAILED, "an exception on every attempt must fail the run"
    assert f"ValueError: boom in run {rid}" in out.error, "the error must name type and message"
    assert len(_records_of(state_dir, rid, Leased)) == 3, \
        "a plain exception must count as transient: retried up to max_attempts"
    dead = {r.run_id: r for r in Client(state_dir).dead()}
    assert rid in dead, "the step must be dead-lettered once its attempts are spent"
    tb = dead[rid].traceback
    assert "Traceback (most recent call last)" in tb and "_explode_with_a_named_frame" in tb, \
        "the runner's formatted traceback must be kept with the dead letter"


@pytest.mark.timeout(20)
def test_returning_a_non_outcome_fails_the_run_permanently_naming_the_type(runtime, state_dir):
    rt = runtime()
    rid = rt.submit(b"", headers={"app": "bad_return"})
    out = rt.wait(rid, timeout=10)
    rt.close()
    assert out.status is RunStatus.FAILED, "returning 42 must fail the run"
    assert "int" in out.error, "the error must name the type that came back"
    assert len(_records_of(state_dir, rid, Leased)) == 1, "a bad return value is permanent"


# ------------------------------------------------------------------------ worker deaths


@pytest.mark.timeout(20)
def test_a_worker_that_dies_mid_step_is_replaced_and_the_step_retried(runtime, state_dir):
    rt = runtime()
    rid = rt.submit(b"", headers={"app": "exit_once"})
    out = rt.wait(rid, timeout=10)
    rt.close()
    assert (out.status, out.result) == (RunStatus.SUCCEEDED, b"2"), \
        "after os._exit on attempt 1 the step must be retried and see attempts == 2"
    failed = _records_of(state_dir, rid, AttemptFailed)
    assert [f.kind for f in failed] == ["worker_died"], "the death must count as one failure"


@pytest.mark.timeout(30)
def test_a_poison_pill_is_dead_lettered_after_max_attempts_and_the_pool_keeps_serving(
        runtime, state_dir):
    rt = runtime(max_attempts=3)
    rid = rt.submit(b"", headers={"app": "poison"})
    out = rt.wait(rid, timeout=15)
    assert out.status is RunStatus.FAILED, "a step that always kills its worker must fail"
    others = [rt.submit(f"after-{i}".encode()) for i in range(4)]
    for i, other in enumerate(others):
        got = rt.wait(other, timeout=10)
        assert (got.status, got.result) == (RunStatus.SUCCEEDED, f"after-{i}".encode()), \
            "the pool must keep serving other runs after a poison pill"
    rt.close()
    dead = {r.run_id: r for r in Client(state_dir).dead()}
    assert rid in dead, "a poison pill must be dead-lettered, never retried forever"
    assert (dead[rid].attempt, dead[rid].kind) == (3, "worker_died"), \
        "the poison pill must be delivered exactly max_attempts times"
    assert "exited with code 3" in dead[rid].error, "the dead letter must say how the worker died"


# --------------------------------------------------------------------------- cancel


@pytest.mark.timeout(30)
def test_cancelling_a_step_that_watches_its_token_ends_the_run_cancelled_without_a_kill(
        runtime, tmp_path):
    rt = runtime(cancel_grace=10.0)
    mark = tmp_path / "running"
    rid = rt.submit(b"", headers={"app": "watch_token", "mark": str(mark)})
    wait_for(mark.exists, what="the step to start")
    pid = int(mark.read_text())
    t0 = time.monotonic()
    asked = rt.cancel(rid, reason="no longer needed")
    out = rt.wait(rid, timeout=20)
    elapsed = time.monotonic() - t0
    assert not asked.status.terminal, "a cancel of a running step is a request, not a verdict"
    assert out.status is RunStatus.CANCELLED, "the run must end cancelled"
    assert out.error == "no longer needed", "the run's error must be the cancel reason"
    assert elapsed < 5.0, "a step watching its token must stop well before the 10 s grace"
    assert pid_alive(pid), "a cooperative step's worker must not be killed"


@pytest.mark.timeout(30)
def test_cancelling_a_step_that_ignores_its_token_kills_it_after_the_grace(runtime, tmp_path):
    rt = runtime(workers=1, cancel_grace=0.5)
    mark = tmp_path / "running"
    rid = rt.submit(b"", headers={"app": "ignore_token", "mark": str(mark)})
    wait_for(mark.exists, what="the step to start")
    pid = int(mark.read_text())
    t0 = time.monotonic()
    rt.cancel(rid, reason="stop it")
    out = rt.wait(rid, timeout=10)
    elapsed = time.monotonic() - t0
    assert out.status is RunStatus.CANCELLED, "a step ignoring its token must still end cancelled"
    assert 0.5 <= elapsed < 5.0, "the step must be killed after the grace, and not long after"
    wait_for(lambda: not pid_alive(pid), timeout=5, what=f"worker pid {pid} to be gone")
    nxt = rt.wait(rt.submit(b"", headers={"app": "pid"}), timeout=10)
    assert nxt.status is RunStatus.SUCCEEDED, "a replacement worker must serve the next run"
    assert int(nxt.result) != pid, "the next run must run on a new worker process"


@pytest.mark.timeout(20)
def test_cancelling_a_delayed_run_ends_it_without_waiting_for_its_delay(runtime):
    rt = runtime()
    rid = rt.submit(b"", headers={"app": "long_delay"})
    wait_for(lambda: rt.status(rid).status is RunStatus.WAITING, what="the hour-long delay")
    t0 = time.monotonic()
    rt.cancel(rid, reason="not worth the wait")
    out = rt.wait(rid, timeout=5)
    assert out.status is RunStatus.CANCELLED, "a delayed run must end cancelled"
    assert time.monotonic() - t0 < 3.0, "cancelling a delayed run must not wait for the delay"
    assert out.steps == 1, "the step that ran before the delay still counts"


@pytest.mark.timeout(20)
def test_cancelling_a_finished_run_reports_that_the_cancel_lost_the_race(runtime, state_dir):
    rt = runtime()
    rid = rt.submit(b"done")
    rt.wait(rid, timeout=10)
    out = rt.cancel(rid, reason="too late")
    assert (out.status, out.result) == (RunStatus.SUCCEEDED, b"done"), \
        "cancel of a terminal run must return the terminal status unchanged"
    client_out = Client(state_dir).cancel(rid, reason="too late as well")
    assert client_out.status is RunStatus.SUCCEEDED, "the same must hold through a Client"
    rt.close()
    assert _records_of(state_dir, rid, CancelRequested) == [], \
        "a cancel that lost the race must not be journaled"


# --------------------------------------------------------------------------- timeout


@pytest.mark.timeout(30)
def test_a_step_running_past_step_timeout_is_killed_and_counted_as_a_failure(runtime, state_dir):
    rt = runtime(step_timeout=0.3, max_attempts=2)
    rid = rt.submit(b"", headers={"app": "sleep", "seconds": "30"})
    t0 = time.monotonic()
    out = rt.wait(rid, timeout=15)
    elapsed = time.monotonic() - t0
    rt.close()
    assert out.status is RunStatus.FAILED, "a step that always times out must fail the run"
    assert elapsed < 10, "a timed-out step must be killed, not waited for"
    assert "timed out" in out.error, "the error must say the step timed out"
    failed = _records_of(state_dir, rid, AttemptFailed)
    assert [f.kind for f in failed] == ["timeout"], "the first timeout must count as a failure"
    dead = {r.run_id: r for r in Client(state_dir).dead()}
    assert (dead[rid].attempt, dead[rid].kind) == (2, "timeout"), \
        "the step must be dead-lettered after max_attempts timeouts"


# ------------------------------------------------------------------------ submission


@pytest.mark.timeout(20)
def test_resubmitting_the_same_id_and_input_is_idempotent(runtime, state_dir):
    rt = runtime()
    first = rt.submit(b"same", run_id="once")
    second = rt.submit(b"same", run_id="once")
    out = rt.wait(first, timeout=10)
    third = rt.submit(b"same", run_id="once")
    rt.close()
    assert first == second == third == "once", "a re-submit must return the same id"
    assert out.status is RunStatus.SUCCEEDED, "the run must succeed"
    assert [o.run_id for o in rt.runs()] == ["once"], "re-submits must not create runs"
    assert len(_records_of(state_dir, "once", Submitted)) == 1, "one Submitted record per run"
    assert len(_records_of(state_dir, "once", Terminated)) == 1, "the run must finish once"


@pytest.mark.timeout(20)
def test_resubmitting_an_id_with_other_input_raises_run_conflict(runtime):
    rt = runtime()
    rt.submit(b"original", run_id="taken")
    with pytest.raises(RunConflict):
        rt.submit(b"something else", run_id="taken")
    out = rt.wait("taken", timeout=10)
    assert out.result == b"original", "a refused conflicting submit must not touch the run"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("bad", [
    pytest.param("", id="empty"),
    pytest.param("x" * 129, id="129-chars"),
    pytest.param("has space", id="space"),
    pytest.param("a/b", id="slash"),
])
def test_a_malformed_run_id_is_refused_with_invalid_run_id(runtime, bad):
    rt = runtime()
    with pytest.raises(InvalidRunId):
        rt.submit(b"x", run_id=bad)
    assert rt.runs() == [], "a refused submission must not create a run"


@pytest.mark.timeout(20)
def test_a_run_id_of_128_allowed_characters_is_accepted(runtime):
    rt = runtime()
    rid = ("Az09._:-" * 16)[:128]
    assert rt.submit(b"x", run_id=rid) == rid, "128 characters of the allowed set must be valid"
    assert rt.wait(rid, timeout=10).status is RunStatus.SUCCEEDED, "and the run must succeed"


# -------------------------------------------------------------------- hook, outcome


@pytest.mark.timeout(30)
def test_on_terminal_fires_once_per_run_with_its_final_outcome(runtime, state_dir):
    seen: list[RunOutcome] = []
    lock = threading.Lock()

    def hook(outcome: RunOutcome) -> None:
        with lock:
            seen.append(outcome)

    rt = runtime(on_terminal=hook)
    ids = {
        rt.submit(b"3", headers={"app": "chain"}): RunStatus.SUCCEEDED,
        rt.submit(b"ok"): RunStatus.SUCCEEDED,
        rt.submit(b"no", headers={"app": "fail"}): RunStatus.FAILED,
        rt.submit(b"", headers={"app": "permanent"}): RunStatus.FAILED,
        rt.submit(b"", headers={"app": "cancel_verdict"}): RunStatus.CANCELLED,
    }
    finals = {rid: rt.wait(rid, timeout=15) for rid in ids}
    rt.close()

    assert Counter(o.run_id for o in seen) == Counter(list(ids)), \
        "on_terminal must fire exactly once for every run in a crash-free run"
    for o in seen:
        assert o.status is ids[o.run_id], f"the hook must see the final status of {o.run_id}"
        assert o == finals[o.run_id], "the hook's outcome must equal what wait returned"
        assert o.finished_at is not None and o.submitted_at <= o.finished_at, \
            "a terminal outcome must have submitted_at <= finished_at"
    chain = next(o for o in seen if o.run_id == next(iter(ids)))
    assert chain.steps == basic.CHAIN_STEPS and json.loads(chain.result)["n"] == 24, \
        "the outcome must carry the step count and the result"
    hooked = Counter(r.run_id for r in journal_records(state_dir) if type(r) is HookDelivered)
    assert hooked == Counter(list(ids)), "each delivered hook must be journaled once"


@pytest.mark.timeout(20)
def test_a_dead_lettered_run_redriven_through_a_client_runs_its_step_again(
        runtime, state_dir, tmp_path):
    rt = runtime()
    needed = tmp_path / "needed"
    rid = rt.submit(b"", headers={"app": "needs_file", "file": str(needed)})
    assert rt.wait(rid, timeout=10).status is RunStatus.FAILED, "the first series must fail"
    needed.touch()
    client = Client(state_dir)
    client.retry(rid)
    out = wait_for(lambda: (o := client.status(rid)).status is RunStatus.SUCCEEDED and o,
                   what="the redriven run to succeed")
    assert out.result == b"found it", "a redriven dead letter must run its step again"
    assert client.dead() == [], "a redriven run that succeeds is no longer dead-lettered"


@pytest.mark.timeout(20)
def test_runtime_wait_after_retry_waits_for_the_redriven_run(runtime, tmp_path):
    rt = runtime()
    needed = tmp_path / "needed"
    rid = rt.submit(b"", headers={"app": "needs_file", "file": str(needed)})
    assert rt.wait(rid, timeout=10).status is RunStatus.FAILED, "the first series must fail"
    needed.touch()
    rt.retry(rid)
    out = rt.wait(rid, timeout=10)
    assert (out.status, out.result) == (RunStatus.SUCCEEDED, b"found it"), \
        "once retry() returns, wait() must not report the outcome the redrive replaced"


@pytest.mark.timeout(20)
def test_the_runtime_lists_dead_lettered_runs_like_a_client(runtime):
    rt = runtime()
    rid = rt.submit(b"", headers={"app": "permanent"})
    rt.wait(rid, timeout=10)
    assert [r.run_id for r in rt.dead()] == [rid], "Runtime.dead() must list the dead letter"


@pytest.mark.timeout(20)
def test_a_supervisor_starting_on_a_backlog_begins_work_at_once(runtime, state_dir):
    rid = Client(state_dir).submit(b"queued before start")
    rt = runtime()
    started = time.time()  # the pool is up; only the first turn stands before the lease
    out = rt.wait(rid, timeout=10)
    rt.close()
    assert out.status is RunStatus.SUCCEEDED, "the queued run must succeed"
    leased = _records_of(state_dir, rid, Leased)[0].at
    # Idle, the loop wakes only on the inbox watcher's 1 s tick; the backlog must not wait for it.
    assert leased - started < 0.6, \
        f"a run queued before start must be leased by the first turn, took {leased - started:.2f} s"


DRAIN_RESULT_BUG = (
    "bug: pool.read_results() pops results off w.outstanding, then calls recv_bytes() again "
    "because poll() is true at EOF; the EOFError of a worker that exited after its last batch "
    "(as on Stop) discards them, so a drained step's outcome is never journaled"
)


@pytest.mark.timeout(30)
def test_a_step_drained_at_stop_has_its_result_recorded_even_if_its_worker_exits_at_once(
        runtime, state_dir, tmp_path):
    rt = runtime(workers=1, drain_timeout=10.0)
    mark = tmp_path / "running"
    rid = rt.submit(b"", headers={"app": "sleep", "seconds": "0.5", "mark": str(mark)})
    wait_for(mark.exists, what="the step to start")
    rt.supervisor.request_stop()  # drain: the worker is told to stop after this step
    time.sleep(0.1)  # let the supervisor send Stop
    # Hold the GIL past the step's end so the supervisor thread reads the worker's
    # pipe only after the worker has sent its result and exited (result, then EOF):
    # the order a busy supervisor sees, made certain instead of left to chance.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(10.0)
    try:
        end = time.monotonic() + 1.2
        while time.monotonic() < end:
            pass
    finally:
        sys.setswitchinterval(interval)
    rt.close()
    out = Client(state_dir).status(rid)
    assert (out.status, out.result) == (RunStatus.SUCCEEDED, b"woke up"), \
        "a step that finished during the drain must have its outcome journaled"


# ---------------------------------------------------------------------- single writer


@pytest.mark.timeout(20)
def test_a_second_runtime_on_the_same_state_is_refused_with_state_locked(runtime, state_dir):
    rt = runtime()
    second = Runtime(str(state_dir), basic.runner, workers=1)
    with pytest.raises(StateLocked):
        second.start()
    assert rt.state_dir == state_dir and isinstance(second.state_dir, Path), \
        "state_dir must be a Path whether given as str or path"
    out = rt.wait(rt.submit(b"still here"), timeout=10)
    assert out.result == b"still here", "the refused second start must not disturb the first"


# ------------------------------------------------------------- workers that cannot start


def _broken_runner():
    """The runner of ``tests.apps.broken_in_workers``, loadable here but not in a worker."""
    sys.modules["tests.apps"].ALLOW_BROKEN_IN_WORKERS = True
    from tests.apps import broken_in_workers

    return broken_in_workers.runner


@pytest.mark.timeout(30)
def test_a_runner_that_cannot_load_in_workers_stops_an_idle_supervisor_with_a_clear_error(
        runtime):
    rt = runtime(_broken_runner(), workers=1)
    assert rt.supervisor.stopped.wait(15), \
        "workers dying at start-up again and again must stop the supervisor"
    with pytest.raises(JournaledError, match="start-up"):
        rt.submit(b"x")


@pytest.mark.timeout(30)
def test_a_runner_that_cannot_load_in_workers_stops_the_supervisor_even_with_a_run_waiting(
        runtime, state_dir):
    rid = Client(state_dir).submit(b"waiting for a worker that never starts")
    rt = runtime(_broken_runner(), workers=1)
    with pytest.raises(JournaledError, match="start-up"):
        rt.wait(rid, timeout=5)
