"""Waits answered from the supervisor's memory of recent ends never outlive retention.

A run leaves the live state for the archive right after its end is durable,
so the socket answers waits and statuses for recently finished runs from a
bounded memory of their ends (``door._door_recent``) instead of an SQLite
lookup on the loop. That memory must agree with the archive: the same
outcome while the run is archived, and nothing once retention deleted it.
"""

from __future__ import annotations

import pytest

from journaled import RunStatus
from journaled.client import Client
from journaled.errors import RunNotFound
from tests.apps import state_apps
from tests.e2e.helpers import assert_door, wait_for


@pytest.mark.timeout(60)
def test_a_socket_wait_after_the_run_left_the_live_state_gets_its_end_until_retention(
        runtime, state_dir):
    rt = runtime(state_apps.runner, workers=1, retention=1.0)
    sup = rt.supervisor
    c = Client(state_dir)
    assert_door(c, "socket")
    rid = c.submit(b"kept", headers={"app": "echo"})
    assert c.wait(rid, timeout=30).result == b"kept"
    wait_for(lambda: rid not in sup.state.runs, 30, "the run to leave the live state")
    assert rid in sup._door_recent, "a recent end is kept for the waits that follow"
    out = c.wait(rid, timeout=10)
    assert (out.status, out.result) == (RunStatus.SUCCEEDED, b"kept"), \
        "a wait on a run gone to the archive must get its durable end over the socket"

    sup.retention_check = 0.2  # instead of every few minutes
    sup.wake()
    wait_for(lambda: sup._archiver is not None and sup._archiver.deleted >= 1, 30,
             "the retention timer to delete the archived run")
    assert rid in sup._door_recent, "still in memory: only the retention check may hide it"
    with pytest.raises(RunNotFound):
        c.status(rid)  # over the socket: the memory must not outlive the archive
    with pytest.raises(RunNotFound):
        c.wait(rid, timeout=5)
