"""Many runners in one state directory: ``journaled run a:x a:y``, ``App``, ``--runner``.

A run names its runner at submit (or gets the default); the worker that
leases it calls that runner; a name nobody serves is refused at submit,
by the client (from ``STATE/serving.json``) and again by the supervisor
when the submission reaches it some other way (inbox file, socket).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import msgspec
import pytest

from journaled import AsyncClient, Runtime
from journaled.archive import ArchivedRun, row_of
from journaled.client import Client
from journaled.errors import RunConflict, SubmissionRejected, UnknownRunner
from journaled.records import Submitted, decode, encode
from journaled.run import run_from_snapshot
from journaled.state import State
from tests.apps import runner_apps

from .helpers import ROOT, cli_env, wait_for

APPS = "tests.apps.runner_apps"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "journaled.cli", *args], cwd=ROOT,
                          env=cli_env(), capture_output=True, text=True, timeout=timeout)


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"a user error must be one line, got:\n{proc.stderr}"
    return lines[0]


@pytest.mark.timeout(120)
def test_journaled_run_serves_each_target_under_its_attribute_name(state_dir):
    s = str(state_dir)
    # No supervisor has run yet (no serving.json): every name is taken to the
    # inbox, and the supervisor is the one to refuse the unknown one.
    ids = {}
    for name, runner in [("img", "images"), ("arr", "arrays"), ("dflt", None),
                         ("ghost", "nobody")]:
        args = ["submit", name, "--run-id", f"r-{name}", "--state", s]
        if runner:
            args += ["--runner", runner]
        proc = cli(*args)
        assert proc.returncode == 0, proc.stderr
        ids[name] = proc.stdout.strip()
    done = cli("run", f"{APPS}:images", f"{APPS}:arrays", "--state", s, "-w", "2",
               "--until-idle")
    assert done.returncode == 0, done.stderr
    assert "runners images, arrays; default images" in done.stderr, done.stderr
    c = Client(state_dir)
    assert c.result("r-img") == b"images:img"
    assert c.result("r-arr") == b"arrays:1:arr+1:arrays", \
        "both steps of the run must be served by the runner it named"
    assert c.result("r-dflt") == b"images:dflt", "no --runner: the first target is the default"
    with pytest.raises(SubmissionRejected, match="unknown runner 'nobody'.*images, arrays"):
        c.status("r-ghost")
    assert json.loads((state_dir / "serving.json").read_text())["runners"] == \
        ["images", "arrays"]
    # Now the client knows what is served: refused at submit, one line, exit 2.
    bad = cli("submit", "x", "--runner", "nobody", "--state", s)
    assert bad.returncode == 2, bad.stderr
    assert "unknown runner 'nobody'" in one_line(bad)
    with pytest.raises(UnknownRunner):
        c.submit(b"x", runner="nobody")
    assert not c._pending(), "a refused submission must not reach the inbox"
    st = cli("status", "r-arr", "--state", s)
    assert "runner:    arrays" in st.stdout, st.stdout
    js = json.loads(cli("status", "r-arr", "--json", "--state", s).stdout)
    assert js["runner"] == "arrays"
    # 'journaled step' re-runs a step with the runner the run named.
    again = cli("step", "r-arr", "1", "--state", s)
    assert again.returncode == 0, again.stderr
    assert "arrays:1:arr+1:arrays" in again.stdout, again.stdout


@pytest.mark.timeout(120)
def test_an_app_serves_its_runners_and_default_wins_as_the_default(state_dir):
    s = str(state_dir)
    for rid, runner in [("t", "thumbs"), ("d", None), ("p", "pics")]:
        args = ["submit", rid, "--run-id", rid, "--state", s]
        cli(*args, *(["--runner", runner] if runner else []))
    done = cli("run", f"{APPS}:app", f"pics={APPS}:images", "--state", s, "-w", "1",
               "--until-idle")
    assert done.returncode == 0, done.stderr
    c = Client(state_dir)
    assert c.result("t") == b"thumbs:t"
    assert c.result("d") == b"default:d", "the runner named 'default' takes unnamed runs"
    assert c.result("p") == b"images:p", "NAME=module:attr serves it under NAME"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("targets, says", [
    ([f"{APPS}:empty_app"], "no runners"),
    ([f"{APPS}:images", f"images={APPS}:arrays"], "'images' is given twice"),
    ([f"{APPS}:nothing_here"], "has no attribute"),
])
def test_a_bad_set_of_runners_is_one_line_and_exit_2(state_dir, targets, says):
    proc = cli("run", *targets, "--state", str(state_dir), "--until-idle")
    assert proc.returncode == 2, proc.stderr
    assert says in one_line(proc)


@pytest.mark.timeout(120)
def test_runtime_with_a_dict_and_the_socket_door_refuses_what_it_does_not_serve(state_dir):
    with Runtime(state_dir, runner_apps.multi, workers=1) as rt:
        assert rt.wait(rt.submit(b"abc", runner="bytes"), timeout=30).result == b"cba"
        with pytest.raises(UnknownRunner, match="serves typed, bytes, pipeline"):
            rt.submit(b"x", runner="nope")
        # A client that cannot see serving.json still hears it from the supervisor
        # (over the socket, before anything is journaled).
        (state_dir / "serving.json").unlink()
        c = Client(state_dir)
        with pytest.raises(UnknownRunner, match="unknown runner 'nope'"):
            c.submit(b"x", runner="nope", run_id="via-door")
        with pytest.raises(ValueError, match="invalid runner name"):
            c.submit(b"x", runner="no spaces")
        rid = c.submit(b"xyz", runner="bytes")
        assert c.wait(rid, timeout=30).result == b"zyx"
        assert rt._sup.state.runs[rid].runner == "bytes"

        async def from_asyncio() -> bytes:
            async with AsyncClient(state_dir) as ac:
                with pytest.raises(UnknownRunner):
                    await ac.submit(b"x", runner="nope")
                got = await ac.wait(await ac.submit(b"async", runner="bytes"), timeout=30)
                return got.result or b""

        assert asyncio.run(from_asyncio()) == b"cnysa"


@pytest.mark.timeout(120)
def test_the_same_run_id_for_another_runner_is_a_conflict_on_every_path(state_dir):
    """A re-submit is a no-op only when input, headers AND runner match (else RunConflict)."""
    with Runtime(state_dir, runner_apps.multi, workers=1) as rt:
        rt.submit(b"abc", runner="bytes", run_id="same")
        assert rt.submit(b"abc", runner="bytes", run_id="same") == "same", "a retry is a no-op"
        with pytest.raises(RunConflict):
            rt.submit(b"abc", runner="pipeline", run_id="same")
        with pytest.raises(RunConflict):
            rt.submit(b"abc", run_id="same")  # the default runner is another runner
        with pytest.raises(RunConflict):  # in a batch: all or nothing
            rt.submit_many([b"q", b"abc"], run_ids=["b1", "same"], runner="pipeline")
        assert "b1" not in rt.supervisor.state.runs
        for door in (True, False):  # the socket, then the inbox (the client checks first)
            c = Client(state_dir, use_socket=door)
            assert c.submit(b"abc", runner="bytes", run_id="same") == "same"
            with pytest.raises(RunConflict):
                c.submit(b"abc", runner="pipeline", run_id="same")
        assert rt.wait("same", timeout=30).result == b"cba"
        assert rt.supervisor.state.runs["same"].runner == "bytes"
        # Finished and archived: the runner still counts (read from the archive row).
        wait_for(lambda: "same" not in rt.supervisor.state.runs, 30, "the run to be archived")
        assert rt.submit(b"abc", runner="bytes", run_id="same") == "same", "still a no-op"
        with pytest.raises(RunConflict):
            rt.submit(b"abc", runner="pipeline", run_id="same")
        with pytest.raises(RunConflict):
            rt.submit(b"abc", run_id="same")
        for door in (True, False):
            c = Client(state_dir, use_socket=door)
            assert c.submit(b"abc", runner="bytes", run_id="same") == "same"
            with pytest.raises(RunConflict):
                c.submit(b"abc", runner="pipeline", run_id="same")
        assert "same" not in rt.supervisor.state.runs, "never taken up again"


@pytest.mark.timeout(120)
def test_runtime_takes_an_app_and_a_pending_run_keeps_its_runner_across_restart(state_dir):
    Client(state_dir).submit(b"queued", runner="thumbs", run_id="q")  # no supervisor yet
    with Runtime(state_dir, runner_apps.app, workers=1) as rt:
        assert rt.wait("q", timeout=30).result == b"thumbs:queued"
        assert rt.wait(rt.submit(b"n"), timeout=30).result == b"default:n"


@pytest.mark.timeout(30)
def test_the_runner_name_survives_snapshot_archive_and_old_segments():
    st = State()
    st.submit("r1", b"in", 1.0, runner="arrays")
    (snap,) = st.snapshot(2.0)
    again = State()
    again.apply(decode(encode(snap)))
    assert again.runs["r1"].runner == "arrays", "compaction must keep the runner"
    row = row_of(again.runs["r1"])
    archived = ArchivedRun(**dict(zip(ArchivedRun.__struct_fields__, row, strict=True)))
    assert archived.run().runner == "arrays", "the archive must keep the runner"
    assert run_from_snapshot(snap.runs[0]).runner == "arrays"
    # A segment written before the field existed: 8 fields, decodes as the default.
    old = msgspec.msgpack.encode(["sub", "r2", b"x", 1.0, {}, 0, 0, 0.0])
    rec = decode(old)
    assert isinstance(rec, Submitted) and rec.runner == ""


RELOAD_APP = '''
import journaled
from journaled import Succeed

app = journaled.App()

@app.runner("a")
def a(step):
    return Succeed(b"a-VERSION:" + step.payload)

@app.runner("b")
def b(step):
    return Succeed(b"b-VERSION:" + step.payload)
'''


@pytest.mark.timeout(120)
def test_reload_restarts_workers_with_every_named_runner_new(tmp_path):
    mod, state, err = tmp_path / "named_reload_app.py", tmp_path / "s", tmp_path / "err"
    mod.write_text(RELOAD_APP.replace("VERSION", "1"))
    with open(err, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "journaled.cli", "run",
                                 "named_reload_app:app", "--reload", "-w", "1", "--state",
                                 str(state)], cwd=tmp_path,
                                env=cli_env(PYTHONPATH=f"{ROOT}:{tmp_path}"),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f,
                                start_new_session=True)
    try:
        c = Client(state)
        wait_for(lambda: (state / "serving.json").exists(), 60, "the supervisor to start")
        assert c.wait(c.submit(b"x", runner="b"), timeout=60).result == b"b-1:x"
        # Saved again each second until the watcher (started after the workers,
        # so maybe not watching yet) says it saw a change.
        deadline = time.monotonic() + 60
        n = 0
        while "code changed" not in err.read_text():
            assert time.monotonic() < deadline, "the reload was never noticed"
            n += 1
            mod.write_text(RELOAD_APP.replace("VERSION", "2") + f"# save {n}\n")
            time.sleep(1.0)

        def served_new() -> bool:
            return c.wait(c.submit(b"y", runner="b"), timeout=60).result == b"b-2:y"

        wait_for(served_new, 60, "runner b's new code")
        assert c.wait(c.submit(b"z", runner="a"), timeout=60).result == b"a-2:z"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, err.read_text()[-2000:]
