"""kill -9 the supervisor while a resource is held: after the restart nothing stays held.

What is held is never journaled, only recomputed from leased runs, and a
restart abandons every open lease; so the runs that need the resource are
leased again, each run ends exactly once, and the limit held throughout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from journaled import Client
from journaled.records import Recovered, Terminated
from tests.e2e.helpers import ROOT, cli_env, journal_records, most_held, wait_for

APP = "tests.apps.limits_apps:hold"


def _run(state: Path, *extra: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "journaled.cli", "run", APP, "--state", str(state), "-w", "2",
             "--limit", "gpu=1", "--key-concurrency", "2", "--backoff", "0.05", *extra],
            cwd=ROOT, env=cli_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=f, start_new_session=True)


@pytest.mark.timeout(90)
def test_kill_9_while_a_resource_is_held_leaks_nothing(tmp_path: Path) -> None:
    state, log, mark = tmp_path / "state", tmp_path / "sup.log", tmp_path / "running"
    client = Client(state)
    gpu = client.submit_many([b"0.4"] * 3, {"mark": str(mark)}, [f"g{i}" for i in range(3)],
                             resources={"gpu": 1}, key="t")
    plain = client.submit_many([b"0"] * 3, run_ids=[f"p{i}" for i in range(3)])
    first = _run(state, log=log)
    try:
        wait_for(mark.exists, 30, "a gpu step to run")  # the gpu is held now
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    second = _run(state, "--until-idle", log=log)
    code = second.wait(60)
    assert code == 0, log.read_text()[-3000:]
    recs = journal_records(state)
    assert sum(isinstance(r, Recovered) for r in recs) == 2
    ends = Counter(r.run_id for r in recs if isinstance(r, Terminated))
    assert ends == Counter({rid: 1 for rid in gpu + plain}), "a run lost or ended twice"
    for rid in gpu + plain:
        assert client.status(rid).status.value == "succeeded"
    peak, peak_key, _ = most_held(state)
    assert peak == {"gpu": 1.0} and peak_key == {"t": 1}
    # The step cut by the crash was abandoned (not failed) and ran again after the restart.
    outcomes = [a.outcome for rid in gpu for a in client.history(rid)]
    assert outcomes.count("abandoned") == 1 and outcomes.count("completed") == 3
