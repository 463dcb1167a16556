"""Issue 11 (S2-16, E18): ``journaled step`` after ``journaled compact`` finds the run and its app.

``debug.recorded_inputs`` used to skip ``Snapshot`` records (so every run
was ``RunNotFound`` after a compaction) and lost the recorded app string,
which only ``Recovered`` carried. It now folds ``State`` through the one
reader, and a snapshot keeps the app.

Issue 12: finished runs leave the journal for the archive, which keeps the
last step's inputs of a failed run only: after a compaction that step still
re-runs, a succeeded run's steps say they were archived (one line, exit 1).
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
    sub = journaled("submit", "no good", "--header", "app=fail", "--state", str(state))
    assert sub.returncode == 0, sub.stderr
    fid = sub.stdout.strip()
    run = journaled("run", APP, "--state", str(state), "-w", "1", "--backoff", "0.01",
                    "--until-idle")
    assert run.returncode == 0, run.stderr
    before = journaled("step", rid, "3", "--state", str(state))
    assert before.returncode == 0, before.stderr
    failed_before = journaled("step", fid, "0", "--state", str(state))
    assert "outcome: Fail" in failed_before.stdout, failed_before.stderr

    for _ in range(2):  # a snapshot of a snapshot keeps the app too
        comp = journaled("compact", "--state", str(state))
        assert comp.returncode == 0, comp.stderr
    segments = list_segments(state / "journal")
    assert len(segments) == 1
    recs = [r for _, _, r in replay.records(state / "journal")]
    assert isinstance(recs[0], Snapshot) and recs[0].app == APP, recs[0]

    after = journaled("step", fid, "0", "--state", str(state))
    assert after.returncode == 0, after.stderr
    assert "RunNotFound" not in after.stderr and "no run" not in after.stderr
    assert f"re-running {APP} on run {fid} step 0" in after.stderr
    # The failed step's recorded input survives in the archive: same outcome as before.
    assert after.stdout == failed_before.stdout

    gone = journaled("step", rid, "3", "--state", str(state))
    assert gone.returncode == 1 and "archived" in gone.stderr, gone.stderr
    assert "Traceback" not in gone.stderr and gone.stderr.count("\n") == 1
