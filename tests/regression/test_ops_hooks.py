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


@pytest.mark.timeout(60)
def test_a_clean_close_lets_a_running_hook_return_and_journals_it_once(
        runtime: Callable[..., Runtime], state_dir: Path) -> None:
    """A drain is not a crash: the hook running as ``close()`` is called returns and is
    journaled, so the next start does not call it again (it did: the loop exited as soon
    as the workers were gone, leaving the hook owed)."""
    calls: list[str] = []

    def hook(outcome: Any) -> None:
        time.sleep(0.5)  # still running when close() is called
        calls.append(outcome.run_id)

    rt = runtime(on_terminal=hook)
    rid = rt.submit(b"hi")
    assert rt.wait(rid, timeout=20).status == "succeeded"
    rt.close()
    assert calls == [rid] and _delivered(state_dir, rid) == 1, \
        "the hook returned before the stop, and its HookDelivered is durable"
    again = runtime(on_terminal=hook)
    assert again.status(rid).status == "succeeded"
    time.sleep(1.0)  # a hook owed from the first start would be running by now
    assert calls == [rid], "a clean stop must not leave the hook owed to the next start"


@pytest.mark.timeout(60)
def test_a_hung_hook_holds_the_stop_no_longer_than_the_drain_timeout(
        runtime: Callable[..., Runtime], state_dir: Path) -> None:
    gate = threading.Event()
    rt = runtime(on_terminal=lambda _o: gate.wait(30), drain_timeout=0.5)
    rid = rt.submit(b"hi")
    assert rt.wait(rid, timeout=20).status == "succeeded"
    t0 = time.monotonic()
    rt.close()
    took = time.monotonic() - t0
    gate.set()
    assert took < 10, f"a hung hook held the stop {took:.1f} s past a 0.5 s drain timeout"
    assert _delivered(state_dir, rid) == 0, "not delivered: owed to the next start"
