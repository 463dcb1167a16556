"""kill -9 the supervisor across a schedule tick (right before and right after the commit
that holds the tick's submission and cursor), restart it: no tick submitted twice, none
skipped beyond what the catch-up policy says. Journal writes are held in memory until each
sync (power-loss mode), so whatever the kill leaves unsynced is really lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from journaled.client import Client
from journaled.records import Recovered, ScheduleSet, Submitted
from journaled.schedules import next_tick, tick_id
from tests.e2e.helpers import ROOT, cli_env, journal_records, wait_for

APP = "tests.apps.sched_apps:runner"


def _serve(state: Path, log: Path, failpoints: str = "") -> subprocess.Popen[bytes]:
    env = cli_env(JOURNALED_FAILPOINTS=failpoints, JOURNALED_SIMULATE_POWER_LOSS="1")
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "journaled.cli", "run", APP, "-w", "1",
                                 "-v", "--state", str(state)], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the supervisor did not stop on SIGTERM")


def _killed(proc: subprocess.Popen[bytes], log: Path) -> None:
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the failpoint was never reached:\n{log.read_text()[-3000:]}")
    assert code == -signal.SIGKILL, f"the failpoint must kill the supervisor, got {code}"


def _submitted(state: Path, name: str) -> Counter[str]:
    return Counter(r.run_id for r in journal_records(state)
                   if type(r) is Submitted and r.run_id.startswith(name + "@"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("point", ["schedule.before_tick_commit", "schedule.after_tick_commit"])
def test_kill_across_a_tick_neither_repeats_nor_skips_it_under_catch_up_one(
        point, state_dir, tmp_path):
    cron = "* * * * * */4"  # every 4 s: the restart comes before the next tick
    Client(state_dir).schedule_add("cr", cron, b"x", {"steps": "1"}, catch_up="one")
    log = tmp_path / "supervisor.log"
    _killed(_serve(state_dir, log, f"{point}=crash@1"), log)
    [added] = [r for r in journal_records(state_dir) if type(r) is ScheduleSet]
    tick = next_tick(cron, "UTC", added.at)
    rid = tick_id("cr", tick)
    after = _submitted(state_dir, "cr")
    if point == "schedule.after_tick_commit":
        assert after == {rid: 1}, "killed after the commit: the tick is durable"
    else:
        assert after == {}, "killed before the commit: nothing of the tick survives"

    restart = _serve(state_dir, log)
    try:
        client = Client(state_dir)
        wait_for(lambda: any(r.run_id >= rid and r.status.terminal
                             for r in client.runs() if r.run_id.startswith("cr@")), 20,
                 "a tick's run after the restart")
    finally:
        _stop(restart)
    up_at = max(r.at for r in journal_records(state_dir) if type(r) is Recovered)
    got = _submitted(state_dir, "cr")
    assert all(n == 1 for n in got.values()), f"a tick submitted twice: {got}"
    if up_at < tick + 4:
        assert rid in got, f"catch-up one must submit the tick the kill interrupted: {got}"
    else:  # the machine was too slow to restart before the next tick: the latest is owed
        assert tick_id("cr", next_tick(cron, "UTC", up_at - 4)) in got, got
    restart_log = log.read_text().rpartition("supervising")[2]
    if point == "schedule.after_tick_commit":
        assert "already submitted" not in restart_log, \
            "the durable cursor must keep the restart from looking at the tick again"


@pytest.mark.timeout(60)
def test_kill_before_a_tick_commit_then_downtime_catch_up_all_submits_every_tick_once(
        state_dir, tmp_path):
    Client(state_dir).schedule_add("ca", "* * * * * *", b"", {"steps": "1"}, catch_up="all")
    log = tmp_path / "supervisor.log"
    _killed(_serve(state_dir, log, "schedule.before_tick_commit=crash@3"), log)
    time.sleep(1.5)  # downtime: more ticks missed
    restart = _serve(state_dir, log)
    try:
        wait_for(lambda: len(_submitted(state_dir, "ca")) >= 6, 20, "ticks after the restart")
    finally:
        _stop(restart)
    got = _submitted(state_dir, "ca")
    assert all(n == 1 for n in got.values()), f"a tick submitted twice: {got}"
    ticks = sorted(got)
    from datetime import datetime, timezone

    times = [datetime.strptime(t.partition("@")[2], "%Y-%m-%dT%H:%M:%SZ")
             .replace(tzinfo=timezone.utc).timestamp() for t in ticks]
    assert times == [times[0] + k for k in range(len(times))], \
        f"catch-up all: no tick skipped across the kill and the downtime: {ticks}"
