"""``journaled crashtest APP --runner NAME``: the runs go to that runner of an App (the
supervisor serves the wrapper under the name), and a name APP does not serve is one line."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from journaled.crashtest.archive import final_outcomes
from tests.crash.test_crashtest_headers import _crashtest as _crashtest_of

APP = "tests.apps.runner_apps:app"


def _crashtest(*args: str) -> subprocess.CompletedProcess[str]:
    return _crashtest_of(*args, app=APP)


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
