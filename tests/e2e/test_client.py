"""End to end through ``Client``: the file-based view of a state directory.

A client works with or without a supervisor: submissions wait in the inbox
(``pending``) until one starts, ``wait`` follows the journal from any thread
or process, and a malformed inbox file never costs a valid submission.
Every test runs on both doors (``client_door``): the supervisor's socket
and the inbox (``use_socket=False``), with the same answers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from journaled import RunOutcome, RunStatus
from journaled.client import Client
from journaled.errors import InvalidRunId, RunConflict, RunNotFound, RunNotTerminal
from journaled.records import Submitted

from .helpers import ROOT, assert_door, cli_env, client_door, journal_records, wait_for

pytestmark = pytest.mark.usefixtures("client_door")
assert client_door  # the fixture, used by every test here

# ------------------------------------------------------------- without a supervisor


@pytest.mark.timeout(20)
def test_a_run_submitted_while_no_supervisor_runs_is_pending_then_picked_up_at_start(
        runtime, state_dir):
    client = Client(state_dir)
    rid = client.submit(b"early bird", run_id="early")
    pending = client.status(rid)
    assert pending.status is RunStatus.PENDING, "a run still in the inbox must be pending"
    assert pending.result is None and pending.finished_at is None, "a live run has no result"
    assert [o.run_id for o in client.runs("pending")] == [rid], "runs() must list inbox runs"
    with pytest.raises(RunNotTerminal):
        client.result(rid)

    runtime()
    out = client.wait(rid, timeout=10)
    assert (out.status, out.result) == (RunStatus.SUCCEEDED, b"early bird"), \
        "a supervisor starting on the directory must pick up the waiting submission"
    assert client.result(rid) == b"early bird", "result() must return the result bytes"


@pytest.mark.timeout(20)
def test_submitted_at_of_an_inbox_submission_stays_the_clients_submit_time(runtime, state_dir):
    client = Client(state_dir)
    rid = client.submit(b"x")
    pending_at = client.status(rid).submitted_at
    time.sleep(0.2)
    runtime()
    out = client.wait(rid, timeout=10)
    assert out.submitted_at == pending_at, \
        "submitted_at must not change when the supervisor takes the run from the inbox"


@pytest.mark.timeout(10)
def test_status_of_an_unknown_run_raises_run_not_found(state_dir):
    with pytest.raises(RunNotFound):
        Client(state_dir).status("never-submitted")


@pytest.mark.timeout(10)
def test_wait_raises_builtin_timeout_error_when_the_run_does_not_finish_in_time(state_dir):
    client = Client(state_dir)
    rid = client.submit(b"nobody will run this")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        client.wait(rid, timeout=0.3)
    assert type(info.value) is TimeoutError, "wait must raise the builtin TimeoutError itself"
    assert time.monotonic() - t0 >= 0.3, "wait must block for the whole timeout first"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("bad", [
    pytest.param("", id="empty"),
    pytest.param("x" * 129, id="129-chars"),
    pytest.param("has space", id="space"),
    pytest.param("a/b", id="slash"),
])
def test_the_client_refuses_a_malformed_run_id_with_invalid_run_id(state_dir, bad):
    client = Client(state_dir)
    with pytest.raises(InvalidRunId):
        client.submit(b"x", run_id=bad)
    assert client.runs() == [], "a refused submission must leave nothing in the inbox"


@pytest.mark.timeout(20)
def test_a_conflicting_resubmit_is_refused_while_the_first_still_waits_in_the_inbox(state_dir):
    client = Client(state_dir)
    client.submit(b"first", run_id="dup")
    with pytest.raises(RunConflict):
        client.submit(b"second", run_id="dup")


# ---------------------------------------------------------------- with a supervisor


@pytest.mark.timeout(20)
def test_a_resubmit_through_the_client_is_idempotent_or_a_conflict(runtime, state_dir,
                                                                   client_door):
    client = Client(state_dir)
    runtime()
    assert_door(client, client_door)
    rid = client.submit(b"once", run_id="client-once")
    client.wait(rid, timeout=10)
    assert client.submit(b"once", run_id="client-once") == rid, "same id and input: same id"
    with pytest.raises(RunConflict):
        client.submit(b"other", run_id="client-once")
    time.sleep(0.2)  # let a wrongly queued duplicate reach the supervisor
    subs = [r for r in journal_records(state_dir) if type(r) is Submitted]
    assert [s.run_id for s in subs] == [rid], "re-submits must not journal a second run"


@pytest.mark.timeout(20)
def test_wait_in_another_thread_returns_when_the_run_finishes(runtime, state_dir, client_door):
    runtime()
    client = Client(state_dir)
    assert_door(client, client_door)
    rid = client.submit(b"", headers={"app": "sleep", "seconds": "0.3"})
    got: list[RunOutcome] = []
    waiter = threading.Thread(target=lambda: got.append(Client(state_dir).wait(rid, 10)))
    waiter.start()
    waiter.join(15)
    assert not waiter.is_alive(), "wait must return once the run is terminal"
    assert [(o.status, o.result) for o in got] == [(RunStatus.SUCCEEDED, b"woke up")], \
        "the waiting thread must get the run's final outcome"


@pytest.mark.timeout(20)
def test_wait_in_another_process_returns_when_the_run_finishes(runtime, state_dir, client_door):
    runtime()
    rid = Client(state_dir).submit(b"", headers={"app": "sleep", "seconds": "0.5"})
    code = ("import sys; from journaled.client import Client; "
            "c = Client(sys.argv[1], use_socket=sys.argv[3] == 'socket'); "
            "assert (c._door() is not None) == (sys.argv[3] == 'socket'); "
            "o = c.wait(sys.argv[2], 10); print(o.status.value, o.result)")
    proc = subprocess.run([sys.executable, "-c", code, str(state_dir), rid, client_door],
                          cwd=ROOT,
                          env=cli_env(), capture_output=True, text=True, timeout=15)
    assert proc.returncode == 0, f"the waiting process must exit cleanly: {proc.stderr}"
    assert proc.stdout.strip() == "succeeded b'woke up'", \
        "a wait in another process must see the outcome the supervisor made durable"


@pytest.mark.timeout(20)
def test_a_client_cancel_reaches_a_delayed_run_through_the_inbox(runtime, state_dir,
                                                                  client_door):
    runtime()
    client = Client(state_dir)
    assert_door(client, client_door)
    rid = client.submit(b"", headers={"app": "long_delay"})
    wait_for(lambda: client.status(rid).status is RunStatus.WAITING, what="the run to wait")
    asked = client.cancel(rid, reason="from another process")
    out = client.wait(rid, timeout=10)
    assert asked.status is RunStatus.WAITING, "the answer to a cancel is the status seen then"
    assert (out.status, out.error) == (RunStatus.CANCELLED, "from another process"), \
        "a cancel posted to the inbox must end the run cancelled with its reason"


def _post_garbage(state_dir: Path, name: str = "zzz.msg") -> None:
    """Put a file that is no inbox message into the inbox, atomically like a real writer."""
    inbox = state_dir / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = inbox / f".{name}.tmp"
    tmp.write_bytes(b"\xc1\x00 this is not a journaled message \xff")
    os.rename(tmp, inbox / name)


def _check_rejected(state_dir: Path, name: str = "zzz.msg") -> None:
    inbox = state_dir / "inbox"
    rejected = inbox / "rejected"
    wait_for(lambda: (rejected / name).exists(), timeout=5, what="the bad file moved aside")
    assert not (inbox / name).exists(), "the bad file must leave the inbox"
    assert (rejected / f"{name}.why").read_text().strip(), \
        "a .why file beside the rejected file must say why it was rejected"


@pytest.mark.timeout(20)
def test_a_garbage_inbox_file_is_rejected_and_a_valid_submission_beside_it_still_runs(
        runtime, state_dir, client_door):
    runtime()
    _post_garbage(state_dir)
    assert_door(Client(state_dir), client_door)
    rid = Client(state_dir).submit(b"valid neighbour")
    out = Client(state_dir).wait(rid, timeout=10)
    assert (out.status, out.result) == (RunStatus.SUCCEEDED, b"valid neighbour"), \
        "a valid submission made with a bad file must still run"
    _check_rejected(state_dir)
    rid2 = Client(state_dir).submit(b"after")
    assert Client(state_dir).wait(rid2, timeout=10).result == b"after", \
        "the supervisor must keep serving after a bad inbox file"


@pytest.mark.timeout(20)
def test_a_garbage_inbox_file_found_at_start_is_rejected_and_the_backlog_still_runs(
        runtime, state_dir):
    client = Client(state_dir)
    first = client.submit(b"before the garbage")
    _post_garbage(state_dir)
    second = client.submit(b"after the garbage")
    runtime()
    for rid, data in ((first, b"before the garbage"), (second, b"after the garbage")):
        out = client.wait(rid, timeout=10)
        assert (out.status, out.result) == (RunStatus.SUCCEEDED, data), \
            "a bad file in the start-up scan must cost no valid submission"
    _check_rejected(state_dir)
