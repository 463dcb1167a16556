"""``journaled run --until-idle`` with nothing to do stops without a false alarm.

QA (issue 11 item 18, messages that hide the cause): on an empty or finished
state the supervisor stops while its fresh workers are still starting; each
worker then exits 0 because it was told to stop, and stderr said
"worker 0 (pid N) exited with code 0 at start-up; respawning in 0.1 s" for
every worker, which reads like a runner that cannot import.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from journaled.client import Client
from tests.e2e.helpers import ROOT, cli_env

APP = "tests.apps.basic:runner"


def _until_idle(state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "journaled.cli", "run", APP, "--state",
                           str(state), "-w", "2", "--until-idle"], cwd=ROOT, env=cli_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90)


@pytest.mark.timeout(120)
def test_until_idle_on_empty_state_reports_no_worker_death_at_start_up(tmp_path: Path) -> None:
    proc = _until_idle(tmp_path / "s")
    assert proc.returncode == 0, proc.stderr
    assert "at start-up" not in proc.stderr, proc.stderr
    assert "respawning" not in proc.stderr, proc.stderr


@pytest.mark.timeout(120)
def test_until_idle_restart_after_all_finished_reports_no_worker_death(tmp_path: Path) -> None:
    state = tmp_path / "s"
    Client(state).submit(b"1", run_id="a")
    first = _until_idle(state)
    assert first.returncode == 0, first.stderr
    again = _until_idle(state)
    assert again.returncode == 0, again.stderr
    assert "exited with code" not in again.stderr, again.stderr
    assert "Traceback" not in first.stderr + again.stderr
