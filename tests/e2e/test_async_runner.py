"""Async runners: one event loop per worker; cancel reaches an awaiting task; kills still work.

A runner that awaits (``asyncio.sleep``) is cancelled through its task: it
sees ``asyncio.CancelledError`` and its worker lives on. A runner that
blocks the loop (``time.sleep``) cannot be reached that way: the cancel
grace or ``step_timeout`` kills its worker, as for a sync step.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from journaled import Runtime
from journaled.client import Client
from tests.apps import runner_apps

from .helpers import ROOT, cli_env, pid_alive, wait_for

APPS = "tests.apps.runner_apps"


@pytest.mark.timeout(60)
def test_async_runners_through_journaled_run_reuse_one_loop_per_worker(state_dir):
    s = str(state_dir)
    c = Client(state_dir)
    first = [c.submit(f"in{i}".encode(), runner="async_runner") for i in range(3)]
    obj = c.submit(b"o", runner="async_object")
    done = subprocess.run([sys.executable, "-m", "journaled.cli", "run",
                           f"{APPS}:async_runner", f"{APPS}:async_object", "--state", s, "-w",
                           "1", "--until-idle"], cwd=ROOT, env=cli_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = [json.loads(c.result(r)) for r in first]
    assert [x["payload"] for x in seen] == ["in0+0", "in1+0", "in2+0"]
    assert len({(x["pid"], x["loop"]) for x in seen}) == 1, \
        "one worker must run every async step on the one loop it made"
    assert {x["loops_seen"] for x in seen} == {1}, "the loop is made once and reused"
    assert c.result(obj) == b"object:o", "an object with async def run_step works too"


@pytest.mark.timeout(60)
def test_cancel_cancels_an_awaiting_task_and_the_worker_survives(state_dir, tmp_path):
    mark, seen = tmp_path / "mark", tmp_path / "seen"
    # A long grace: if the task were not cancelled, the kill would come far too late.
    with Runtime(state_dir, runner_apps.async_runner, workers=1, cancel_grace=60) as rt:
        rid = rt.submit(b"", {"app": "await", "mark": str(mark), "seen": str(seen)})
        wait_for(mark.exists, 20, "the async step to start")
        pid = int(mark.read_text())
        rt.cancel(rid)
        out = rt.wait(rid, timeout=30)
        assert out.status.value == "cancelled"
        assert seen.read_text() == "cancelled", "the runner must see asyncio.CancelledError"
        assert pid_alive(pid), "a task that yields is cancelled, not killed with its worker"
        # The same worker (and loop) serves the next run.
        nxt = json.loads(rt.wait(rt.submit(b"n"), timeout=30).result)
        assert nxt["pid"] == pid


@pytest.mark.timeout(60)
def test_cancel_of_a_task_that_blocks_the_loop_kills_the_worker_after_grace(state_dir,
                                                                            tmp_path):
    mark = tmp_path / "mark"
    with Runtime(state_dir, runner_apps.async_runner, workers=1, cancel_grace=0.3) as rt:
        rid = rt.submit(b"", {"app": "block", "mark": str(mark)})
        wait_for(mark.exists, 20, "the blocking step to start")
        pid = int(mark.read_text())
        rt.cancel(rid)
        out = rt.wait(rid, timeout=30)
        assert out.status.value == "cancelled"
        wait_for(lambda: not pid_alive(pid), 20, "the blocked worker to be killed")
        assert json.loads(rt.wait(rt.submit(b"n"), timeout=30).result)["pid"] != pid


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["await", "block"])
def test_step_timeout_kills_an_async_step_whether_or_not_it_yields(state_dir, tmp_path, how):
    mark = tmp_path / "mark"
    with Runtime(state_dir, runner_apps.async_runner, workers=1, max_attempts=1,
                 step_timeout=0.5) as rt:
        t0 = time.monotonic()
        rid = rt.submit(b"", {"app": how, "mark": str(mark)})
        out = rt.wait(rid, timeout=30)
        took = time.monotonic() - t0
        assert out.status.value == "failed", out
        assert "timed out" in (out.error or ""), out.error
        assert took < 29, "the step sleeps 30 s: only the kill can have ended it"
        pid = int(mark.read_text())
        wait_for(lambda: not pid_alive(pid), 20, "the timed-out worker to be gone")


@pytest.mark.timeout(60)
def test_an_async_step_error_is_a_step_error(state_dir):
    with Runtime(state_dir, runner_apps.async_runner, workers=1) as rt:
        out = rt.wait(rt.submit(b"", {"app": "fail"}), timeout=30)
    assert out.status.value == "failed", out
    assert "permanent error): async says no" in (out.error or ""), out.error
