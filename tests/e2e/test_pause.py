"""Pause / resume dispatch end to end: nothing new is leased while paused, a running step
finishes, paused runs keep their place, and the pause survives restarts and compaction."""

from __future__ import annotations

import json
import time

import pytest

from journaled.client import Client
from journaled.records import DispatchPaused, Leased, StepDone
from journaled.watch import collect, render
from tests.apps import sched_apps

from .helpers import journal_records, state_cli, wait_for


def _leases(state) -> list[tuple[str, int]]:
    return [(r.run_id, r.step) for r in journal_records(state) if type(r) is Leased]


@pytest.mark.timeout(40)
def test_pause_all_holds_new_steps_lets_the_running_one_finish_and_keeps_the_order(
        runtime, state_dir, tmp_path):
    rt = runtime(sched_apps.runner, workers=1)
    mark = tmp_path / "running"
    rt.submit(b"", {"steps": "2", "sleep": "0.8", "mark": str(mark)}, "busy")
    wait_for(mark.exists, 10, "step 0 of the busy run to start")
    rt.pause()
    assert rt.paused() == {"all": True, "keys": []}
    for i in range(3):
        rt.submit(b"", {"steps": "1"}, f"queued-{i}")
    wait_for(lambda: any(type(r) is StepDone and r.run_id == "busy"
                         for r in journal_records(state_dir)), 10,
             "the running step to finish while paused")
    time.sleep(0.5)
    assert _leases(state_dir) == [("busy", 0)], "no new step may be leased while paused"
    assert rt.status("queued-0").status.value == "pending"
    rt.supervisor.compact()
    rt.close()

    rt = runtime(sched_apps.runner, workers=1)  # a restart on the compacted journal
    time.sleep(0.7)
    assert rt.paused()["all"], "the pause must survive compaction and a restart"
    assert _leases(state_dir) == [], "still paused after the restart (the journal was compacted)"
    rt.resume()
    for rid in ("busy", "queued-0", "queued-1", "queued-2"):
        assert rt.wait(rid, timeout=15).status.value == "succeeded"
    assert _leases(state_dir) == [("busy", 1), ("queued-0", 0), ("queued-1", 0),
                                  ("queued-2", 0)], \
        "paused runs keep their place in line: the started run first, then by submission"


@pytest.mark.timeout(40)
def test_pause_and_resume_from_the_cli_show_in_status_runs_and_watch(runtime, state_dir):
    cli = state_cli(state_dir, 30)

    rt = runtime(sched_apps.runner, workers=1)
    assert cli("pause").returncode == 2, "pause needs --key or --all"
    assert cli("pause", "--all").returncode == 0
    wait_for(lambda: rt.paused()["all"], 10, "the inbox pause to be journaled")
    rid = rt.submit(b"", {"steps": "1"}, "held")
    status = json.loads(cli("status", rid, "--json").stdout)
    assert (status["status"], status["paused"]) == ("pending", True)
    assert "(paused)" in cli("status", rid).stdout.decode()
    runs = cli("runs")
    assert b"paused" in runs.stdout and b"dispatch paused for all runs" in runs.stderr
    assert "PAUSED" in render(collect(state_dir)), "watch shows the pause"
    # a key pause leaves runs of other keys (and runs without one) alone
    assert cli("pause", "--key", "k-other").returncode == 0
    assert cli("resume", "--all").returncode == 0
    assert rt.wait(rid, timeout=15).status.value == "succeeded"
    assert Client(state_dir).paused() == {"all": False, "keys": []}, \
        "resume --all resumes every key too"
    kinds = [(r.key, r.paused, r.all) for r in journal_records(state_dir)
             if type(r) is DispatchPaused]
    assert kinds == [("", True, True), ("k-other", True, False), ("", False, True)]


@pytest.mark.timeout(30)
def test_client_operator_calls_go_over_the_socket_and_return_once_journaled(runtime, state_dir):
    runtime(sched_apps.runner)
    client = Client(state_dir)
    client.pause("k9")
    assert client.paused() == {"all": False, "keys": ["k9"]}, \
        "answered over the socket only once the pause is durable in the journal"
    client.schedule_add("sock", "0 0 1 1 *", b"")
    assert [s.name for s in client.schedules()] == ["sock"]
    assert not [n for n in (state_dir / "inbox").iterdir() if n.is_file()], \
        "nothing went through the inbox"
    with pytest.raises(ValueError, match="reached step 0 only"):
        client.fork(client.submit(b"", {"steps": "1", "sleep": "5"}, "slow"), 3)
