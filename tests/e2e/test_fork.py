"""Fork end to end: a new run starts at step N of a live or archived run with the payload
step N got (or a given one), keeps that step's memos, and leaves the old run untouched."""

from __future__ import annotations

import pytest

from journaled.client import Client
from journaled.errors import RunNotFound
from journaled.records import Leased, Submitted
from tests.apps import sched_apps

from .helpers import journal_records, state_cli, wait_for


def _first_lease(state, run_id: str) -> int:
    return next(r.step for r in journal_records(state) if type(r) is Leased and r.run_id == run_id)


def _archived(state, run_id: str) -> bool:
    return Client(state)._archive.call("get", run_id) is not None


@pytest.mark.timeout(40)
def test_fork_of_a_finished_archived_run_starts_at_step_n_with_its_payload(runtime, state_dir):
    rt = runtime(sched_apps.runner)
    src = rt.submit(b"in", {"steps": "4"}, "src")
    assert rt.wait(src, timeout=15).result == b"in|0|1|2|3"
    wait_for(lambda: _archived(state_dir, src) and src not in rt.supervisor.state.runs, 15,
             "the finished run to be archived and dropped from the journal's state")
    before = rt.history(src)

    fid = rt.fork(src, 2)
    assert fid == "src~fork1", "the default id names the source"
    out = rt.wait(fid, timeout=15)
    assert out.result == b"in|0|1|2|3", "steps 2 and 3 ran again on step 2's recorded payload"
    assert _first_lease(state_dir, fid) == 2, "the fork's first step is step 2"
    assert [a.step for a in rt.history(fid)] == [2, 3]
    assert rt.history(src) == before and rt.status(src).result == b"in|0|1|2|3", \
        "the old run is untouched"
    assert rt.fork(src, 2) == "src~fork2", "a second default fork gets the next id"

    given = rt.fork(src, 3, input=b"given", new_run_id="mine")
    assert rt.wait(given, timeout=15).result == b"given|3"
    with pytest.raises(ValueError, match="reached step 3 only"):
        rt.fork(src, 9)
    with pytest.raises(RunNotFound):
        rt.fork("no-such-run", 0)


@pytest.mark.timeout(40)
def test_fork_from_the_failed_step_keeps_its_memos(runtime, state_dir):
    rt = runtime(sched_apps.runner)
    rid = rt.submit(b"m", {"steps": "2", "memo": "1"}, "memo-src")
    assert rt.wait(rid, timeout=15).status.value == "failed"
    fid = rt.fork(rid, 1)
    assert rt.wait(fid, timeout=15).result == b"m|0|1 memo=recorded-by-memo-src", \
        "the fork's step 1 sees the memo the failed step recorded"
    assert rt.status(rid).status.value == "failed", "the source stays failed"


@pytest.mark.timeout(60)
def test_fork_cli_through_the_inbox_and_journaled_run(state_dir, tmp_path):
    cli = state_cli(state_dir, 60)

    client = Client(state_dir)
    client.submit(b"c", {"steps": "3"}, "cli-src")
    assert cli("run", "tests.apps.sched_apps:runner", "-w", "1", "--until-idle").returncode == 0
    payload = tmp_path / "payload"
    payload.write_bytes(b"from-file")
    fork = cli("fork", "cli-src", "--from-step", "1", "--input-file", str(payload))
    assert fork.returncode == 0, fork.stderr.decode()
    assert fork.stdout.decode().strip() == "cli-src~fork1"
    bad = cli("fork", "cli-src", "--from-step", "7")
    assert bad.returncode == 2 and b"reached step 2 only" in bad.stderr
    assert b"Traceback" not in bad.stderr and len(bad.stderr.decode().splitlines()) == 1
    missing = cli("fork", "ghost", "--from-step", "0")
    assert missing.returncode == 2 and b"ghost" in missing.stderr
    assert cli("run", "tests.apps.sched_apps:runner", "-w", "1", "--until-idle").returncode == 0
    assert client.status("cli-src~fork1").result == b"from-file|1|2"
    assert not [r for r in journal_records(state_dir)
                if type(r) is Submitted and r.run_id == "cli-src~fork1"], \
        "a fork is its own record, not a submission of step 0"
    verify = cli("verify")
    assert verify.returncode == 0, f"verify must accept a journal with a fork: {verify.stdout!r}"


@pytest.mark.timeout(40)
def test_fork_of_a_live_run_while_its_step_runs(runtime, state_dir, tmp_path):
    rt = runtime(sched_apps.runner)
    mark = tmp_path / "running"
    rid = rt.submit(b"L", {"steps": "2", "sleep": "1", "mark": str(mark)}, "live")
    wait_for(mark.exists, 10, "step 0 of the live run to start")
    assert not rt.status(rid).status.terminal, "the source is live when it is forked"
    with pytest.raises(ValueError, match="reached step 0 only"):
        rt.fork(rid, 1)
    fid = rt.fork(rid, 0, new_run_id="live-copy")
    assert rt.wait(fid, timeout=15).result == b"L|0|1"
    assert rt.wait(rid, timeout=15).result == b"L|0|1", "the source runs on, untouched"
