"""on_terminal hooks run off the loop thread, are retried, and are journaled after they return.

Issue 11 item 11: a raising hook was recorded as delivered and never
retried; a slow hook ran on the loop thread and stopped every fsync and
lease behind it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from journaled.records import HookDelivered
from journaled.runtime import Runtime
from journaled.tools import records


def _delivered(state: Path, run_id: str) -> int:
    return sum(1 for _s, _o, r in records(state) if type(r) is HookDelivered
               and r.run_id == run_id)


def _until(cond: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.timeout(60)
def test_raising_hook_after_durable_outcome_is_retried_and_journaled_once_after_success(
        runtime: Callable[..., Runtime], state_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="journaled.supervisor")
    calls: list[tuple[str, int]] = []  # (run id, HookDelivered records seen at the call)

    def hook(outcome: Any) -> None:
        calls.append((outcome.run_id, _delivered(state_dir, outcome.run_id)))
        if len(calls) <= 2:
            raise ConnectionError("the endpoint is down")

    rt = runtime(on_terminal=hook)
    rid = rt.submit(b"hi")
    assert rt.wait(rid, timeout=20).status == "succeeded"
    _until(lambda: _delivered(state_dir, rid) == 1, 20, "HookDelivered after the third call")
    assert [c[0] for c in calls] == [rid] * 3, "two failures, then a success: three calls"
    assert [c[1] for c in calls] == [0, 0, 0], \
        "HookDelivered must not be journaled before the hook returned"
    time.sleep(0.3)
    assert len(calls) == 3 and _delivered(state_dir, rid) == 1, \
        "a delivered hook is neither called again nor journaled twice"
    failed = [r.getMessage() for r in caplog.records if "hook failed" in r.getMessage()]
    assert len(failed) == 2, failed
    assert all(rid in m and "ConnectionError: the endpoint is down" in m and "\n" not in m
               for m in failed), failed


@pytest.mark.timeout(60)
def test_slow_hook_on_loop_does_not_hold_up_other_runs_completing(
        runtime: Callable[..., Runtime], state_dir: Path) -> None:
    entered, release = threading.Event(), threading.Event()
    returned: list[str] = []

    def hook(outcome: Any) -> None:
        if outcome.run_id == "slow":
            entered.set()
            release.wait(10)  # a slow HTTP call
        returned.append(outcome.run_id)

    rt = runtime(on_terminal=hook)
    rt.submit(b"a", run_id="slow")
    assert entered.wait(20), "the first run's hook must start"
    # While that hook sleeps, another run is submitted, leased, run, synced, reported.
    rid = rt.submit(b"b", run_id="fast")
    assert rt.wait(rid, timeout=8).status == "succeeded", \
        "a run must finish while another run's hook is still running"
    assert returned == [] and _delivered(state_dir, "slow") == 0, \
        "the slow hook is still running, so nothing is recorded as delivered"
    release.set()
    _until(lambda: _delivered(state_dir, "slow") == 1 and _delivered(state_dir, "fast") == 1,
           20, "both hooks delivered")
    assert returned == ["slow", "fast"]


@pytest.mark.timeout(30)
def test_hook_backoff_doubles_up_to_its_cap() -> None:
    from journaled.hooks import backoff

    assert [backoff(n, 0.5, 4.0) for n in (1, 2, 3, 4, 5, 9)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
