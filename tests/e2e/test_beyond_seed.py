"""Signals, step memo, output replay, attempt history, priority, hooks on every path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from journaled import Client
from journaled.errors import RunNotLive
from journaled.records import Terminated
from journaled.runtime import Runtime
from journaled.tools import records
from tests.apps import seed_plus
from tests.conftest import ROOT

APP = "tests.apps.seed_plus:runner"


def _cli(*args: str, env: dict[str, str] | None = None, **kw: object
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "journaled.cli", *args], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                          capture_output=True, text=True, timeout=120, **kw)


def _supervisor(state: Path, *extra: str, env: dict[str, str] | None = None
                ) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "journaled.cli", "run", APP, "--state", str(state), "-w", "2",
         "--backoff", "0.01", *extra],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stderr=subprocess.DEVNULL)


def _wait_for(cond: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# ------------------------------------------------------------------- signals


@pytest.mark.timeout(60)
def test_signal_wakes_a_parked_run_with_its_data(runtime) -> None:
    rt = runtime(seed_plus.runner)
    rid = rt.submit(b"order-1", headers={"app": "approval"})
    _wait_for(lambda: rt.status(rid).status.value == "waiting", "the run to park")
    rt.signal(rid, "approve", b"ann")
    out = rt.wait(rid, timeout=30)
    assert out.result == b"approved:ann", "the next step must see the signal's data"


@pytest.mark.timeout(60)
def test_signal_sent_before_the_wait_is_buffered_and_delivered(runtime, tmp_path) -> None:
    rt = runtime(seed_plus.runner)
    gate = tmp_path / "gate"  # step 0 parks only after both signals are durable
    rid = rt.submit(b"o", headers={"app": "approval", "gate": str(gate)}, run_id="early")
    rt.signal(rid, "approve", b"first")
    rt.signal(rid, "approve", b"second")
    gate.touch()
    assert rt.wait(rid, timeout=30).result == b"approved:second", \
        "a buffered signal is kept durably, the last one per key wins"


@pytest.mark.timeout(60)
def test_wait_times_out_and_a_later_signal_is_refused(runtime) -> None:
    rt = runtime(seed_plus.runner)
    rid = rt.submit(b"o", headers={"app": "approval", "timeout": "0.3"})
    out = rt.wait(rid, timeout=30)
    assert out.result == b"timed out", "step.signal.timed_out must be set after the timeout"
    with pytest.raises(RunNotLive):
        rt.signal(rid, "approve", b"too late")


@pytest.mark.timeout(60)
def test_second_wait_on_the_same_key_fails_the_run(runtime) -> None:
    rt = runtime(seed_plus.runner)
    rid = rt.submit(b"", headers={"app": "wait_twice"})
    _wait_for(lambda: rt.status(rid).status.value == "waiting", "the first wait")
    rt.signal(rid, "k", b"")
    out = rt.wait(rid, timeout=30)
    assert out.status.value == "failed" and "a second time" in (out.error or ""), \
        "a run may wait on a key once; the second wait is a permanent error"


@pytest.mark.timeout(60)
def test_cancel_reaches_a_parked_run(runtime) -> None:
    rt = runtime(seed_plus.runner)
    rid = rt.submit(b"", headers={"app": "approval"})
    _wait_for(lambda: rt.status(rid).status.value == "waiting", "the run to park")
    rt.cancel(rid, "nobody will approve")
    assert rt.wait(rid, timeout=10).status.value == "cancelled"


@pytest.mark.timeout(90)
def test_signal_through_the_cli_to_a_supervisor_in_another_process(state_dir: Path) -> None:
    sup = _supervisor(state_dir)
    try:
        rid = _cli("submit", "x", "-H", "app=approval", "--state", str(state_dir)).stdout.strip()
        client = Client(state_dir)
        _wait_for(lambda: client.status(rid).status.value == "waiting", "the run to park")
        done = _cli("signal", rid, "approve", "yes", "--state", str(state_dir))
        assert done.returncode == 0, done.stderr
        assert client.wait(rid, timeout=30).result == b"approved:yes"
        again = _cli("signal", rid, "approve", "no", "--state", str(state_dir))
        assert again.returncode == 2 and "already succeeded" in again.stderr, \
            "a signal to a finished run is a one-line error, exit 2"
        unknown = _cli("signal", "nope", "approve", "--state", str(state_dir))
        assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    finally:
        sup.terminate()
        sup.wait(30)


# ---------------------------------------------------------------------- memo


@pytest.mark.timeout(60)
def test_memo_survives_a_worker_death(runtime, tmp_path: Path) -> None:
    rt = runtime(seed_plus.runner)
    calls = tmp_path / "calls"
    rid = rt.submit(b"", headers={"app": "memo", "calls": str(calls), "die": "1"})
    out = rt.wait(rid, timeout=30)
    assert out.result == f"charged-{rid}".encode()
    assert calls.read_text().splitlines() == [f"{rid} 1"], \
        "the memoized sub-task must run once although the step ran twice"
    assert [a.outcome for a in rt.history(rid)] == ["worker_died", "completed"]


@pytest.mark.timeout(120)
def test_memo_survives_a_supervisor_kill(state_dir: Path, tmp_path: Path) -> None:
    calls, hold = tmp_path / "calls", tmp_path / "holding"
    client = Client(state_dir)
    rid = client.submit(b"", headers={"app": "memo", "calls": str(calls), "hold": str(hold)})
    sup = _supervisor(state_dir)
    _wait_for(hold.exists, "the step to hold after its memo put")
    sup.send_signal(signal.SIGKILL)
    sup.wait()
    done = _cli("run", APP, "--state", str(state_dir), "-w", "1", "--until-idle")
    assert done.returncode == 0, done.stderr
    assert client.status(rid).result == f"charged-{rid}".encode()
    assert calls.read_text().splitlines() == [f"{rid} 1"], \
        "a memo put before a supervisor kill -9 must be seen by the next attempt"
    outcomes = [a.outcome for a in client.history(rid)]
    assert outcomes == ["abandoned", "completed"], \
        f"history must show the interrupted attempt as abandoned: {outcomes}"


# --------------------------------------------------------- output replay


@pytest.mark.timeout(120)
def test_journaled_outcome_is_not_run_again_after_a_crash_before_dispatch(
        state_dir: Path, tmp_path: Path) -> None:
    """Crash after step 0's outcome is durable, before step 1 is sent: step 0 never reruns."""
    log = tmp_path / "log"
    client = Client(state_dir)
    rid = client.submit(b"", headers={"app": "counted", "log": str(log)})
    # Dispatch 1 sends step 0; dispatch 2 would send step 1 after StepDone(0) is durable.
    crashed = _cli("run", APP, "--state", str(state_dir), "-w", "1",
                   env={"JOURNALED_FAILPOINTS": "supervisor.before_dispatch=crash@2",
                        "JOURNALED_SIMULATE_POWER_LOSS": "1"})
    assert crashed.returncode == -signal.SIGKILL, "the failpoint must kill the supervisor"
    done = _cli("run", APP, "--state", str(state_dir), "-w", "1", "--until-idle")
    assert done.returncode == 0, done.stderr
    lines = log.read_text().splitlines()
    # Step 1's lease was durable when the supervisor died, so its first real
    # delivery is attempt 2 (abandoned leases still count deliveries).
    assert lines == [f"{rid} 0 1", f"{rid} 1 2"], \
        f"a step whose outcome was journaled must not run again: {lines}"
    assert client.status(rid).result == b"done"


# ---------------------------------------------------- history and priority


@pytest.mark.timeout(120)
def test_history_after_restarts_shows_abandoned_attempts(state_dir: Path, tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    client = Client(state_dir)
    rid = client.submit(b"", headers={"app": "hang", "mark": str(mark)})
    for _ in range(3):
        sup = _supervisor(state_dir)
        _wait_for(mark.exists, "the step to start")
        mark.unlink()
        sup.send_signal(signal.SIGKILL)
        sup.wait()
    hist = client.history(rid)
    # The journal learns of a crash when the next supervisor starts, so the
    # last attempt is still "running" as far as it knows.
    assert [(a.attempt, a.outcome) for a in hist] == [
        (1, "abandoned"), (2, "abandoned"), (3, "running")], \
        "each supervisor crash shows as an abandoned attempt, attempts still counting up"
    assert all(a.finished_at and a.finished_at >= a.started_at for a in hist[:2])
    status = _cli("status", rid, "--state", str(state_dir), "--json")
    import json

    assert len(json.loads(status.stdout)["history"]) == 3


@pytest.mark.timeout(60)
def test_higher_priority_runs_first_and_fifo_within_a_priority(state_dir: Path,
                                                               tmp_path: Path) -> None:
    log = tmp_path / "order"
    client = Client(state_dir)
    hdr = {"app": "order", "log": str(log)}
    client.submit_many([b"low-1", b"low-2"], hdr, ["l1", "l2"], priority=0)
    client.submit_many([b"high-1", b"high-2"], hdr, ["h1", "h2"], priority=5)
    client.submit(b"mid", hdr, "m1", priority=2)
    done = _cli("run", APP, "--state", str(state_dir), "-w", "1", "--until-idle")
    assert done.returncode == 0, done.stderr
    assert log.read_text().split() == ["high-1", "high-2", "mid", "low-1", "low-2"], \
        "higher priority first, FIFO within a priority"


@pytest.mark.timeout(120)
def test_hook_fires_for_a_run_dead_lettered_by_recovery(state_dir: Path, tmp_path: Path
                                                        ) -> None:
    """max_abandons exceeded at start-up dead-letters the step and still fires the hook."""
    mark = tmp_path / "mark"
    client = Client(state_dir)
    rid = client.submit(b"", headers={"app": "hang", "mark": str(mark)})
    for _ in range(2):
        sup = _supervisor(state_dir, "--max-abandons", "1")
        _wait_for(mark.exists, "the step to start")
        mark.unlink()
        sup.send_signal(signal.SIGKILL)
        sup.wait()
    seen: list[str] = []
    rt = Runtime(state_dir, seed_plus.runner, workers=1, max_abandons=1,
                 on_terminal=lambda o: seen.append(f"{o.run_id} {o.status.value}"))
    with rt:
        out = rt.wait(rid, timeout=30)
    assert out.status.value == "failed" and "abandoned" in (out.error or "")
    assert seen == [f"{rid} failed"], "the terminal hook must fire for a recovery dead letter"
    ends = [r for _s, _o, r in records(state_dir) if type(r) is Terminated and r.run_id == rid]
    assert len(ends) == 1, "the run must end exactly once"


@pytest.mark.timeout(90)
def test_until_idle_exits_while_a_run_waits_for_a_signal_and_the_next_start_finishes_it(
        state_dir: Path) -> None:
    client = Client(state_dir)
    rid = client.submit(b"x", headers={"app": "approval"})
    first = _cli("run", APP, "--state", str(state_dir), "-w", "1", "--until-idle")
    assert first.returncode == 0, first.stderr
    assert client.status(rid).status.value == "waiting", \
        "a run parked on a signal with no timeout must not keep --until-idle running"
    client.signal(rid, "approve", b"later")
    second = _cli("run", APP, "--state", str(state_dir), "-w", "1", "--until-idle")
    assert second.returncode == 0, second.stderr
    assert client.status(rid).result == b"approved:later"
