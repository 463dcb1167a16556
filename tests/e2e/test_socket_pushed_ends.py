"""Ends pushed unasked (``Hello.ends``): a ``wait`` after the submits costs no round trip."""

from __future__ import annotations

import time

import pytest

from journaled import RunStatus
from journaled.client import Client
from journaled.connection import DoorConnection, DoorLost
from journaled.errors import InvalidRunId, RunConflict, RunNotFound
from journaled.inbox import SubmitMsg
from journaled.protocol import Outcome, Status, Submit
from tests.apps import door_apps

from .helpers import wait_for


@pytest.fixture
def sup(runtime):
    return runtime(door_apps.runner)


@pytest.mark.timeout(60)
def test_only_a_connection_that_asked_gets_the_ends_of_its_runs_pushed(sup, state_dir):
    asks, silent = DoorConnection.open(state_dir, ends=True), DoorConnection.open(state_dir)
    assert asks is not None and silent is not None
    for conn, rid in ((asks, "pushed"), (silent, "asked")):
        conn.call(lambda i, rid=rid: Submit(i, [SubmitMsg(rid, b"hi", time.time())]))
    other = Client(state_dir)
    for rid in ("pushed", "asked"):
        assert other.wait(rid, 20).status is RunStatus.SUCCEEDED
    time.sleep(0.1)
    assert asks.pushed_end("pushed") is None  # held: sent alone it could wake a client
    for conn in (asks, silent):  # ... for nothing; it rides along with the next answer
        with pytest.raises(RunNotFound):
            conn.call(lambda i: Status(i, "nothing"))
    out = asks.pushed_end("pushed")
    assert out is not None
    assert (out.run_id, out.status, out.result) == ("pushed", RunStatus.SUCCEEDED, b"hi")
    assert silent.pushed_end("asked") is None and not silent._ends


@pytest.mark.timeout(60)
def test_a_retried_run_is_waited_for_again_not_read_from_its_old_pushed_end(sup, state_dir,
                                                                            tmp_path):
    c = Client(state_dir)
    flag = tmp_path / "flag"
    rid = c.submit(b"", {"app": "needs_file", "file": str(flag)}, run_id="dead")
    wait_for(lambda: c.status(rid).status is RunStatus.FAILED, 20, "the run to fail")
    time.sleep(0.2)  # its end is pushed: held, it comes with the retry's answer
    flag.touch()
    c.retry(rid)
    out = c.wait(rid, timeout=20)
    assert (out.status, out.result) == (RunStatus.SUCCEEDED, b"found it")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("read_first", [True, False], ids=["end-read", "end-held"])
def test_another_clients_retry_takes_back_the_end_pushed_to_the_submitter(sup, state_dir,
                                                                          tmp_path, read_first):
    """A's pushed end of a dead run is no longer its end once B's retry is answered: A's
    wait must wait for the new end, whether A had read the push (end-read) or the
    server still held it for A's next answer (end-held)."""
    a, b = Client(state_dir), Client(state_dir)
    flag = tmp_path / "flag"
    rid = a.submit(b"", {"app": "needs_file", "file": str(flag)}, run_id="dead")
    wait_for(lambda: b.status(rid).status is RunStatus.FAILED, 20, "the run to fail")
    time.sleep(0.2)  # its end is pushed to A: held for A's next answer
    if read_first:
        a.submit(b"x")  # that answer carries the push: A holds the dead end now
        assert a._local.conn._ends
    flag.touch()
    b.retry(rid)
    out = a.wait(rid, timeout=20)
    assert (out.status, out.result) == (RunStatus.SUCCEEDED, b"found it")
    a.submit(b"y")  # an answer that would carry a push still held for A
    out = a.wait(rid, timeout=20)
    assert (out.status, out.result) == (RunStatus.SUCCEEDED, b"found it")


@pytest.mark.timeout(60)
def test_a_put_is_refused_as_a_submit_is(sup, state_dir):
    conn = DoorConnection.open(state_dir, ends=True)
    assert conn is not None and conn.lean
    now = time.time()
    with pytest.raises(InvalidRunId):
        conn.submit_plain("bad id!", b"x", now)
    conn.submit_plain("p1", b"x", now)
    conn.submit_plain("p1", b"x", now)  # the same again: a no-op
    with pytest.raises(RunConflict):
        conn.submit_plain("p1", b"y", now)
    out = Client(state_dir).wait("p1", 20)
    assert (out.status, out.result) == (RunStatus.SUCCEEDED, b"x")


@pytest.mark.timeout(60)
def test_a_client_from_before_revoke_is_closed_by_a_redrive_of_a_run_pushed_to_it(
        sup, state_dir, tmp_path):
    old = DoorConnection.open(state_dir, ends=True, lean=False)  # reads no End, no Revoke
    assert old is not None and not old.lean
    flag = tmp_path / "flag"
    old.call(lambda i: Submit(i, [SubmitMsg("dead", b"", time.time(),
                                            {"app": "needs_file", "file": str(flag)})]))
    b = Client(state_dir)
    wait_for(lambda: b.status("dead").status is RunStatus.FAILED, 20, "the run to fail")
    time.sleep(0.2)
    with pytest.raises(RunNotFound):
        old.call(lambda i: Status(i, "nothing"))  # its answer brings the push along
    assert type(old._ends["dead"]) is Outcome
    flag.touch()
    b.retry("dead")
    assert old.pushed_end("dead") is None  # closed before the retry was answered
    with pytest.raises(DoorLost):
        old.call(lambda i: Status(i, "nothing"))
    assert b.wait("dead", 20).status is RunStatus.SUCCEEDED
