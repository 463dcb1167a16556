"""Regression tests (issue 11, item 8 and 18): who is charged when a worker is killed or dies.

Real worker processes, real kills. Runners are in ``tests.apps.state_apps``.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from journaled import RunStatus
from journaled.records import AttemptFailed, Leased, Terminated
from tests.apps import state_apps
from tests.e2e.helpers import journal_records, pid_alive, wait_for


@pytest.mark.timeout(60)
def test_queued_cancel_deadline_kill_never_charges_the_running_step(runtime, state_dir):
    # One worker holding three steps: A runs long, B (cancelled while queued) is skipped,
    # C runs next. The old supervisor saw B's cancel deadline pass at the head of the
    # queue and killed the worker while C ran, charging C "worker_died".
    rt = runtime(state_apps.runner, workers=1, cancel_grace=0.2)
    pool = rt.supervisor.pool
    pool.depth = lambda w: 3  # a deep batch, as tiny steps would have earned
    a, b, c = rt.submit_many([b"1.5", b"0", b"1.0"], headers={"app": "sleep"},
                             run_ids=["A", "B", "C"])
    wait_for(lambda: len(pool.workers[0].outstanding) == 3, 10, "all three leased to one worker")
    time.sleep(0.1)
    rt.cancel(b, "user")
    assert rt.wait(a, timeout=30).status is RunStatus.SUCCEEDED
    assert rt.wait(b, timeout=30).status is RunStatus.CANCELLED
    out = rt.wait(c, timeout=30)
    rt.close()
    recs = journal_records(state_dir)
    failed = [r for r in recs if isinstance(r, AttemptFailed)]
    assert failed == [], f"nobody's own cancel or timeout killed anything, yet: {failed}"
    assert out.status is RunStatus.SUCCEEDED, f"C was never cancelled, got {out}"
    assert [r.attempt for r in recs if isinstance(r, Leased) and r.run_id == c] == [1], \
        "C ran once: its worker was not killed under it"


@pytest.mark.timeout(60)
def test_step_timeout_error_names_the_limit(runtime, caplog):
    rt = runtime(state_apps.runner, workers=1, step_timeout=0.5, max_attempts=1)
    with caplog.at_level(logging.WARNING, logger="journaled.supervisor"):
        rid = rt.submit(b"30", headers={"app": "sleep"}, run_id="slow")
        out = rt.wait(rid, timeout=30)
    assert out.status is RunStatus.FAILED
    assert "step timed out after 0.5 s (step_timeout=0.5) and its worker was killed" in \
        out.error, out.error
    hist = rt.history(rid)
    assert hist[0].outcome == "timed_out" or "timed out" in hist[0].error
    lines = [r.getMessage() for r in caplog.records if "timed out" in r.getMessage()]
    assert any("slow" in m and "step 0" in m and "attempt 1" in m and "step_timeout=0.5" in m
               for m in lines), f"one log line naming run, step, attempt and limit: {lines}"


@pytest.mark.timeout(60)
def test_worker_killed_by_sigsegv_during_step_is_named_by_its_signal(runtime):
    rt = runtime(state_apps.runner, workers=1, max_attempts=1)
    out = rt.wait(rt.submit(b"", headers={"app": "segfault"}), timeout=30)
    assert out.status is RunStatus.FAILED
    assert "SIGSEGV" in out.error and "-11" not in out.error, out.error


@pytest.mark.timeout(90)
def test_sigkill_of_fresh_workers_at_start_up_does_not_stop_the_supervisor(runtime):
    # An OOM killer (or an operator) taking fresh workers is no verdict on the runner:
    # the old supervisor stopped itself after 5 such start-up deaths in a row.
    rt = runtime(state_apps.runner, workers=1)
    pool = rt.supervisor.pool
    seen: set[int] = set()
    for _ in range(7):
        pid = wait_for(lambda: (p := pool.workers[0].pid) not in seen and p, 30,
                       "a fresh worker")
        seen.add(pid)
        time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda p=pid: not pid_alive(p), 10, "the worker to die")
    assert not rt.supervisor.stopped.is_set(), "the supervisor must keep serving"
    out = rt.wait(rt.submit(b"hi", headers={"app": "echo"}), timeout=60)
    assert out.status is RunStatus.SUCCEEDED and out.result == b"hi"
    recs = journal_records(rt.state_dir)
    assert not [r for r in recs if isinstance(r, Terminated) and r.dead]
