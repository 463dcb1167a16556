"""A wait or status over the socket on a run already archived is answered by the supervisor.

A finished run leaves the live state as soon as its archive row commits,
so most waits on a run submitted a moment ago find it archived. The
supervisor answers those from the archive itself; before, it answered
``RunNotFound`` and sent every client to fold the journal, list the inbox
and set up a file watcher for an answer the archive held.
"""

from __future__ import annotations

import pytest

from journaled.client import Client
from journaled.errors import RunNotFound
from journaled.protocol import Status, Wait

from .helpers import wait_for


@pytest.mark.timeout(120)
def test_wait_and_status_on_an_archived_run_are_served_by_the_socket(runtime, state_dir):
    rt = runtime()
    c = Client(state_dir)
    assert c._door() is not None, "the socket must be the door in use"
    rid = c.submit(b"kept in the archive")
    assert c.wait(rid, 60).status.value == "succeeded"
    sup = rt.supervisor
    wait_for(lambda: rid not in sup.state.runs, 60, "the run to be archived")
    served, out = c._door_call(lambda i: Wait(i, rid, 5.0), 30.0, rid)
    assert served, "the supervisor sent the client to its own reads for an archived run"
    assert out.status.value == "succeeded" and out.result == b"kept in the archive"
    served, out = c._door_call(lambda i: Status(i, rid), 30.0, rid)
    assert served and out.status.value == "succeeded"
    # The public calls give the same answer.
    assert c.wait(rid, 10).result == b"kept in the archive"
    assert c.status(rid).status.value == "succeeded"


@pytest.mark.timeout(60)
def test_a_wait_on_an_id_nobody_knows_still_says_run_not_found(runtime, state_dir):
    runtime()
    c = Client(state_dir)
    assert c._door() is not None
    served, _ = c._door_call(lambda i: Wait(i, "nobody-knows-me", 1.0), 10.0, "nobody-knows-me")
    assert not served  # RunNotFound: the client's own reads decide
    with pytest.raises(RunNotFound):
        c.wait("nobody-knows-me", 1.0)
