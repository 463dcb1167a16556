"""Issue 11 (S2-16, E18): ``journaled step`` after ``journaled compact`` finds the run and its app.

``debug.recorded_inputs`` used to skip ``Snapshot`` records (so every run
was ``RunNotFound`` after a compaction) and lost the recorded app string,
which only ``Recovered`` carried. It now folds ``State`` through the one
reader, and a snapshot keeps the app.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from journaled import replay
from journaled.journal import list_segments
from journaled.records import Snapshot
from tests.e2e.helpers import ROOT, cli_env

APP = "tests.apps.basic:runner"


def journaled(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "journaled.cli", *args], cwd=ROOT,
                          env=cli_env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(180)
def test_journaled_step_after_offline_compaction_finds_the_run_and_its_recorded_app(tmp_path):
    state = tmp_path / "state"
    sub = journaled("submit", "5", "--header", "app=chain", "--state", str(state))
    assert sub.returncode == 0, sub.stderr
    rid = sub.stdout.strip()
    run = journaled("run", APP, "--state", str(state), "-w", "1", "--backoff", "0.01",
                    "--until-idle")
    assert run.returncode == 0, run.stderr
    before = journaled("step", rid, "3", "--state", str(state))
    assert before.returncode == 0, before.stderr

    for _ in range(2):  # a snapshot of a snapshot keeps the app too
        comp = journaled("compact", "--state", str(state))
        assert comp.returncode == 0, comp.stderr
    segments = list_segments(state / "journal")
    assert len(segments) == 1
    recs = [r for _, _, r in replay.records(state / "journal")]
    assert isinstance(recs[0], Snapshot) and recs[0].app == APP, recs[0]

    after = journaled("step", rid, "3", "--state", str(state))
    assert after.returncode == 0, after.stderr
    assert "RunNotFound" not in after.stderr and "no run" not in after.stderr
    assert f"re-running {APP} on run {rid} step 3" in after.stderr
    assert "outcome: Succeed" in after.stdout
    # The step's recorded input survives the snapshot: same outcome as before.
    assert after.stdout == before.stdout

    gone = journaled("step", rid, "0", "--state", str(state))
    assert gone.returncode == 1 and "compacted past it" in gone.stderr
    assert "Traceback" not in gone.stderr
