"""Regression test (issue 11, item 15): a step cut at the drain timeout is not a crash.

A real ``journaled run`` process is stopped with SIGTERM more times than
``--max-abandons`` allows abandons while a step that outlasts ``--drain-timeout``
runs (4 cuts over a limit of 2 in the suite; 12 over 10, the issue's case, under
``-m slow``). Each cut is recorded as interrupted by shutdown; none counts toward
``--max-abandons``, so the run is never dead-lettered as "suspected of taking the
supervisor down".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from journaled.client import Client
from journaled.records import Leased, Released, Terminated
from tests.e2e.helpers import cli_env, journal_records, wait_for


def _supervisor(state: Path, max_abandons: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "journaled.cli", "run", "tests.apps.state_apps:runner",
         "--state", str(state), "-w", "1", "--drain-timeout", "0.2", "--cancel-grace", "0.2",
         "--max-abandons", str(max_abandons)],
        env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("cuts", "max_abandons"),
                         [(4, 2), pytest.param(12, 10, marks=pytest.mark.slow)])
def test_drain_timeout_cut_is_not_an_abandon(tmp_path, cuts, max_abandons):
    assert cuts > max_abandons + 1, "more cuts than the abandons that dead-letter a run"
    state = tmp_path / "state"
    mark = tmp_path / "running"
    proc = _supervisor(state, max_abandons)
    try:
        rid = Client(state).submit(b"60", headers={"app": "sleep", "mark": str(mark)},
                                   run_id="long")
        for _ in range(cuts):
            wait_for(mark.exists, 60, "the long step to run")
            mark.unlink()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err.decode(errors="replace")
            proc = _supervisor(state, max_abandons)
        wait_for(mark.exists, 60, "the long step to run once more after the cuts")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    recs = journal_records(state)
    dead = [r for r in recs if isinstance(r, Terminated)]
    assert dead == [], f"{cuts} deploys are no crash: the run must not be dead-lettered: {dead}"
    released = [r for r in recs if isinstance(r, Released) and r.run_id == rid]
    assert len(released) >= cuts and all(r.started and r.shutdown for r in released), \
        "each cut is recorded as interrupted by shutdown"
    leased = [r.attempt for r in recs if isinstance(r, Leased)][:cuts + 1]
    assert leased == list(range(1, cuts + 2)), \
        "every delivery still counts as an attempt"
    hist = Client(state).history(rid)
    assert hist[0].outcome == "interrupted" and "shutdown" in hist[0].error, hist[0]
    assert os.path.isdir(state)
