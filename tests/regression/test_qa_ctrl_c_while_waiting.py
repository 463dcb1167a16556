"""Ctrl-C stops ``journaled wait`` and ``journaled log -f`` (and ``Client.wait``).

QA: the file-change wait (watchfiles' ``RustNotify.watch``) checks for
signals itself and, on SIGINT, returns the string ``"signal"`` instead of
raising; ``DirWatcher.wait`` read that as "no change" and the caller went
back to waiting. So ``journaled wait RUN_ID`` on a run that never ends, and
``journaled log -f``, ignored Ctrl-C for ever (only ``kill -9`` stopped them).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from journaled.client import Client
from tests.e2e.helpers import ROOT, cli_env


def _wait_armed(pid: int, timeout: float = 60.0) -> None:
    """Until the process holds an inotify fd (its directory watch is armed: it is waiting).

    A fixed sleep was too short on a loaded machine (imports alone can take
    seconds), and a SIGINT during the imports proves nothing about the wait.
    """
    fds = Path(f"/proc/{pid}/fd")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if any(os.readlink(fd) == "anon_inode:inotify" for fd in fds.iterdir()):
                time.sleep(0.3)  # from arming the watch to blocking in it
                return
        except OSError:  # an fd closed while we looked, or the process is gone
            pass
        time.sleep(0.02)
    pytest.fail(f"pid {pid} never armed its directory watch in {timeout:.0f} s")


def _interrupt(args: list[str]) -> tuple[int | None, str]:
    proc = subprocess.Popen([sys.executable, "-m", "journaled.cli", *args], cwd=ROOT,
                            env=cli_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_armed(proc.pid)
    proc.send_signal(signal.SIGINT)
    try:
        _out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        return None, err
    return proc.returncode, err


@pytest.mark.timeout(90)
def test_ctrl_c_stops_cli_wait_on_a_run_still_in_the_inbox(tmp_path: Path) -> None:
    state = tmp_path / "s"
    rid = Client(state).submit(b"1", run_id="never-runs")
    code, err = _interrupt(["wait", rid, "--state", str(state)])
    assert code is not None, "journaled wait ignored SIGINT"
    # 130 as a shell says it: 1 would read as "the run failed", 3 as a timeout.
    assert code == 130 and "Traceback" not in err, (code, err)
    assert "interrupted; the run goes on" in err, err


@pytest.mark.timeout(90)
def test_ctrl_c_stops_cli_log_follow(tmp_path: Path) -> None:
    state = tmp_path / "s"
    Client(state).submit(b"1", run_id="r")
    done = subprocess.run([sys.executable, "-m", "journaled.cli", "run", "tests.apps.basic:runner",
                           "--state", str(state), "-w", "1", "--until-idle"], cwd=ROOT,
                          env=cli_env(), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    code, err = _interrupt(["log", "-f", "--state", str(state)])
    assert code is not None, "journaled log -f ignored SIGINT"
    assert "Traceback" not in err, err


@pytest.mark.timeout(90)
def test_ctrl_c_raises_keyboard_interrupt_from_client_wait(tmp_path: Path) -> None:
    state = tmp_path / "s"
    Client(state).submit(b"1", run_id="never-runs")
    code = ("import sys\nfrom journaled.client import Client\n"
            f"try:\n    Client({str(state)!r}).wait('never-runs')\n"
            "except KeyboardInterrupt:\n    sys.exit(42)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=cli_env(),
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_armed(proc.pid)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("Client.wait ignored SIGINT")
    assert proc.returncode == 42, proc.stderr.read() if proc.stderr else ""
