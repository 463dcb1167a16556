"""An acknowledged run id never vanishes (issue 11 item 2; REVIEW S1-2, S1-5, §4 items 4-5).

Each submission is checked with the supervisor's own decoder and size
limits before it is acknowledged; the supervisor takes each item of a batch
on its own and records every rejection before it deletes the inbox file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from journaled import inbox
from journaled.client import Client
from journaled.errors import InputTooLarge, RunConflict, RunNotFound, SubmissionRejected
from journaled.inbox import BatchMsg, SubmitMsg, write_durable
from journaled.limits import MAX_HEADERS, MAX_VALUE
from journaled.runtime import Runtime
from tests.e2e.helpers import ROOT, cli_env, client_door

# Every client test on both doors: the supervisor's socket and the inbox.
pytestmark = pytest.mark.usefixtures("client_door")
assert client_door  # the fixture, used by every test here

BAD_SUBMITS: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"priority": 1.5}, TypeError),
    ({"priority": True}, TypeError),
    ({"priority": 10 ** 20}, ValueError),
    ({"max_attempts": True}, TypeError),
    ({"max_attempts": -1}, ValueError),
    ({"step_timeout": "5"}, TypeError),
    ({"step_timeout": float("nan")}, ValueError),
    ({"step_timeout": -1.0}, ValueError),
    ({"headers": {"k": 1}}, TypeError),
]


def _inbox_files(state: Path) -> list[str]:
    try:
        return sorted(n for n in os.listdir(state / "inbox") if n.endswith(".msg"))
    except FileNotFoundError:
        return []


def _post_raw(state: Path, msg: Any, name: str | None = None) -> Path:
    """Write an inbox file the way an old or foreign client would: no checks at all."""
    d = state / "inbox"
    d.mkdir(parents=True, exist_ok=True)
    name = name or f"{time.time_ns():020d}-raw.msg"
    return write_durable(d, name, inbox._enc.encode(msg))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kwargs,error", BAD_SUBMITS, ids=[repr(k) for k, _ in BAD_SUBMITS])
def test_submit_with_float_priority_is_refused_before_ack(
        state_dir: Path, kwargs: dict[str, Any], error: type[Exception]) -> None:
    client = Client(state_dir)
    kwargs = dict(kwargs)  # the parameter is shared by every door's run of this test
    headers = kwargs.pop("headers", None)
    with pytest.raises(error):
        client.submit(b"x", headers, run_id="r1", **kwargs)
    with pytest.raises(error):
        client.submit_many([b"a", b"b"], headers, **kwargs)
    assert not state_dir.exists(), "a refused submission must leave nothing behind"


@pytest.mark.timeout(30)
def test_submit_over_the_size_limits_raises_input_too_large_before_ack(state_dir: Path) -> None:
    client = Client(state_dir, blob_threshold=2 * MAX_VALUE)  # inline: the limit applies
    with pytest.raises(InputTooLarge):
        client.submit(b"x" * (MAX_VALUE + 1))
    with pytest.raises(InputTooLarge):
        client.submit(b"x", {"h": "v" * MAX_HEADERS})
    with pytest.raises(InputTooLarge):
        client.submit_many([b"ok", b"x" * (MAX_VALUE + 1)], run_ids=["ok", "big"])
    assert not state_dir.exists(), "nothing may be queued, not even the good item"
    rid = client.submit(b"fine", run_id="fine")
    with pytest.raises(InputTooLarge):
        client.signal(rid, "k", b"x" * (MAX_VALUE + 1))
    assert len(_inbox_files(state_dir)) == 1, "only the good submission is queued"


@pytest.mark.timeout(60)
def test_submit_with_timedelta_step_timeout_is_accepted_and_runs(
        runtime: Callable[..., Runtime], state_dir: Path) -> None:
    client = Client(state_dir)
    rid = client.submit(b"hi", step_timeout=timedelta(minutes=5), priority=3, max_attempts=2)
    rt = runtime()
    out = rt.wait(rid, 30)
    assert (out.status.value, out.result) == ("succeeded", b"hi")
    with rt.supervisor.state_lock:
        run = rt.supervisor.state.runs[rid]
        assert (run.step_timeout, run.priority, run.max_attempts) == (300.0, 3, 2)


@pytest.mark.timeout(60)
def test_submit_many_with_duplicate_id_keeps_the_other_items(
        runtime: Callable[..., Runtime], state_dir: Path) -> None:
    client = Client(state_dir)
    # Same id, other input inside one call: refused whole, before anything is queued.
    with pytest.raises(RunConflict):
        client.submit_many([b"1", b"2", b"3"], run_ids=["a", "a", "c"])
    assert _inbox_files(state_dir) == []
    # Same id, same input: one run, the id reported for each item.
    assert client.submit_many([b"1", b"1", b"3"], run_ids=["a", "a", "c"]) == ["a", "a", "c"]
    # An unchecked batch (an old client, or two clients' race) reaching the supervisor:
    # the conflicting item is rejected on its own, the items after it still run.
    _post_raw(state_dir, BatchMsg([SubmitMsg("b", b"1", time.time()),
                                   SubmitMsg("a", b"other", time.time()),
                                   SubmitMsg("d", b"4", time.time())]))
    rt = runtime()
    for rid, want in (("a", b"1"), ("b", b"1"), ("c", b"3"), ("d", b"4")):
        out = rt.wait(rid, 30)
        assert (out.status.value, out.result) == ("succeeded", want), rid
    entry = json.loads((state_dir / "inbox" / "rejected" / "runs" / "a.json").read_text())
    assert "different input" in entry["reason"], entry
    assert _inbox_files(state_dir) == [], "every inbox file must be taken"


@pytest.mark.timeout(60)
def test_rejected_submission_reports_submission_rejected_not_run_not_found(
        runtime: Callable[..., Runtime], state_dir: Path) -> None:
    # An item the supervisor must refuse (oversized: it skipped the client's checks)
    # next to good ones: the good ones run, the bad id reads as rejected everywhere.
    _post_raw(state_dir, BatchMsg([SubmitMsg("good1", b"1", time.time()),
                                   SubmitMsg("huge", b"x" * (MAX_VALUE + 1), time.time()),
                                   SubmitMsg("good2", b"2", time.time())]))
    rt = runtime()
    assert rt.wait("good1", 30).status.value == "succeeded"
    assert rt.wait("good2", 30).status.value == "succeeded"
    client = Client(state_dir)
    for query in (client.status, client.wait, client.history, rt.status, rt.wait, rt.history):
        with pytest.raises(SubmissionRejected) as e:
            query("huge")
        assert "over the" in e.value.reason, e.value.reason
    with pytest.raises(RunNotFound):
        client.status("never-submitted")
    # The CLI: one line for people, JSON for scripts, exit 2 either way.
    cli = [sys.executable, "-m", "journaled.cli", "status", "huge", "--state", str(state_dir)]
    text = subprocess.run(cli, cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                          timeout=60)
    assert text.returncode == 2 and "rejected" in text.stderr and "Traceback" not in text.stderr
    js = subprocess.run([*cli, "--json"], cwd=ROOT, env=cli_env(), capture_output=True,
                        text=True, timeout=60)
    assert js.returncode == 2, js.stderr
    doc = json.loads(js.stdout)
    assert doc["status"] == "rejected" and "over the" in doc["error"], doc


@pytest.mark.timeout(60)
def test_two_clients_racing_a_conflicting_id_lose_nothing_else(
        runtime: Callable[..., Runtime], state_dir: Path) -> None:
    loser = Client(state_dir)
    # The loser checks and posts first (nothing in its way) ...
    assert loser.submit_many([b"y", b"x-loser", b"z"], run_ids=["y", "x", "z"]) == \
        ["y", "x", "z"]
    # ... but the winner's file reaches the supervisor first (it passed its own
    # check a moment before the loser's file appeared): an inbox name that sorts first.
    _post_raw(state_dir, SubmitMsg("x", b"x-winner", time.time()),
              name="00000000000000000000-winner.msg")
    rt = runtime()
    assert rt.wait("y", 30).result == b"y" and rt.wait("z", 30).result == b"z", \
        "the loser's other items must run"
    assert rt.wait("x", 30).result == b"x-winner"
    # The loser is told, not handed the winner's result; anyone else sees the run.
    with pytest.raises(SubmissionRejected) as e:
        loser.wait("x", 10)
    assert "different input" in e.value.reason
    assert Client(state_dir).status("x").result == b"x-winner"


@pytest.mark.timeout(120)
def test_oversized_inbox_file_is_rejected_not_a_crash_loop(state_dir: Path) -> None:
    good = Client(state_dir).submit(b"still runs", run_id="good")
    d = state_dir / "inbox"
    poison = d / f"{time.time_ns():020d}-poison.msg"
    with open(poison, "wb") as f:  # sparse: 65 MiB on paper, nothing on disk
        f.truncate(inbox.MAX_FILE + 1)
    garbage = d / f"{time.time_ns():020d}-garbage.msg"
    garbage.write_bytes(b"\x93\xa5hello not a message")
    cmd = [sys.executable, "-m", "journaled.cli", "run", "tests.apps.basic:runner", "-w", "1",
           "--until-idle", "--state", str(state_dir)]
    for start in (1, 2):  # a crash loop would die on both starts
        proc = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"start {start}: {proc.stderr}"
        assert "Traceback" not in proc.stderr, proc.stderr
    assert Client(state_dir).status(good).status.value == "succeeded"
    rejected = d / "rejected"
    for bad in (poison, garbage):
        assert not bad.exists()
        assert (rejected / bad.name).exists() and (rejected / (bad.name + ".why")).exists()
    assert "over the" in (rejected / (poison.name + ".why")).read_text()


@pytest.mark.timeout(60)
def test_runtime_submit_many_with_a_conflict_applies_nothing(
        runtime: Callable[..., Runtime]) -> None:
    rt = runtime()
    rt.wait(rt.submit(b"taken", run_id="taken"), 30)
    with pytest.raises(RunConflict):
        rt.submit_many([b"1", b"other", b"3"], run_ids=["n1", "taken", "n3"])
    with pytest.raises(RunConflict):  # a conflict inside the batch itself
        rt.submit_many([b"1", b"2"], run_ids=["n1", "n1"])
    for rid in ("n1", "n3"):
        with pytest.raises(RunNotFound):
            rt.status(rid)
    # Same id and input twice is one run, and an existing identical run is a no-op.
    assert rt.submit_many([b"1", b"1", b"taken"], run_ids=["n1", "n1", "taken"]) == \
        ["n1", "n1", "taken"]
    assert rt.wait("n1", 30).result == b"1"


@pytest.mark.timeout(30)
def test_rejections_are_kept_for_the_retention_then_pruned(state_dir: Path) -> None:
    ib = inbox.Inbox(state_dir)
    ib.reject_run("old", "conflict", "f.msg")
    ib.reject_run("new", "conflict", "g.msg")
    entry = ib.rejected_runs / "old.json"
    past = time.time() - ib.rejected_retention - 10
    os.utime(entry, (past, past))
    assert ib.prune_rejected(time.time() - ib.rejected_retention) == 1
    assert inbox.rejection(state_dir, "old") is None
    assert inbox.rejection(state_dir, "new") == "conflict"


@pytest.mark.timeout(60)
def test_submit_many_of_big_inputs_splits_files_under_the_inbox_limit(state_dir: Path) -> None:
    client = Client(state_dir, blob_threshold=MAX_VALUE)  # inline (at the threshold)
    ids = client.submit_many([bytes([i]) * MAX_VALUE for i in range(5)])
    files = _inbox_files(state_dir)
    assert len(files) > 1, "40 MiB of inputs must not be one inbox file"
    for name in files:
        assert (state_dir / "inbox" / name).stat().st_size <= inbox.MAX_FILE
    assert sorted(inbox.pending_submissions(state_dir)) == sorted(ids)
