"""Schedules end to end: ticks submitted as ``NAME@<tick>`` runs through ``Runtime`` and
``journaled run``, the cursor across restarts and compaction, catch-up after downtime."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from journaled.client import Client
from journaled.records import Recovered, ScheduleCursor, Submitted
from journaled.schedules import tick_id
from tests.apps import sched_apps

from .helpers import ROOT, cli_env, journal_records, state_cli, wait_for

EVERY_SECOND = "* * * * * *"


def _ticks(state: Path, name: str) -> list[str]:
    """Run ids of the schedule's Submitted records, in journal order (duplicates kept)."""
    return [r.run_id for r in journal_records(state)
            if type(r) is Submitted and r.run_id.startswith(name + "@")]


def _tick_time(run_id: str) -> float:
    from datetime import datetime, timezone

    at = run_id.partition("@")[2]
    return datetime.strptime(at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


@pytest.mark.timeout(40)
def test_each_tick_is_a_run_named_by_its_time_and_the_schedule_survives_restart_and_compaction(
        runtime, state_dir):
    rt = runtime(sched_apps.runner)
    rt.schedule_add("beat", EVERY_SECOND, b"in", {"steps": "1"})
    [info] = rt.schedules()
    assert (info.name, info.cron, info.catch_up, info.paused) == ("beat", EVERY_SECOND, "one",
                                                                  False)
    first = wait_for(lambda: [r for r in rt.runs() if r.run_id.startswith("beat@")
                              and r.status.terminal], 10, "a tick's run to finish")[0]
    assert first.result == b"in|0", "a tick's run gets the schedule's input and headers"
    assert tick_id("beat", _tick_time(first.run_id)) == first.run_id
    cursor = rt.schedules()[0].cursor
    assert cursor >= _tick_time(first.run_id)
    assert rt.supervisor.compact()
    rt.close()
    assert not [r for r in journal_records(state_dir) if type(r) is ScheduleCursor], \
        "compacted: the cursor lives in the snapshot now"

    rt = runtime(sched_apps.runner)  # replays the compacted journal: schedule and cursor kept
    [info] = rt.schedules()
    assert info.cursor >= cursor, "the cursor must survive compaction and replay"
    wait_for(lambda: len(_ticks(state_dir, "beat")) >= 3, 10, "ticks after the restart")
    rt.schedule_pause("beat")
    paused_at = time.time()
    assert rt.schedules()[0].paused
    n = len(_ticks(state_dir, "beat"))
    time.sleep(1.5)
    assert len(_ticks(state_dir, "beat")) <= n + 1, "a paused schedule submits no new ticks"
    rt.schedule_remove("beat")
    assert rt.schedules() == []
    ids = _ticks(state_dir, "beat")
    assert len(ids) == len(set(ids)), f"no tick may be submitted twice: {ids}"
    assert all(_tick_time(i) <= paused_at + 1 for i in ids)


@pytest.mark.timeout(40)
def test_catch_up_after_downtime_all_submits_each_one_only_the_latest_none_skips(
        runtime, state_dir):
    rt = runtime(sched_apps.runner)
    for mode in ("all", "one", "none"):
        rt.schedule_add(f"c-{mode}", EVERY_SECOND, b"", {"steps": "1"}, catch_up=mode)
    wait_for(lambda: all(_ticks(state_dir, f"c-{m}") for m in ("all", "one", "none")), 10,
             "a first tick of each schedule")
    rt.close()
    down_at = time.time()
    time.sleep(3.2)  # at least three per-second ticks missed
    rt = runtime(sched_apps.runner)
    wait_for(lambda: all(any(_tick_time(i) > down_at + 3 for i in _ticks(state_dir, f"c-{m}"))
                         for m in ("all", "one", "none")), 10, "ticks after the restart")
    rt.close()
    up_at = max(r.at for r in journal_records(state_dir) if type(r) is Recovered)

    every = sorted(_tick_time(i) for i in _ticks(state_dir, "c-all"))
    assert every == [every[0] + k for k in range(len(every))], \
        f"catch-up all: every tick from the first to the last, once: {every}"
    inside = {m: [t for t in map(_tick_time, _ticks(state_dir, f"c-{m}"))
                  if down_at + 1 < t < up_at - 1.5] for m in ("one", "none")}
    assert inside["one"] == [] and inside["none"] == [], \
        f"only the latest missed tick may run (one), or none: {inside}"
    latest_missed = float(int(up_at))
    one = [_tick_time(i) for i in _ticks(state_dir, "c-one")]
    assert any(latest_missed - 1 <= t <= latest_missed + 1 for t in one), \
        f"catch-up one submits the latest missed tick at restart ({up_at}): {one}"


@pytest.mark.timeout(60)
def test_schedule_cli_through_journaled_run(state_dir, tmp_path):
    cli = state_cli(state_dir, 30)

    bad = cli("schedule", "add", "x", "99 * * * *")
    assert bad.returncode == 2 and b"99 * * * *" in bad.stderr and b"Traceback" not in bad.stderr
    bad_tz = cli("schedule", "add", "x", "* * * * *", "--tz", "Nowhere/Town")
    assert bad_tz.returncode == 2 and b"Nowhere/Town" in bad_tz.stderr
    add = cli("schedule", "add", "cli", EVERY_SECOND, "--input", "hello", "-H", "steps=2",
              "--catch-up", "none")
    assert add.returncode == 0, add.stderr.decode()
    log = tmp_path / "run.log"
    with open(log, "wb") as f:
        sup = subprocess.Popen([sys.executable, "-m", "journaled.cli", "run",
                                "tests.apps.sched_apps:runner", "-w", "1", "-v",
                                "--state", str(state_dir)], cwd=ROOT, env=cli_env(),
                               stdout=f, stderr=subprocess.STDOUT)
    try:
        client = Client(state_dir)
        out = wait_for(lambda: [r for r in client.runs(status="succeeded")
                                if r.run_id.startswith("cli@")], 20, "a tick's run")[0]
        assert out.result == b"hello|0|1"
        listed = json.loads(cli("schedule", "list", "--json").stdout)
        assert [(s["name"], s["catch_up"], s["paused"]) for s in listed] == [
            ("cli", "none", False)]
        assert listed[0]["next_at"] > listed[0]["cursor"]
        assert cli("schedule", "pause", "cli").returncode == 0
        wait_for(lambda: client.schedules()[0].paused, 10, "the pause to be journaled")
        gone = cli("schedule", "remove", "nope")
        assert gone.returncode == 2 and b"nope" in gone.stderr
    finally:
        sup.send_signal(signal.SIGTERM)
        sup.wait(timeout=20)
    text = log.read_text()
    assert "schedule cli: submitted tick as run cli@" in text, "a log line per tick"
    assert "schedule cli paused" in text
