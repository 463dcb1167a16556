"""Issue 12 migration: a 0.2 state directory (finished runs retained in the journal) opens.

``tests/data/golden-state-0.2`` was written by the code of 0.2
(``tests/data/make_golden_state.py``). At the first start its finished
runs move to the archive with the outcome they had; its live runs (one
parked on a signal, one delayed an hour) go on to their end; the
journal then holds only live work, and every old segment still decodes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from journaled import replay
from journaled.api import RunStatus
from journaled.archive import Archive
from journaled.client import Client
from journaled.run import attempts_of, outcome_of
from journaled.tools import check
from tests.apps import golden
from tests.e2e.helpers import wait_for

DATA = Path(__file__).resolve().parents[1] / "data"
GOLDEN_STATE = DATA / "golden-state-0.2"
CENTURY = 100 * 365 * 86400.0  # the fixture's runs finished in 2026: keep them


@pytest.mark.timeout(120)
def test_a_0_2_state_moves_its_finished_runs_to_the_archive_and_finishes_its_live_ones(
        runtime, tmp_path: Path) -> None:
    state = tmp_path / "state"
    shutil.copytree(GOLDEN_STATE, state)
    before = replay.fold(state / "journal")  # the old code's view, every segment decoded
    finished = {rid: r for rid, r in before.runs.items() if r.terminal}
    live = sorted(rid for rid, r in before.runs.items() if not r.terminal)
    assert len(finished) >= 20 and live == ["g-delayed", "g-wait-signal"], "the fixture changed"

    rt = runtime(golden.runner, state=state, retention=CENTURY)
    sup = rt.supervisor
    reader = Archive(state).open_reader
    # (g-delayed's hour, counted from when the fixture was built, may be over:
    # then it finishes at once and is archived too.)
    wait_for(lambda: (r := reader()) is not None and len(r.get_many(finished)) == len(finished),
             60, "the retained finished runs to reach the archive")
    wait_for(lambda: not any(r.terminal for r in list(sup.state.runs.values())), 30,
             "the journal to drop them")
    arch = reader()
    assert arch is not None
    for rid, old in finished.items():
        row = arch.get(rid)
        assert row is not None, rid
        assert outcome_of(row.run()) == outcome_of(old) == rt.status(rid), \
            f"{rid}: the archived outcome is the one the journal had"
        assert attempts_of(row.run()) == attempts_of(old) == rt.history(rid)
    assert {d.run_id for d in rt.dead(limit=None)} == \
        {rid for rid, r in finished.items() if r.dead}

    # The live runs go on to their end.
    rt.signal("g-wait-signal", "go", b"after the upgrade")
    assert rt.wait("g-wait-signal", 30).status is RunStatus.SUCCEEDED
    # Delayed an hour from when the fixture was built: past due by now, it runs
    # its last step at once; if not, the cancel ends it. Either way it ends.
    rt.cancel("g-delayed", "no hour to wait")
    assert rt.wait("g-delayed", 30).status in (RunStatus.SUCCEEDED, RunStatus.CANCELLED)
    wait_for(lambda: not sup.state.runs, 30, "the journal to hold no finished run")
    rt.close()

    client = Client(state)
    assert client.status("g-wait-signal").result is not None
    assert len(client.runs(limit=None)) == len(finished) + 2
    assert not client.refresh().runs, "a fresh reader folds no finished run"
    assert check(state).ok, check(state).violations
    # Re-submitting an old id with its old input is a no-op, across the migration.
    old = finished["g-echo-00"]
    assert client.submit_many([old.input], old.headers, ["g-echo-00"]) == ["g-echo-00"]


@pytest.mark.timeout(30)
def test_the_golden_segments_still_decode(tmp_path: Path) -> None:
    kinds = {type(rec).__name__ for _seg, _off, rec in replay.records(GOLDEN_STATE / "journal")}
    assert {"Snapshot", "Submitted", "Terminated", "HookDelivered"} <= kinds
    journal = tmp_path / "journal"
    journal.mkdir()
    shutil.copy(DATA / "golden.log", journal / "00000000.log")  # the 0.1 format's pinned segment
    assert len(list(replay.records(journal))) > 5
