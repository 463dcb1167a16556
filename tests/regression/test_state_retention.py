"""Regression test (issue 11, item 4; issue 12): retention is applied on a timer, not by size.

Since issue 12 finished runs leave the journal for the archive; the timer
deletes archive rows past retention.
"""

from __future__ import annotations

import pytest

from journaled import RunStatus
from journaled.errors import RunNotFound
from tests.apps import state_apps
from tests.e2e.helpers import wait_for


@pytest.mark.timeout(60)
def test_retention_drops_expired_runs_on_a_timer_while_the_journal_is_small(runtime):
    rt = runtime(state_apps.runner, workers=1, retention=0.3)
    sup = rt.supervisor
    rid = rt.submit(b"old", headers={"app": "echo"})
    assert rt.wait(rid, timeout=30).status is RunStatus.SUCCEEDED
    assert sup.journal.size_bytes < sup.compact_bytes, "far below the size trigger"
    sup.retention_check = 0.2  # instead of every few minutes
    sup.wake()
    wait_for(lambda: sup._archiver is not None and sup._archiver.deleted >= 1, 30,
             "the retention timer to delete the archived run")

    def gone() -> bool:
        try:
            rt.status(rid)
        except RunNotFound:
            return True
        return False

    wait_for(gone, 30, "the expired run to be dropped")
    live = rt.submit(b"new", headers={"app": "echo"})
    assert rt.wait(live, timeout=30).result == b"new", "and the supervisor keeps serving"
