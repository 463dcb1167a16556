"""``journaled.testing.Harness``: the real supervisor, turned on the test's thread, fake time.

Delays, retry back-offs and signal timeouts all fire at ``advance`` (an
hour passes in milliseconds); ``crash()`` replays the journal from disk and
the runner sees the retried attempt; the ``journaled_harness`` fixture works
in a separate pytest run. What each step saw is recorded by the runners
themselves (module-level lists: inline steps run in this process).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from journaled import (
    Continue,
    ContinueAfter,
    ContinueOnSignal,
    RunStatus,
    Succeed,
)
from journaled.api import Step
from journaled.records import Leased, Recovered
from journaled.replay import records
from journaled.testing import FakeClock, Harness, HarnessError

ROOT = Path(__file__).resolve().parents[2]
seen: list[tuple[str, int, int]] = []  # (run id, step, attempt) of every call


def delayed(step: Step) -> Any:
    seen.append((step.run_id, step.step_number, step.attempts))
    if step.step_number < 2:
        return ContinueAfter(step.payload + b".", 3600)
    return Succeed(step.payload + b"done")


def flaky(step: Step) -> Any:
    seen.append((step.run_id, step.step_number, step.attempts))
    if step.attempts < 3:
        raise RuntimeError(f"flaky attempt {step.attempts}")
    return Succeed(b"ok after %d" % step.attempts)


def parked(step: Step) -> Any:
    if step.step_number == 0:
        return ContinueOnSignal(b"parked", "approve", timeout=600)
    sig = step.signal
    assert sig is not None
    return Succeed(b"timed out" if sig.timed_out else b"approved: " + sig.data)


def two_steps(step: Step) -> Any:
    seen.append((step.run_id, step.step_number, step.attempts))
    if step.step_number == 0:
        return Continue(step.payload + b"+0")
    return Succeed(step.payload + b"+1")


def forever(step: Step) -> Any:
    return Continue(b"again")


@pytest.fixture(autouse=True)
def _fresh() -> None:
    seen.clear()


def _history(h: Harness, rid: str) -> list[tuple[int, int, str]]:
    return [(a.step, a.attempt, a.outcome) for a in h.history(rid)]


@pytest.mark.timeout(30)
def test_a_delay_fires_only_when_the_clock_reaches_it() -> None:
    with Harness(delayed) as h:
        start = h.clock.now()
        rid = h.submit(b"x")
        assert h.run_until_idle() == 1
        assert h.status(rid).status == RunStatus.WAITING
        assert h.advance(3599) == 0  # one second short: nothing is due
        assert h.status(rid).status == RunStatus.WAITING
        # Due times are visited in order: step 1 (due at +3600) delays again,
        # and step 2 (due at +7200) falls inside the same advance.
        assert h.advance(3601) == 2
        assert h.result(rid) == b"x..done"
        assert [s for _, s, _ in seen] == [0, 1, 2]
        started = [a.started_at - start for a in h.history(rid)]
        assert started == pytest.approx([0, 3600, 7200], abs=1e-6)


@pytest.mark.timeout(30)
def test_retry_backoffs_fire_at_advance_and_the_runner_sees_each_attempt() -> None:
    with Harness(flaky, max_attempts=5, backoff_base=60, backoff_cap=600) as h:
        rid = h.submit(b"")
        h.run_until_idle()
        assert h.status(rid).status == RunStatus.WAITING  # backing off after attempt 1
        assert h.run_until_idle() == 0  # no real time makes the back-off pass
        h.advance(10_000)
        assert h.result(rid) == b"ok after 3"
        assert [a for _, _, a in seen] == [1, 2, 3]
        hist = h.history(rid)
        assert [a.outcome for a in hist] == ["retried", "retried", "completed"]
        # Back-off of the n-th failure: base * 2**(n-1), jittered into [50%, 100%).
        gaps = [b.started_at - a.started_at for a, b in zip(hist, hist[1:], strict=False)]
        assert 30 <= gaps[0] < 60 and 60 <= gaps[1] < 120, gaps


@pytest.mark.timeout(30)
def test_a_signal_wakes_its_run_and_a_missing_one_times_out_at_advance() -> None:
    with Harness(parked) as h:
        sent, silent = h.submit(b"a"), h.submit(b"b")
        h.run_until_idle()
        assert h.status(sent).status == h.status(silent).status == RunStatus.WAITING
        h.signal(sent, "approve", b"yes")
        h.run_until_idle()
        assert h.result(sent) == b"approved: yes"
        h.advance(599)
        assert h.status(silent).status == RunStatus.WAITING
        h.advance(1)
        assert h.result(silent) == b"timed out"
        calls = h.steps(silent)
        assert calls[0].signal is None and calls[1].signal is not None
        assert calls[1].signal.timed_out and calls[1].signal.key == "approve"


@pytest.mark.timeout(30)
def test_a_crash_after_a_step_replays_and_the_runner_sees_the_retried_attempt() -> None:
    with Harness(two_steps) as h:
        rid = h.submit(b"in")
        h.crash_after(lambda call: call.step == 1)
        h.run_until_idle()
        assert h.crashes == 1
        assert h.result(rid) == b"in+0+1"
        # Step 1 ran, its result was lost with the supervisor, and it ran again:
        # as attempt 2, after the replay marked attempt 1 abandoned.
        assert [(s, a) for _, s, a in seen] == [(0, 1), (1, 1), (1, 2)]
        assert _history(h, rid) == [(0, 1, "completed"), (1, 1, "abandoned"),
                                    (1, 2, "completed")]
        assert [c.crashed for c in h.steps(rid)] == [False, True, False]
        recs = [r for _seg, _off, r in records(h.state_dir / "journal")]
        assert sum(type(r) is Recovered for r in recs) == 2  # the first start, the replay
        assert sum(type(r) is Leased and r.step == 1 for r in recs) == 2


@pytest.mark.timeout(30)
def test_a_crash_while_runs_wait_keeps_their_timers_and_signals() -> None:
    clock = FakeClock()
    with Harness(delayed, clock=clock) as h:
        rid = h.submit(b"t")
        h.run_until_idle()
        h.crash()  # replays from disk; the delay is in the journal, not in memory
        assert h.status(rid).status == RunStatus.WAITING
        h.advance(7200)
        assert h.result(rid) == b"t..done"
        assert h.clock is clock
    with Harness(parked) as h:
        rid = h.submit(b"p")
        h.run_until_idle()
        h.signal(rid, "approve", b"after crash")
        h.crash()
        h.run_until_idle()
        assert h.result(rid) == b"approved: after crash"


@pytest.mark.timeout(30)
def test_cancel_and_a_runner_that_never_settles() -> None:
    with Harness(delayed) as h:
        rid = h.submit(b"c")
        h.run_until_idle()
        h.cancel(rid)
        h.run_until_idle()
        assert h.status(rid).status == RunStatus.CANCELLED
    with Harness(forever) as h:
        h.submit(b"")
        with pytest.raises(HarnessError, match="still busy"):
            h.run_until_idle(max_rounds=200)


@pytest.mark.timeout(60)
def test_the_real_worker_pool_runs_under_the_same_harness() -> None:
    from tests.apps.basic import runner

    with Harness(runner, workers=1) as h:
        rid = h.submit(b"pooled", {"app": "echo"})
        h.run_until_idle()
        assert h.result(rid) == b"pooled"
        with pytest.raises(HarnessError, match="inline"):
            h.steps(rid)


@pytest.mark.timeout(120)
def test_the_journaled_harness_fixture_in_a_pytest_run(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(textwrap.dedent("""
        from journaled import ContinueAfter, Succeed

        def runner(step):
            if step.step_number == 0:
                return ContinueAfter(b"later", 86400)
            return Succeed(step.payload.upper())

        def test_a_day_passes(journaled_harness):
            h = journaled_harness(runner)
            rid = h.submit(b"x")
            h.run_until_idle()
            assert h.status(rid).status == "waiting"
            h.advance(86400)
            assert h.result(rid) == b"LATER"
            assert h.state_dir.name == "journaled-state-0"  # under the test's tmp_path

        def test_it_fails_when_it_should(journaled_harness):
            h = journaled_harness(runner)
            rid = h.submit(b"x")
            h.run_until_idle()
            assert h.status(rid).status == "succeeded"
    """))
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "journaled.testing.plugin",
                          "-p", "no:cacheprovider", "test_user.py"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100)
    assert "1 failed, 1 passed" in out.stdout, out.stdout + out.stderr
    assert "test_it_fails_when_it_should" in out.stdout


expensive_calls: list[str] = []


def memoized(step: Step) -> Any:
    seen.append((step.run_id, step.step_number, step.attempts))
    cached = step.memo.get("sub")
    if cached is None:
        expensive_calls.append(step.run_id)
        cached = b"computed"
        step.memo.put("sub", cached)  # returns once durable: the harness turns meanwhile
    return Succeed(cached)


@pytest.mark.timeout(30)
def test_a_memo_put_is_durable_across_a_crash_and_the_hook_sees_the_outcome() -> None:
    expensive_calls.clear()
    hooked: list[tuple[str, str]] = []
    with Harness(memoized, on_terminal=lambda o: hooked.append((o.run_id, o.status.value))
                 ) as h:
        rid = h.submit(b"")
        h.crash_after(lambda call: call.step == 0)  # after the put, before the result
        h.run_until_idle()
        assert h.result(rid) == b"computed"
        assert [a for _, _, a in seen] == [1, 2]
        assert expensive_calls == [rid]  # the retry found the memo the first attempt put
        assert (rid, "succeeded") in hooked


@pytest.mark.timeout(30)
def test_advance_steps_past_the_timer_of_a_cancelled_run() -> None:
    with Harness(delayed) as h:
        gone, kept = h.submit(b"g"), h.submit(b"k")
        h.run_until_idle()
        h.cancel(gone)  # its timer stays in the heap, stale
        h.advance(7200)
        assert h.status(gone).status == RunStatus.CANCELLED
        assert h.result(kept) == b"k..done"


def calls_pytest_fail(step: Step) -> Any:
    pytest.fail("the runner saw something the test forbids")


@pytest.mark.timeout(30)
def test_pytest_fail_inside_an_inline_step_fails_the_test_not_the_step() -> None:
    with Harness(calls_pytest_fail) as h:
        rid = h.submit(b"")
        with pytest.raises(pytest.fail.Exception, match="forbids"):
            h.run_until_idle()
        assert h.history(rid)[0].outcome == "running"  # never reported as a failure
