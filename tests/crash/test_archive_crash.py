"""Kill the supervisor at each archive failpoint; the restart loses no run and ends none twice.

For each of ``archive.before_commit`` (the batch not yet in SQLite),
``archive.after_commit`` (in SQLite, ``Archived`` not yet in the journal:
the runs are in both) and ``archive.after_drop`` (``Archived`` durable: only
in the archive), with and without power-loss mode: submit three multi-step
runs, run a supervisor that ``kill -9``s itself at the point, look at what
the crash left, restart it cleanly until idle, then check that every run
succeeded with the crash-free result, ended exactly once in the journal's
history, is in the archive with that outcome, is no longer in the journal,
and that ``verify`` finds no run with two outcomes.
"""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import pytest

from journaled import replay
from journaled.archive import Archive as RunArchive
from journaled.client import Client
from journaled.crashtest import Archive, ExecLog, final_outcomes
from journaled.records import Terminated
from journaled.tools import check
from tests.apps.reference import primes_below
from tests.crash.test_crash_points import supervise

INPUTS = [b"20000", b"30000", b"40000"]
RUN_IDS = [f"ar-{i}" for i in range(len(INPUTS))]
EXPECTED = {rid: str(primes_below(int(d))).encode() for rid, d in zip(RUN_IDS, INPUTS,
                                                                       strict=True)}
TIMEOUT = 60.0


def archived_ids(state: Path) -> set[str]:
    reader = RunArchive(state).open_reader()
    if reader is None:
        return set()
    try:
        return {row.id for row in reader.runs(limit=None)}
    finally:
        reader.close()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("power_loss", [True, False], ids=["power-loss", "kill"])
@pytest.mark.parametrize("point", ["archive.before_commit", "archive.after_commit",
                                   "archive.after_drop"])
def test_kill_at_an_archive_failpoint_loses_nothing(point: str, power_loss: bool,
                                                    tmp_path: Path) -> None:
    state, log = tmp_path / "state", tmp_path / "exec.log"
    Client(state).submit_many(INPUTS, run_ids=RUN_IDS)
    history = Archive(state)  # every durable journal record, across compactions
    first = supervise(state, log, f"{point}=crash@1", point, power_loss, TIMEOUT)
    assert first == -signal.SIGKILL, f"{point} must be reached and kill the supervisor ({first})"
    history.update()

    # What the crash left: the ordering rule, seen from outside.
    in_journal = {rid for rid, r in replay.fold(state / "journal").runs.items() if r.terminal}
    in_archive = archived_ids(state)
    if point == "archive.before_commit":
        assert not in_archive and in_journal, "nothing committed: the runs are in the journal"
    elif point == "archive.after_commit":
        assert in_archive and in_archive <= in_journal, \
            "committed, Archived not durable: every archived run is still in the journal"
    else:
        assert in_archive - in_journal, \
            "Archived durable: its runs are only in the archive (a later batch may be in both)"
    assert check(state).ok, check(state).violations

    assert supervise(state, log, "", "clean restart", power_loss, TIMEOUT) == 0, \
        "the clean restart runs to idle"
    history.update()
    final = final_outcomes(state)
    ends = Counter(r.run_id for r in history.records if type(r) is Terminated)
    for rid, result in EXPECTED.items():
        out = final.get(rid)
        assert out is not None and (out.status, out.result) == ("succeeded", result), \
            f"run {rid} must succeed with its crash-free result, got {out}"
        assert ends[rid] == 1, f"run {rid} must finish exactly once, got {ends[rid]}"
    assert archived_ids(state) == set(RUN_IDS), "every run ends up archived"
    assert not replay.fold(state / "journal").runs, "and none is left in the journal"
    verdict = check(state)
    assert verdict.ok and sum(verdict.archived.values()) == len(RUN_IDS), verdict.violations
    hooks = {ln.run_id for ln in exec_lines(log) if ln.kind == "term"}
    assert hooks == set(RUN_IDS), "the hook fired for every run"


def exec_lines(log: Path) -> list:
    exec_log = ExecLog(log)
    exec_log.poll()
    return exec_log.lines
