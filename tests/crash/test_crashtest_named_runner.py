"""``journaled crashtest APP --runner NAME``: the runs go to that runner of an App (the
supervisor serves the wrapper under the name), and a name APP does not serve is one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from journaled.crashtest.archive import final_outcomes

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.runner_apps:app"


def _crashtest(*args: str, timeout: float = 100) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNALED_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "journaled.cli", "crashtest", APP, *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(120)
def test_crashtest_runs_the_named_runner_of_an_app(tmp_path: Path) -> None:
    out = _crashtest("--runner", "thumbs", "--runs", "2", "--kills", "1", "--seed", "3",
                     "--no-reader", "--keep", "--state", str(tmp_path), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    kept = Path(json.loads(out.stdout)["kept"])
    try:
        for state in sorted(p for p in kept.iterdir() if p.is_dir()):
            results = [o.result for o in final_outcomes(state).values() if o is not None]
            assert len(results) == 2 and all(r.startswith(b"thumbs:") for r in results), \
                (state, results)
    finally:
        shutil.rmtree(kept, ignore_errors=True)


@pytest.mark.timeout(30)
def test_crashtest_refuses_a_runner_the_app_does_not_serve() -> None:
    out = _crashtest("--runner", "nope")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "'nope'" in out.stderr and "thumbs" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
