"""A SIGINT/SIGTERM to ``journaled run`` says what the drain does, and how it ended.

Issue 11 item 15 (CLI part, REVIEW S2-11): Ctrl-C printed nothing, so a
drain looked like a hang or a crash. Real ``journaled run`` subprocesses,
real signals; the lines are asserted as a user sees them (and as JSON with
--log-format json).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from journaled.client import Client
from tests.e2e.helpers import ROOT, cli_env, wait_for

APP = "tests.apps.basic:runner"


def _start(state: Path, err: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(err, "wb") as f:
        return subprocess.Popen([sys.executable, "-m", "journaled.cli", "run", APP, "--state",
                                 str(state), "-w", "2", *args], cwd=ROOT, env=cli_env(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f)


def _submit(state: Path, tmp: Path, n: int, **headers: str) -> list[Path]:
    client = Client(state)
    marks = [tmp / f"mark{i}" for i in range(n)]
    for i, mark in enumerate(marks):
        client.submit(str(i).encode(), headers={**headers, "mark": str(mark)}, run_id=f"r{i}")
    return marks


def _stop(proc: subprocess.Popen[bytes]) -> int:
    try:
        return proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("journaled run did not stop")


@pytest.mark.timeout(120)
def test_sigint_during_two_running_steps_says_draining_and_both_finished(tmp_path: Path) -> None:
    state, err = tmp_path / "s", tmp_path / "err"
    marks = _submit(state, tmp_path, 2, app="sleep", seconds="2")
    proc = _start(state, err, "--drain-timeout", "30")
    wait_for(lambda: all(m.exists() for m in marks), 60, "both steps running")
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: "draining" in err.read_text(), 20, "the draining line")
    text = err.read_text()
    assert "SIGINT: draining 2 steps (up to 30 s); Ctrl-C again to stop now" in text, text
    assert _stop(proc) == 0, err.read_text()
    text = err.read_text()
    assert "stopped: 2 steps finished, 0 interrupted" in text, text
    assert text.index("draining") < text.index("stopped: 2 steps"), text
    assert "Traceback" not in text


@pytest.mark.timeout(120)
def test_sigterm_with_step_past_drain_timeout_reports_it_interrupted_in_json(
        tmp_path: Path) -> None:
    state, err = tmp_path / "s", tmp_path / "err"
    marks = _submit(state, tmp_path, 1, app="ignore_token")
    proc = _start(state, err, "--drain-timeout", "0.5", "--cancel-grace", "0.5",
                  "--log-format", "json")
    wait_for(lambda: marks[0].exists(), 60, "the step running")
    proc.send_signal(signal.SIGTERM)
    assert _stop(proc) == 0, err.read_text()
    docs = [json.loads(ln) for ln in err.read_text().splitlines() if ln.startswith("{")]
    msgs = [d["msg"] for d in docs]
    assert "SIGTERM: draining 1 step (up to 0.5 s); SIGTERM again to stop now" in msgs, msgs
    assert any(m.startswith("stopped: 0 steps finished, 1 interrupted") for m in msgs), msgs
    assert all(d["logger"] and d["level"] for d in docs)


@pytest.mark.timeout(120)
def test_second_sigint_during_drain_says_stopping_now_and_counts_the_cut(tmp_path: Path) -> None:
    state, err = tmp_path / "s", tmp_path / "err"
    marks = _submit(state, tmp_path, 1, app="ignore_token")
    proc = _start(state, err, "--drain-timeout", "30")
    wait_for(lambda: marks[0].exists(), 60, "the step running")
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: "draining" in err.read_text(), 20, "the draining line")
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert _stop(proc) == 0, err.read_text()
    text = err.read_text()
    assert "SIGINT again: stopping now" in text, text
    assert "stopped: 0 steps finished, 1 interrupted (they run again at the next start)" \
        in text, text
    assert Client(state).status("r0").status.value in ("pending", "running"), \
        "an interrupted step is not a failure: the run is still live"
