"""The supervisor's socket and the inbox are one door with two ways in.

Every ``Client`` operation runs over both (``door`` parameter): over the
socket of a running supervisor, and over the inbox (``use_socket=False``
with the same supervisor up, or no supervisor at all): same answers, same
exceptions, same messages. Then what the socket itself must survive:
another uid, garbage, oversized frames, a client that never reads, a
thousand connections, sixteen client processes against ``journaled run``.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from journaled import RunStatus
from journaled.client import Client
from journaled.connection import DoorConnection
from journaled.errors import (
    InvalidRunId,
    RunConflict,
    RunNotDead,
    RunNotFound,
    RunNotLive,
)
from journaled.inbox import SubmitMsg
from journaled.protocol import (
    MAX_FRAME,
    VERSION,
    Err,
    Hello,
    Submit,
    Wait,
    Welcome,
    frame,
    frame_size,
    reply_decoder,
)
from journaled.records import Submitted
from journaled.server import raise_nofile
from tests.apps import door_apps

from .helpers import ROOT, cli_env, journal_records, wait_for

DOORS = ["socket", "inbox"]


@pytest.fixture
def sup(runtime):
    """A running supervisor on ``state_dir`` serving its socket."""
    return runtime(door_apps.runner)


def client_for(state_dir: Path, door: str) -> Client:
    c = Client(state_dir, use_socket=(door == "socket"))
    assert (c._door() is not None) == (door == "socket"), \
        f"the {door} door must be the one in use"
    return c


def submitted(state_dir: Path) -> list[str]:
    return [r.run_id for r in journal_records(state_dir) if type(r) is Submitted]


# ------------------------------------------------------- every op, both doors


@pytest.mark.timeout(60)
@pytest.mark.parametrize("door", DOORS)
def test_submit_and_wait_give_the_same_outcome_on_both_doors(sup, state_dir, door):
    c = client_for(state_dir, door)
    rid = c.submit(b"hello", run_id=f"one-{door}")
    if door == "socket":
        assert rid in submitted(state_dir), \
            "a socket submit must return only once its Submitted record is in the journal"
    out = c.wait(rid, timeout=20)
    assert (out.run_id, out.status, out.result) == (rid, RunStatus.SUCCEEDED, b"hello")
    assert c.status(rid) == out, "status must agree with wait"
    assert Client(state_dir, use_socket=False).status(rid) == out, "both doors read the same"
    with pytest.raises(RunNotFound):
        c.status("no-such-run")
    assert c.submit(b"hello", run_id=rid) == rid, "the same id and input again is a no-op"
    with pytest.raises(RunConflict) as info:
        c.submit(b"other", run_id=rid)
    assert str(info.value) == str(RunConflict(rid)), "the conflict must read the same"
    assert submitted(state_dir).count(rid) == 1, "a re-submit must not journal a second run"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("door", DOORS)
def test_submit_many_starts_every_run_and_refuses_a_batch_with_a_conflict(sup, state_dir,
                                                                           door):
    c = client_for(state_dir, door)
    ids = c.submit_many([b"a", b"b", b"c"], run_ids=[f"m{i}-{door}" for i in range(3)])
    assert [c.wait(r, timeout=20).result for r in ids] == [b"a", b"b", b"c"]
    with pytest.raises(RunConflict):
        c.submit_many([b"new", b"clash"], run_ids=[f"fresh-{door}", ids[0]])
    with pytest.raises(RunNotFound):
        c.status(f"fresh-{door}")  # all or nothing: the good item was not started either
    fresh = c.submit_many([b"x"] * 5)
    assert len(set(fresh)) == 5 and all(c.wait(r, timeout=20).result == b"x" for r in fresh)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("door", DOORS)
def test_cancel_answers_the_status_it_found_and_the_run_ends_cancelled(sup, state_dir, door):
    c = client_for(state_dir, door)
    rid = c.submit(b"", {"app": "sleep", "seconds": "30"}, run_id=f"sleepy-{door}")
    was = c.cancel(rid, "enough")
    assert not was.status.terminal, "a live run's cancel must answer its live status"
    out = c.wait(rid, timeout=20)
    assert (out.status, out.error) == (RunStatus.CANCELLED, "enough")
    late = c.cancel(rid)
    assert late.status is RunStatus.CANCELLED, "a cancel that came too late says so"
    with pytest.raises(RunNotFound) as info:
        c.cancel("no-such-run")
    assert str(info.value) == str(RunNotFound("no-such-run"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("door", DOORS)
def test_signal_wakes_a_parked_run_and_is_refused_for_ended_or_unknown_runs(sup, state_dir,
                                                                             door):
    c = client_for(state_dir, door)
    rid = c.submit(b"", {"app": "park"}, run_id=f"parked-{door}")
    c.signal(rid, "go", b"yes")
    out = c.wait(rid, timeout=20)
    assert out.result == b"got:yes", "the signal's data must reach the parked run"
    with pytest.raises(RunNotLive) as info:
        c.signal(rid, "go")
    assert str(info.value) == str(RunNotLive(rid, "succeeded"))
    with pytest.raises(RunNotFound):
        c.signal("no-such-run", "go")
    with pytest.raises(ValueError):
        c.signal(rid, "")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("door", DOORS)
def test_retry_redrives_a_dead_letter_and_refuses_a_run_without_one(sup, state_dir, door,
                                                                     tmp_path):
    c = client_for(state_dir, door)
    flag = tmp_path / f"flag-{door}"
    rid = c.submit(b"", {"app": "needs_file", "file": str(flag)}, run_id=f"dead-{door}")
    assert c.wait(rid, timeout=20).status is RunStatus.FAILED
    flag.touch()
    c.retry(rid)
    out = wait_for(lambda: (o := c.status(rid)).status is RunStatus.SUCCEEDED and o,
                   20, "the redriven run to succeed")
    assert out.result == b"found it"
    with pytest.raises(RunNotDead) as info:
        c.retry(rid)
    assert str(info.value) == str(RunNotDead(rid, "succeeded"))
    with pytest.raises(RunNotFound):
        c.retry("no-such-run")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("door", DOORS)
def test_wait_times_out_with_the_builtin_timeout_error_and_unknown_runs_are_not_found(
        sup, state_dir, door):
    c = client_for(state_dir, door)
    rid = c.submit(b"", {"app": "sleep", "seconds": "30"}, run_id=f"slow-{door}")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        c.wait(rid, timeout=0.5)
    assert type(info.value) is TimeoutError
    assert time.monotonic() - t0 >= 0.45, "wait must block for its whole timeout"
    assert str(info.value).startswith(f"run {rid!r} is still ") and \
        str(info.value).endswith("after 0.5 s")
    with pytest.raises(RunNotFound):
        c.wait("no-such-run", timeout=1)
    with pytest.raises(InvalidRunId):
        c.submit(b"", run_id="bad id")
    c.cancel(rid)


@pytest.mark.timeout(60)
def test_with_the_supervisor_down_the_client_uses_the_inbox_and_a_stale_socket_is_ignored(
        runtime, state_dir):
    state_dir.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(state_dir / "supervisor.sock"))  # as a supervisor killed -9 leaves it
    stale.close()
    c = Client(state_dir)
    assert c._door() is None, "nothing listens on a stale socket: the inbox serves"
    rid = c.submit(b"queued", run_id="while-down")
    assert c.status(rid).status is RunStatus.PENDING
    runtime(door_apps.runner)
    sock = state_dir / "supervisor.sock"
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600, "the socket must be 0600"
    assert c.wait(rid, timeout=20).result == b"queued"
    assert c._door() is not None, "once the supervisor listens the socket serves"
    rid2 = c.submit(b"now", run_id="while-up")
    assert rid2 in submitted(state_dir)


@pytest.mark.timeout(60)
def test_the_socket_is_removed_when_the_supervisor_stops(runtime, state_dir):
    rt = runtime(door_apps.runner)
    assert (state_dir / "supervisor.sock").exists()
    rt.close()
    assert not (state_dir / "supervisor.sock").exists(), "a clean stop unlinks the socket"
    assert Client(state_dir)._door() is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("door", DOORS)
def test_the_cli_gives_the_same_output_and_exit_codes_on_both_doors(sup, state_dir, door,
                                                                    tmp_path):
    if door == "inbox":
        sup.close()  # the CLI's Client uses the socket whenever one listens
    env = cli_env()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "journaled.cli", *args, "--state",
                               str(state_dir)], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=60)

    ok = cli("submit", "data", "--run-id", "cli-run")
    assert (ok.returncode, ok.stdout) == (0, "cli-run\n"), ok.stderr
    again = cli("submit", "data", "--run-id", "cli-run")
    assert (again.returncode, again.stdout) == (0, "cli-run\n"), again.stderr
    clash = cli("submit", "other", "--run-id", "cli-run")
    assert clash.returncode == 2
    assert clash.stderr == f"journaled: error: {RunConflict('cli-run')}\n"
    gone = cli("cancel", "nope")
    assert gone.returncode == 2 and "no run 'nope'" in gone.stderr
    if door == "socket":
        assert "cli-run" in submitted(state_dir), "journaled submit must use the socket"


# ------------------------------------------------------------ the socket itself


def raw_connect(state_dir: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(state_dir / "supervisor.sock"))
    return s


def read_reply(s: socket.socket):
    buf = b""
    while len(buf) < 4:
        chunk = s.recv(4 - len(buf))
        if not chunk:
            return None
        buf += chunk
    size = frame_size(buf)
    body = b""
    while len(body) < size:
        chunk = s.recv(size - len(body))
        if not chunk:
            return None
        body += chunk
    return reply_decoder.decode(body)


def hello(s: socket.socket) -> None:
    s.sendall(frame(Hello(VERSION)))
    assert type(read_reply(s)) is Welcome


def still_serves(state_dir: Path, tag: str) -> None:
    c = Client(state_dir)
    assert c._door() is not None, "the socket must still accept clients"
    assert c.wait(c.submit(tag.encode()), timeout=20).result == tag.encode()


@pytest.mark.timeout(60)
def test_garbage_wrong_types_and_oversized_frames_get_an_error_and_others_carry_on(
        sup, state_dir, caplog):
    caplog.set_level("INFO", logger="journaled.server")
    s = raw_connect(state_dir)
    hello(s)
    body = b"\xc1\xff garbage \x00"
    s.sendall(len(body).to_bytes(4, "big") + body)
    got = read_reply(s)
    assert type(got) is Err and got.kind == "ProtocolError" and "not a journaled request" in \
        got.message
    # Right framing, wrong types: the stream is still in step, so the connection stays.
    import msgspec
    wrong = msgspec.msgpack.encode(["submit", 7, "not a list"])
    s.sendall(len(wrong).to_bytes(4, "big") + wrong)
    got = read_reply(s)
    assert type(got) is Err and got.id == 7 and got.kind == "ProtocolError"
    s.sendall(frame(Submit(8, [SubmitMsg("after-garbage", b"ok", time.time())])))
    got = read_reply(s)
    assert got is not None and got.id == 8 and type(got) is not Err, \
        "a good request after a bad one must be served on the same connection"
    # A bad item by content (not by type) is refused as the inbox refuses it.
    s.sendall(frame(Submit(9, [SubmitMsg("bad id!", b"", time.time())])))
    got = read_reply(s)
    assert type(got) is Err and got.kind == "InvalidRunId"
    # An oversized frame: an error, then the connection closes.
    s.sendall((MAX_FRAME + 1).to_bytes(4, "big") + b"x" * 100)
    got = read_reply(s)
    assert type(got) is Err and "over the" in got.message
    assert read_reply(s) is None, "the connection must close after an oversized frame"
    # No hello first, and a version we do not speak: an error and a close.
    for first in (frame(Wait(1, "x")), frame(Hello(VERSION + 99))):
        t = raw_connect(state_dir)
        t.sendall(first)
        got = read_reply(t)
        assert type(got) is Err and got.kind == "ProtocolError"
        assert read_reply(t) is None
        t.close()
    # Dropped mid-frame and mid-request.
    t = raw_connect(state_dir)
    hello(t)
    whole = frame(Submit(1, [SubmitMsg("half-sent", b"", time.time())]))
    t.sendall(whole[:len(whole) // 2])
    t.close()
    wait_for(lambda: "in the middle of a request" in caplog.text, 10,
             "a log line for the connection dropped mid-request")
    assert "over the 16,777,216-byte limit" in caplog.text, "an oversized frame is logged"
    still_serves(state_dir, "after all that")
    assert "half-sent" not in submitted(state_dir), "half a frame is no request"
    assert "after-garbage" in submitted(state_dir)


@pytest.mark.timeout(120)
def test_a_client_that_never_reads_its_answers_is_dropped_and_others_are_served(runtime,
                                                                                state_dir):
    # Results kept inline (a blob threshold above 1 MiB), so each answer is big.
    runtime(door_apps.runner, blob_threshold=4 << 20)
    c = Client(state_dir, blob_threshold=4 << 20)
    big = c.submit(os.urandom(1 << 20), run_id="big-result")
    c.wait(big, timeout=20)
    s = raw_connect(state_dir)
    hello(s)
    s.setblocking(False)
    # Each answer carries the 1 MiB result: 48 of them pass the server's bound.
    payload = b"".join(frame(Wait(i, big)) for i in range(1, 49))
    s.sendall(payload)
    still_serves(state_dir, "while one client is stuck")
    s.setblocking(True)
    s.settimeout(10)
    answers = 0
    while read_reply(s) is not None:
        answers += 1
    assert answers < 48, "the stuck client must have been dropped before all its answers"
    still_serves(state_dir, "after the stuck client")


@pytest.mark.timeout(180)
def test_a_thousand_concurrent_connections_are_served(sup, state_dir):
    raise_nofile(4096)
    conns = [DoorConnection.open(state_dir) for _ in range(1000)]
    assert all(conns), "every connection must be accepted"
    now = time.time()
    for i, conn in enumerate(conns):
        conn.send(Submit(1, [SubmitMsg(f"k{i}", b"", now)]))
    for conn in conns:
        assert conn.answer(1, timeout=60) == 1
    for i, conn in enumerate(conns):
        conn.send(Wait(2, f"k{i}", 60.0))
    for conn in conns:
        assert conn.answer(2, timeout=90).status is RunStatus.SUCCEEDED
        conn.close()
    ids = set(submitted(state_dir))
    assert all(f"k{i}" in ids for i in range(1000))


@pytest.mark.timeout(60)
def test_a_peer_with_another_uid_is_refused(sup, state_dir, request):
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another uid")
    # Open the file modes so only SO_PEERCRED stands between that uid and the socket.
    opened = [(p, stat.S_IMODE(p.stat().st_mode)) for p in state_dir.parents
              if p != Path("/") and p != Path("/tmp")]
    for p, mode in opened:
        os.chmod(p, mode | 0o011)
    request.addfinalizer(lambda: [os.chmod(p, mode) for p, mode in opened])
    os.chmod(state_dir, 0o755)
    os.chmod(state_dir / "supervisor.sock", 0o666)
    before = sup.supervisor._door.refused
    code = (
        "import os, socket, sys\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(10)\n"
        f"s.connect({str(state_dir / 'supervisor.sock')!r})\n"
        "try:\n"
        "    s.sendall(bytes.fromhex(sys.argv[1]))\n"
        "    got = s.recv(100)\n"
        "except (BrokenPipeError, ConnectionResetError):\n"
        "    got = b''\n"
        "print('closed' if got == b'' else 'answered')\n"
    )
    out = subprocess.run([sys.executable, "-c", code, frame(Hello(VERSION)).hex()],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "closed", out.stderr
    assert sup.supervisor._door.refused == before + 1
    still_serves(state_dir, "after the refusal")


# ----------------------------------------------------- many client processes

_WORKER = r"""
import sys, time
from journaled.client import Client
state, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Client(state)
assert c._door() is not None, "the socket must serve"
for i in range(n):
    rid = c.submit(b"x", run_id=f"{tag}-{i}")
    assert c.wait(rid, timeout=60).result == b"x"
print("done")
"""


@pytest.mark.timeout(300)
def test_sixteen_client_processes_submitting_one_run_at_a_time_all_complete(state_dir,
                                                                            tmp_path):
    env = cli_env()
    sup = subprocess.Popen([sys.executable, "-m", "journaled.cli", "run",
                            "tests.apps.door_apps:runner", "--state", str(state_dir), "-w", "2"],
                           cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    try:
        wait_for(lambda: Client(state_dir)._door() is not None, 60, "the socket to listen")
        procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(state_dir), f"p{i}",
                                   "25"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(16)]
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0 and out.strip() == "done", err
        ids = submitted(state_dir)
        assert len(ids) == len(set(ids)) == 16 * 25, "each run journaled exactly once"
    finally:
        sup.send_signal(signal.SIGINT)
        try:
            sup.wait(30)
        except subprocess.TimeoutExpired:
            sup.kill()
            sup.wait()
    assert not (state_dir / "supervisor.sock").exists()


@pytest.mark.timeout(90)
def test_a_client_reconnects_to_a_restarted_supervisor_and_a_lost_wait_goes_on(runtime,
                                                                              state_dir):
    import threading

    rt = runtime(door_apps.runner)
    c = Client(state_dir)
    first = c.submit(b"1", run_id="before-restart")
    old = c._door()
    rt.close()
    rt = runtime(door_apps.runner)
    second = c.submit(b"2", run_id="after-restart")
    assert second in submitted(state_dir), "the restarted supervisor's socket must serve it"
    assert c._door() is not old, "a broken connection must be replaced by a new one"
    assert c.wait(first, timeout=20).result == b"1"
    # A wait whose supervisor goes away under it carries on through the journal.
    parked = c.submit(b"", {"app": "park"}, run_id="parked-over-restart")
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(Client(state_dir).wait(parked, 60)))
    waiter.start()
    time.sleep(0.5)
    rt.close(drain=False)
    time.sleep(0.5)
    assert waiter.is_alive(), "a lost connection must not end the wait"
    runtime(door_apps.runner)
    Client(state_dir).signal(parked, "go", b"again")
    waiter.join(30)
    assert got and got[0].result == b"got:again"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("size", [100, 4 << 10, 64 << 10, 1 << 20, 8 << 20],
                         ids=["100B", "4KB", "64KB", "1MB", "8MB"])
def test_inputs_and_results_of_every_size_cross_the_socket(sup, state_dir, size):
    c = Client(state_dir)
    data = os.urandom(size)
    rid = c.submit(data, run_id=f"size-{size}")
    assert rid in submitted(state_dir), "it must have gone over the socket"
    assert c.wait(rid, timeout=60).result == data


@pytest.mark.timeout(180)
def test_a_batch_too_big_for_one_frame_goes_through_the_inbox_all_of_it(sup, state_dir):
    c = Client(state_dir)
    datas = [os.urandom(7 << 20) for _ in range(3)]  # 21 MiB: over one 16 MiB frame
    ids = c.submit_many(datas, run_ids=["big-0", "big-1", "big-2"])
    assert [c.wait(r, timeout=120).result for r in ids] == datas
    assert sorted(r for r in submitted(state_dir) if r.startswith("big-")) == ids


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wait_over_the_socket_stays_fast_with_200k_finished_runs(runtime, state_dir):
    rt = runtime(door_apps.runner)
    for b in range(20):
        ids = rt.submit_many([b""] * 10_000, run_ids=[f"old-{b}-{i}" for i in range(10_000)])
        rt.wait(ids[-1], timeout=600)
    c = Client(state_dir)
    t0 = time.monotonic()
    for _ in range(50):
        assert c.wait(c.submit(b"n"), timeout=60).result == b"n"
    assert c.wait("old-0-0", timeout=5).status is RunStatus.SUCCEEDED
    per = (time.monotonic() - t0) / 50
    print(f"submit + wait with 200k finished runs: {per * 1e3:.1f} ms")
