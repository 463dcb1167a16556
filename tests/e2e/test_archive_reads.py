"""Every read answers the same for a run in live state and for the same run archived.

A blocking ``on_terminal`` hook holds finished runs in the journal (a run is
archived only once its hook is delivered), so the test reads each terminal
kind live first, then releases the hook, waits for the archive to hold the
runs and the journal to drop them, and reads again: through ``Runtime``,
through a ``Client`` in another process, and through the CLI. Then the
history-wide idempotency: re-submitting an archived id with its input is a
no-op, with other input ``RunConflict`` (or, for an inbox file that slipped
past the client's check, a rejection), and ``retry`` brings an archived
dead letter back.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from journaled.api import RunStatus
from journaled.archive import Archive
from journaled.client import Client
from journaled.errors import RunConflict, RunNotLive
from journaled.inbox import SubmitMsg, post, rejection
from tests.apps import basic
from tests.e2e.helpers import ROOT, cli_env, client_door, wait_for

# Every test with a Client in this process on both doors: the supervisor's socket and
# the inbox. The door only changes this process's Clients, so the tests that read
# through Runtime, a Client process and the CLI alone run once.
BOTH_DOORS = pytest.mark.usefixtures("client_door")
assert client_door  # the fixture, used by the tests marked BOTH_DOORS

# (run id, input, headers): one of each terminal kind.
KINDS = [
    ("ok", b"7", {"app": "chain"}),  # four steps, one transient failure on the way
    ("verdict", b"no", {"app": "fail"}),
    ("dead", b"x", {"app": "permanent"}),
    ("exhausted", b"x", {"app": "always_transient"}),
    ("cancel-verdict", b"x", {"app": "cancel_verdict"}),
    ("flaky", b"x", {"app": "flaky"}),
]

CLIENT_VIEW = r"""
import json, sys, msgspec
from journaled.client import Client
c = Client(sys.argv[1])
ids = sys.argv[2:]
enc = lambda o: json.loads(msgspec.json.encode(o))
print(json.dumps({
    "status": {r: enc(c.status(r)) for r in ids},
    "history": {r: enc(c.history(r)) for r in ids},
    "runs": enc(c.runs(limit=None)),
    "failed": enc(c.runs("failed", limit=2)),
    "dead": enc(c.dead(limit=None)),
}))
"""


def _enc(o: Any) -> Any:
    return json.loads(msgspec.json.encode(o))


def views(rt: Any, ids: list[str]) -> dict[str, Any]:
    return {"status": {r: _enc(rt.status(r)) for r in ids},
            "history": {r: _enc(rt.history(r)) for r in ids},
            "runs": _enc(rt.runs(limit=None)), "failed": _enc(rt.runs("failed", limit=2)),
            "dead": _enc(rt.dead(limit=None))}


def client_views(state: Path, ids: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", CLIENT_VIEW, str(state), *ids], cwd=ROOT,
                         env=cli_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "journaled.cli", *args, "--state", str(state)],
                          cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=60)


# The CLI's read commands, all in one other process (click's runner calls the same
# ``journaled`` command group): fifteen interpreter start-ups were most of this test.
CLI_VIEW = r"""
import json, sys
from click.testing import CliRunner
from journaled.cli import main
state, ids = sys.argv[1], sys.argv[2:]
runner = CliRunner()

def cli(*args, code=0):
    res = runner.invoke(main, [*args, "--state", state], catch_exceptions=False)
    assert code is None or res.exit_code == code, (args, res.exit_code, res.output)
    return res.stdout_bytes.decode() if code == 0 else [res.exit_code, res.stdout_bytes.decode()]

out = {"status": {}, "result": {}}
for rid in ids:
    data = json.loads(cli("status", rid, "--json"))
    data.pop("supervisor")
    out["status"][rid] = data
    out["result"][rid] = cli("result", rid, code=None)  # exit 1 for a failed run
for args in (("runs", "--json", "--limit", "0"), ("runs", "--status", "failed", "--json"),
             ("dead", "--json")):
    out[" ".join(args)] = json.loads(cli(*args))
print(json.dumps(out))
"""


def cli_views(state: Path, ids: list[str]) -> dict[str, Any]:
    res = subprocess.run([sys.executable, "-c", CLI_VIEW, str(state), *ids], cwd=ROOT,
                         env=cli_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.timeout(240)
def test_every_read_is_the_same_live_and_archived(runtime, state_dir: Path) -> None:
    gate = threading.Event()
    rt = runtime(basic.runner, max_attempts=2,
                 on_terminal=lambda o: gate.wait(120))  # holds them in the journal
    sup = rt.supervisor
    ids = [rid for rid, *_ in KINDS]
    for rid, data, hdrs in KINDS:
        rt.submit(data, hdrs, run_id=rid)
    for rid in ids:
        rt.wait(rid, 60)
    kinds = {rid: rt.status(rid).status for rid in ids}
    assert set(kinds.values()) == {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED}
    assert not Archive(state_dir).exists() or not Archive(state_dir).open_reader().count(), \
        "nothing archived while the hooks are held"
    live = views(rt, ids)
    live_client = client_views(state_dir, ids)
    live_cli = cli_views(state_dir, ids)

    gate.set()
    wait_for(lambda: not any(r in sup.state.runs for r in ids), 60,
             "the runs to leave the journal for the archive")
    assert sum(Archive(state_dir).open_reader().count().values()) == len(ids)
    assert views(rt, ids) == live, "Runtime reads the same from the archive"
    assert client_views(state_dir, ids) == live_client == live, \
        "a Client in another process reads the same, live and archived"
    assert cli_views(state_dir, ids) == live_cli, "so does the CLI"
    assert [o["run_id"] for o in live["failed"]] == \
        [o["run_id"] for o in sorted(live["runs"], key=lambda o: -o["finished_at"])
         if o["status"] == "failed"][:2], "newest first, cut at the limit"
    assert live["history"]["ok"] and any(a["outcome"] == "retried"
                                         for a in live["history"]["ok"])
    assert len(live["dead"]) == 2, "permanent and exhausted are dead letters"


@BOTH_DOORS
@pytest.mark.timeout(240)
def test_resubmitting_an_archived_id_is_idempotent_across_history(runtime,
                                                                  state_dir: Path) -> None:
    rt = runtime(basic.runner)
    sup = rt.supervisor
    rt.submit(b"first", {"app": "echo"}, run_id="once")
    assert rt.wait("once", 30).result == b"first"
    wait_for(lambda: "once" not in sup.state.runs, 30, "the run to be archived")
    finished = rt.status("once")

    assert rt.submit(b"first", {"app": "echo"}, run_id="once") == "once", "same input: no-op"
    with pytest.raises(RunConflict):
        rt.submit(b"other", {"app": "echo"}, run_id="once")
    with pytest.raises(RunConflict):
        rt.submit(b"first", {"app": "echo", "extra": "header"}, run_id="once")
    with pytest.raises(RunConflict):
        rt.submit_many([b"x", b"other"], {"app": "echo"}, ["fresh", "once"])
    client = Client(state_dir)
    assert client.submit(b"first", {"app": "echo"}, run_id="once") == "once"
    with pytest.raises(RunConflict):
        client.submit(b"other", {"app": "echo"}, run_id="once")
    # An inbox file that skipped the client's check (another host's client, say).
    post(state_dir, SubmitMsg("once", b"sneaky", time.time(), {"app": "echo"}))
    wait_for(lambda: rejection(state_dir, "once") is not None, 30,
             "the supervisor to reject the conflicting inbox submission")
    time.sleep(0.3)
    assert rt.status("once") == finished and client.status("once") == finished, \
        "the archived run is untouched, never run twice"
    assert "fresh" not in sup.state.runs, "all or nothing: the batch started no run"
    assert rt.cancel("once").status is RunStatus.SUCCEEDED, "a cancel that lost the race"
    with pytest.raises(RunNotLive):
        rt.signal("once", "k", b"")
    with pytest.raises(RunNotLive):
        client.signal("once", "k", b"")


@BOTH_DOORS
@pytest.mark.timeout(240)
def test_retry_brings_an_archived_dead_letter_back(runtime, state_dir: Path,
                                                   tmp_path: Path) -> None:
    rt = runtime(basic.runner)
    sup = rt.supervisor
    need = tmp_path / "needed"
    for rid in ("via-runtime", "via-client"):
        rt.submit(rid.encode(), {"app": "needs_file", "file": str(need)}, run_id=rid)
        assert rt.wait(rid, 30).status is RunStatus.FAILED
    wait_for(lambda: not ({"via-runtime", "via-client"} & set(sup.state.runs)), 30,
             "the dead letters to be archived")
    assert {d.run_id for d in rt.dead()} == {"via-runtime", "via-client"}
    need.write_text("here now")
    rt.retry("via-runtime")
    Client(state_dir).retry("via-client")
    for rid in ("via-runtime", "via-client"):
        out = rt.wait(rid, 30)
        if out.status is not RunStatus.SUCCEEDED:  # the retry may not be taken yet
            out = wait_for(lambda r=rid: (o := rt.status(r)).status is RunStatus.SUCCEEDED
                           and o, 30, f"{rid} to succeed on redrive")
        assert out.result == b"found it"
    wait_for(lambda: not ({"via-runtime", "via-client"} & set(sup.state.runs)), 30,
             "the redriven runs to be archived again")
    row = Archive(state_dir).open_reader().get("via-runtime")
    assert row is not None and row.status == "succeeded" and not row.dead, \
        "the archive row is replaced by the new outcome"
    assert [a.outcome for a in rt.history("via-runtime")][-1] == "completed"
    assert rt.dead() == []


@pytest.mark.timeout(120)
def test_cli_runs_since_and_limit_and_one_line_errors(runtime, state_dir: Path) -> None:
    rt = runtime(basic.runner)
    for i in range(3):
        rt.submit(f"{i}".encode(), run_id=f"c{i}")
        rt.wait(f"c{i}", 30)
    wait_for(lambda: not rt.supervisor.state.runs, 30, "the runs to be archived")
    newest = json.loads(cli(state_dir, "runs", "--limit", "2", "--json").stdout)
    assert [o["run_id"] for o in newest] == ["c2", "c1"]
    assert len(json.loads(cli(state_dir, "runs", "--since", "1h", "--json").stdout)) == 3
    assert json.loads(cli(state_dir, "runs", "--since", "2999-01-01", "--json").stdout) == []
    assert json.loads(cli(state_dir, "runs", "--status", "running", "--json").stdout) == []
    for args in (("runs", "--since", "yesterday"), ("runs", "--limit", "-1"),
                 ("dead", "--limit", "many")):
        res = cli(state_dir, *args)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
