"""The dashboard's pause and resume buttons act like 'journaled pause/resume': the pause
is journaled, nothing new is leased while it holds, a run's page pauses its key."""

from __future__ import annotations

import time

import pytest

from journaled import Client
from journaled.records import DispatchPaused, Leased

from .helpers import journal_records, wait_for
from .test_ui import get, post, token
from .ui_support import Dashboard, Supervisor


@pytest.mark.timeout(90)
def test_pause_and_resume_buttons_are_journaled_and_hold_dispatch(tmp_path):
    state = tmp_path / "state"
    c = Client(state)
    c.submit(b"warm", run_id="warm")
    sup = Supervisor(state, workers=1)
    ui = Dashboard(state)
    try:
        c.wait("warm", timeout=30)
        _, html = get(ui.url + "/")
        code, loc, _ = post(ui.url + "/pause", {"csrf": token(html), "back": "/"})
        assert code == 303 and "err=1" not in loc, loc
        assert c.paused()["all"] is True
        assert any(type(r) is DispatchPaused and r.all and r.paused
                   for r in journal_records(state)), "the pause must be journaled"
        held = c.submit(b"while paused", run_id="held", key="tenant-a")
        time.sleep(0.8)
        assert c.status(held).status.value == "pending"
        assert not any(type(r) is Leased and r.run_id == held for r in journal_records(state))
        code, loc, _ = post(ui.url + "/resume", {"csrf": token(html), "back": "/"})
        assert code == 303 and "err=1" not in loc, loc
        assert c.wait(held, timeout=30).status.value == "succeeded"
        # A keyed run's page pauses its key only.
        _, page = get(ui.url + "/runs/held")
        assert "pause key tenant-a" in page
        code, loc, _ = post(ui.url + "/pause", {"csrf": token(page), "key": "tenant-a",
                                                "back": "/runs/held"})
        assert code == 303 and "err=1" not in loc, loc
        wait_for(lambda: c.paused() == {"all": False, "keys": ["tenant-a"]}, 10,
                 "the key pause")
    finally:
        ui.close()
        sup.stop()
