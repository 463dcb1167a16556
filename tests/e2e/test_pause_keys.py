"""Pausing one run key holds that tenant's runs only, also when runs carry keys and go
through the fair per-key queues (limits' leasing path), and a resume lets them run."""

from __future__ import annotations

import time

import pytest

from journaled.records import Leased
from tests.apps import sched_apps

from .helpers import journal_records


@pytest.mark.timeout(40)
def test_a_paused_key_holds_its_runs_while_other_keys_run(runtime, state_dir):
    rt = runtime(sched_apps.runner, workers=1)
    rt.pause(key="tenant-a")
    for i in range(3):
        rt.submit(b"", {"steps": "1"}, f"a-{i}", key="tenant-a")
        rt.submit(b"", {"steps": "1"}, f"b-{i}", key="tenant-b")
    for i in range(3):
        assert rt.wait(f"b-{i}", timeout=15).status.value == "succeeded"
    time.sleep(0.3)
    leased = {r.run_id for r in journal_records(state_dir) if type(r) is Leased}
    assert leased == {"b-0", "b-1", "b-2"}, f"tenant-a is paused, yet leased: {sorted(leased)}"
    assert rt.status("a-0").status.value == "pending"
    rt.resume(key="tenant-a")
    for i in range(3):
        assert rt.wait(f"a-{i}", timeout=15).status.value == "succeeded"
