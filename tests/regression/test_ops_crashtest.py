"""crashtest's new pieces, unit by unit: the reader check (h), payload padding, helper lookup.

Issue 11 "What must hold": crashtest gains a check that no reader ever
reported an outcome the journal later lost; the killer finds the
forkserver and resource tracker among the supervisor's children.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from journaled.api import Continue, Fail, Step, Succeed
from journaled.crashtest import (
    CHECKS,
    Outcome,
    Seen,
    check_readers,
    dirty_lines,
    execlog,
    procs,
    read_log,
)
from tests.e2e.helpers import ROOT, cli_env, wait_for


@pytest.mark.timeout(10)
def test_reader_saw_outcome_later_taken_back_is_check_h() -> None:
    ok = Outcome("succeeded", b"42", None)
    seen = [Seen(0, "r1", "running", None), Seen(1, "r1", "succeeded", b"42"),
            Seen(2, "r1", "running", None)]
    found = check_readers(seen, {"r1": ok})
    assert [(v.check, v.run_id) for v in found] == [("h", "r1")]
    assert "taken back" in found[0].message and "line 2" in found[0].message
    assert "h" in CHECKS and "reader" in CHECKS["h"]


@pytest.mark.timeout(10)
def test_reader_saw_outcome_journal_no_longer_has_is_check_h() -> None:
    seen = [Seen(0, "r1", "succeeded", b"41"), Seen(1, "r2", "failed", None)]
    found = check_readers(seen, {"r1": Outcome("succeeded", b"42", None), "r2": None})
    assert [(v.check, v.run_id) for v in found] == [("h", "r1"), ("h", "r2")]
    assert "not durable" in found[0].message and "not finished" in found[1].message
    same = [Seen(0, "r1", "pending", None), Seen(1, "r1", "succeeded", b"42")]
    assert check_readers(same, {"r1": Outcome("succeeded", b"42", None)}) == []


@pytest.mark.timeout(10)
def test_reader_log_skips_a_torn_last_line(tmp_path: Path) -> None:
    log = tmp_path / "r.log"
    log.write_bytes(b"seen r1 running -\nerror OSError: x\nseen r1 succeeded 3432\nseen r1 fa")
    seen, errors = read_log(log)
    assert seen == [Seen(0, "r1", "running", None), Seen(1, "r1", "succeeded", b"42")]
    assert errors == ["OSError: x"]


@pytest.mark.timeout(10)
def test_dirty_stderr_lines_are_tracebacks_leaks_and_keyerrors() -> None:
    text = ("journaled: journal torn tail: cut ...\nTraceback (most recent call last):\n"
            "KeyError: '/journaled-1'\nUserWarning: There appear to be 2 leaked semaphore\nok\n")
    assert len(dirty_lines(text)) == 3


def _step(run_id: str, n: int, payload: bytes) -> Step:
    return Step(run_id, n, payload, {}, run_id, 1)


@pytest.mark.timeout(10)
def test_payload_padding_rides_on_continue_and_is_checked_on_next_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(execlog.ENV_LOG, str(tmp_path / "exec"))
    monkeypatch.setenv(execlog.ENV_PAYLOAD, "65536")
    got: list[bytes] = []

    def runner(step: Step) -> object:
        got.append(step.payload)
        return Continue(step.payload + b"!") if step.step_number == 0 else Succeed(b"done")

    monkeypatch.setattr(execlog, "_real_runner", runner)
    out = execlog.wrapped_runner(_step("r1", 0, b"in"))
    assert isinstance(out, Continue) and len(out.payload) == 3 + 65536
    assert out.payload.endswith(execlog.padding("r1", 0, 65536))
    assert execlog.wrapped_runner(_step("r1", 1, out.payload)) == Succeed(b"done")
    assert got == [b"in", b"in!"], "the user's runner never sees the padding"
    wrong = execlog.wrapped_runner(_step("r2", 1, out.payload))
    assert isinstance(wrong, Fail) and "payload" in wrong.reason, \
        "a payload handed to another run is caught"


@pytest.mark.timeout(90)
def test_helpers_of_a_real_supervisor_are_its_forkserver_and_resource_tracker(
        tmp_path: Path) -> None:
    sup = subprocess.Popen([sys.executable, "-m", "journaled.cli", "run", "examples.primes:runner",
                            "--state", str(tmp_path / "s"), "-w", "2"], cwd=ROOT, env=cli_env(),
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        found = wait_for(lambda: (h := procs.helpers(sup.pid)).keys() == {
            "forkserver", "resource_tracker"} and len(procs.workers(sup.pid)) == 2 and h,
            60, "the forkserver, the resource tracker and two workers")
        assert found["forkserver"] != found["resource_tracker"]
        assert not set(found.values()) & set(procs.workers(sup.pid)), "workers are not helpers"
    finally:
        os.killpg(sup.pid, signal.SIGKILL)
        sup.wait()
        time.sleep(0.1)
