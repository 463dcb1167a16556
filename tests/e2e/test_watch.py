"""``journaled watch``: the pure renderer on hand-built snapshots, then the real command
against a live supervisor (``--once``, ``--json``, and the live screen under a pty).

The live tests share one supervisor (``journaled run examples.primes:runner -w 2``)
working on one big prime count, so a step with progress is in flight the whole time,
after a quick run has finished.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from journaled.live import LiveStatus, read_status
from journaled.watch import (
    Collector,
    Snapshot,
    WatchDead,
    WatchRun,
    WatchStep,
    WatchSupervisor,
    progress_text,
    render,
    summary_line,
)

from .helpers import ROOT, cli_env, wait_for

SLOW_RUN = "watched-run-1"


def hand_built() -> Snapshot:
    now = time.time()
    return Snapshot(
        state_dir="/srv/jobs", taken_at=now,
        supervisor=WatchSupervisor(pid=4242, app="app:runner", workers=2, uptime=3725.0,
                                   journal_bytes=3 * 1024 * 1024, steps_done=1234, syncs=99),
        counts={"pending": 3, "running": 2, "waiting": 1, "succeeded": 40, "failed": 2,
                "cancelled": 1},
        in_flight=[
            WatchStep("run-alpha", 2, 1, 0, "running", 12.5, 3, 10, "resizing"),
            WatchStep("run-beta", 0, 2, 1, "running", 0.4, None, None, ""),
            WatchStep("run-gamma", 1, 1, 1, "queued"),
        ],
        steps_per_s=812.0, syncs_per_s=41.5,
        recent=[WatchRun("run-done", "succeeded", now - 5, "42"),
                WatchRun("run-bad", "failed", now - 9, "order failed validation")],
        dead=[WatchDead("run-dead", 1, 3, "error", "ValueError: boom", now - 20)],
    )


@pytest.mark.timeout(10)
def test_render_shows_header_counts_in_flight_rows_and_progress_bar():
    text = render(hand_built(), 120)
    lines = text.splitlines()
    assert lines[0].startswith("journaled watch  /srv/jobs")
    assert "supervisor pid 4242  app:runner  2 workers  up 1h02m  journal 3.0 MB" in text
    assert "812 steps/s" in text and "41.5 syncs/s" in text
    assert ("runs  pending 3  running 2  waiting 1  succeeded 40  failed 2  cancelled 1  "
            "(total 49)") in text
    assert "IN FLIGHT (2 running, 1 queued)" in text
    alpha = next(ln for ln in lines if ln.startswith("run-alpha"))
    assert alpha.split()[:5] == ["run-alpha", "2", "1", "0", "12.5s"]
    assert "[####------------]  30%  3/10  resizing" in alpha
    beta = next(ln for ln in lines if ln.startswith("run-beta"))
    assert beta.split()[:5] == ["run-beta", "0", "2", "1", "0.4s"] and beta.endswith("-")
    gamma = next(ln for ln in lines if ln.startswith("run-gamma"))
    assert "queued" in gamma
    assert any("succeeded  run-done  42" in ln for ln in lines)
    assert any("failed     run-bad  order failed validation" in ln for ln in lines)
    assert "run-dead step 1 (3 attempts, error): ValueError: boom" in text
    # Running steps before queued ones.
    assert text.index("run-alpha") < text.index("run-beta") < text.index("run-gamma")


@pytest.mark.timeout(10)
def test_render_fits_the_width_and_says_when_no_supervisor_runs():
    snap = hand_built()
    for width in (40, 60, 80):
        assert all(len(ln) <= width for ln in render(snap, width).splitlines())
    snap.supervisor = None
    snap.in_flight = []
    snap.steps_per_s = snap.syncs_per_s = None
    text = render(snap, 100)
    assert "no supervisor running" in text and "IN FLIGHT: none" in text
    assert "steps/s" not in text
    assert "\x1b" not in text, "render() returns plain text"
    assert summary_line(snap).endswith("supervisor=none")


@pytest.mark.timeout(10)
def test_progress_text_handles_unknown_totals_and_overshoot():
    assert progress_text(None, None, "") == "-"
    assert progress_text(7, None, "rows") == "7  rows"
    assert progress_text(5, 0, "") == "5"
    assert progress_text(15, 10, "").startswith("[################] 100%  15/10")
    assert progress_text(250_000, 1_000_000, "") == "[####------------]  25%  250.0k/1.0M"


@pytest.mark.timeout(10)
def test_rates_are_deltas_between_refreshes_and_drop_to_zero_when_idle(tmp_path):
    col = Collector(tmp_path / "s")
    now = time.time()

    def live(at: float, steps: int, syncs: int) -> LiveStatus:
        return LiveStatus(1, "a:r", 1, now - 100, at, steps, syncs, 0, 0, {}, [])

    # First look: the average since the supervisor started (1000 steps in 100 s).
    assert col._rates(live(now, 1000, 500), now) == pytest.approx((10.0, 5.0))
    # Two seconds later 400 more steps and 20 more syncs: the windowed rate.
    assert col._rates(live(now + 2, 1400, 520), now + 2) == pytest.approx((200.0, 10.0))
    # The status file stops changing (the supervisor went idle): zero, not a stale rate.
    assert col._rates(live(now + 2, 1400, 520), now + 5) == (0.0, 0.0)


# ------------------------------------------------------------ a live supervisor


@pytest.fixture(scope="module")
def live_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A supervisor with one long prime-counting step in flight (reporting progress)."""
    state = tmp_path_factory.mktemp("watch") / "state"
    env = cli_env()
    cli = [sys.executable, "-m", "journaled.cli"]
    subprocess.run([*cli, "submit", "5", "--run-id", "quick-run", "--priority", "1",
                    "--state", str(state)],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=30)
    subprocess.run([*cli, "submit", "400000000", "--run-id", SLOW_RUN, "--state", str(state)],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=30)
    sup = subprocess.Popen([*cli, "run", "examples.primes:runner", "-w", "2", "--state",
                            str(state), "--drain-timeout", "0.2", "--cancel-grace", "0.2"],
                           cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    try:
        def progressing() -> bool:
            live = read_status(state)
            return live is not None and any(
                s.run_id == SLOW_RUN and s.done for s in live.in_flight)

        wait_for(progressing, timeout=30, what="the slow step to report progress")
        yield state
    finally:
        sup.send_signal(signal.SIGINT)
        try:
            sup.wait(15)
        except subprocess.TimeoutExpired:
            sup.kill()
            sup.wait(5)
        err = sup.stderr.read().decode() if sup.stderr else ""
        assert sup.returncode == 0, f"supervisor exited {sup.returncode}:\n{err}"


def watch_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "journaled.cli", "watch", *args], cwd=ROOT,
                          env=cli_env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(60)
def test_once_shows_the_step_in_flight_with_its_progress(live_state):
    proc = watch_cli("--once", "--state", str(live_state))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "\x1b" not in out, "no escape codes when stdout is not a terminal"
    assert "examples.primes:runner  2 workers  up" in out
    row = next(ln for ln in out.splitlines() if ln.startswith(SLOW_RUN))
    assert row.split()[1:3] == ["0", "1"], row  # step 0, attempt 1
    assert "[" in row and "%" in row and "chunk 1/4" in row, row
    assert "succeeded  quick-run  2" in out, "recent runs list the finished quick run"
    assert "running 1" in out and "succeeded 1" in out


@pytest.mark.timeout(60)
def test_json_prints_one_parseable_snapshot(live_state):
    proc = watch_cli("--json", "--state", str(live_state))
    assert proc.returncode == 0, proc.stderr
    snap = json.loads(proc.stdout)
    assert snap["supervisor"]["app"] == "examples.primes:runner"
    assert snap["counts"]["running"] == 1 and snap["counts"]["succeeded"] == 1
    (step,) = [s for s in snap["in_flight"] if s["run_id"] == SLOW_RUN]
    assert step["state"] == "running" and step["total"] == 400000000 and step["done"] > 0
    assert step["pid"] > 0 and step["elapsed"] > 0
    assert [r["run_id"] for r in snap["recent"]] == ["quick-run"]
    assert snap["steps_per_s"] is not None


def _read_until(fd: int, deadline: float, want: bytes | None = None) -> bytes:
    buf = b""
    while time.monotonic() < deadline:
        if want is not None and want in buf:
            break
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            buf += chunk
    return buf


def _watch_in_pty(state: Path, key: bytes) -> tuple[int, bytes, list, list, list]:
    """Run the live view on a pty for ~1 s, press ``key``; return what it did."""
    pid, master = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal
        try:
            os.chdir(ROOT)
            os.execve(sys.executable, [sys.executable, "-m", "journaled.cli", "watch",
                                       "--state", str(state)], cli_env(COLUMNS="120"))
        finally:
            os._exit(127)
    try:
        before = termios.tcgetattr(master)
        # The first frame (however slow a loaded machine starts Python), then ~1 s more.
        out = _read_until(master, time.monotonic() + 20, want=SLOW_RUN.encode())
        out += _read_until(master, time.monotonic() + 1.0)
        during = termios.tcgetattr(master)
        os.write(master, key)
        deadline = time.monotonic() + 10
        status = None
        while time.monotonic() < deadline:
            out += _read_until(master, time.monotonic() + 0.1)
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"watch did not quit on {key!r}; output:\n{out[-2000:]!r}")
        after = termios.tcgetattr(master)
        return os.waitstatus_to_exitcode(status), out, before, during, after
    finally:
        os.close(master)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key", [b"q", b"\x03"], ids=["q", "ctrl-c"])
def test_live_view_in_a_pty_quits_on_a_key_and_restores_the_terminal(live_state, key):
    code, out, before, during, after = _watch_in_pty(live_state, key)
    text = out.decode("utf-8", "replace")
    assert code == 0, f"exit {code}:\n{text[-2000:]}"
    assert "Traceback" not in text
    assert out.count(b"\x1b[H") >= 3, "about four refreshes a second"
    assert SLOW_RUN.encode() in out and b"chunk 1/4" in out
    lflag = 3
    assert during[lflag] & termios.ICANON == 0, "cbreak while running: keys arrive unbuffered"
    assert during[lflag] & termios.ECHO == 0
    assert after == before, "terminal settings restored on exit"
    tail = out.rstrip(b"\r\n")
    assert tail.endswith(b"\x1b[?25h\x1b[?1049l"), f"cursor shown, screen left: {tail[-40:]!r}"
