"""``journaled watch`` tells a hung supervisor from a dead one.

Issue 11 item 16: during a hang, watch said "no supervisor running" while
``journaled run`` said the state was locked by pid N. Now the lock holder
and the age of its last status publish decide: running, hung (lock held,
status stale), or none. A real supervisor, real SIGSTOP/SIGCONT/SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from journaled.live import health
from tests.e2e.helpers import ROOT, cli_env, wait_for


def _watch(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "journaled.cli", "watch", "--state", str(state),
                           *args], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                          timeout=60)


def _status(state: Path, rid: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "journaled.cli", "status", rid, "--state",
                           str(state), *args], cwd=ROOT, env=cli_env(), capture_output=True,
                          text=True, timeout=60)


def _health(state: Path) -> dict[str, Any]:
    res = _watch(state, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["health"]


@pytest.mark.timeout(150)
def test_sigstopped_supervisor_is_reported_hung_and_killed_one_not_running(
        tmp_path: Path) -> None:
    state = tmp_path / "s"
    sup = subprocess.Popen([sys.executable, "-m", "journaled.cli", "run", "examples.primes:runner",
                            "--state", str(state), "-w", "1"], cwd=ROOT, env=cli_env(),
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # The waits poll in process (a CLI process per poll would cost more than the
        # test); once the state is reached, 'journaled watch --json' must say the same.
        wait_for(lambda: health(state).state == "running", 60, "a running supervisor")
        got = _health(state)
        assert got["state"] == "running" and got["pid"] == sup.pid, got
        os.kill(sup.pid, signal.SIGSTOP)
        wait_for(lambda: health(state).state == "hung", 40, "the stopped supervisor to be hung")
        got = _health(state)
        assert got["state"] == "hung", f"watch must call the stopped supervisor hung: {got}"
        assert got["pid"] == sup.pid and got["status_age"] > 5, got
        text = _watch(state, "--once").stdout
        assert f"supervisor pid {sup.pid} not responding: last status" in text, text
        assert "(hung?)" in text and "no supervisor running" not in text, text
        # 'journaled status' of a run nobody is moving says why: the supervisor hangs.
        rid = "queued-while-hung"
        sub = subprocess.run([sys.executable, "-m", "journaled.cli", "submit", "7", "--run-id",
                              rid, "--state", str(state)], cwd=ROOT, env=cli_env(),
                             capture_output=True, text=True, timeout=60)
        assert sub.returncode == 0, sub.stderr
        human = _status(state, rid).stdout
        assert f"supervisor: supervisor pid {sup.pid} not responding" in human, human
        st = json.loads(_status(state, rid, "--json").stdout)
        assert st["supervisor"]["state"] == "hung" and st["supervisor"]["pid"] == sup.pid, st
        os.kill(sup.pid, signal.SIGCONT)
        wait_for(lambda: health(state).state == "running", 30, "running again after SIGCONT")
        assert _health(state)["state"] == "running", "watch must see it running again"
        os.kill(sup.pid, signal.SIGKILL)
        sup.wait()
        wait_for(lambda: health(state).state == "none", 30, "not running after kill -9")
        got = _health(state)
        assert got["state"] == "none" and got["pid"] is None, got
        assert "no supervisor running" in _watch(state, "--once").stdout
        st = json.loads(_status(state, rid, "--json").stdout)
        assert st["supervisor"]["state"] == "none", st
    finally:
        try:
            os.killpg(sup.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        sup.wait()


@pytest.mark.timeout(30)
def test_lock_file_naming_live_pid_without_flock_is_no_supervisor(tmp_path: Path) -> None:
    """A pid left in STATE/lock by a dead supervisor, reused by a live process, holds nothing."""
    state = tmp_path / "s"
    state.mkdir()
    (state / "lock").write_text(f"{os.getpid()}\n")
    h = health(state)
    assert h.state == "none" and h.pid is None, h
