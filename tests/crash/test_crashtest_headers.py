"""``journaled crashtest -H k=v``: every run it submits (reference and crash rounds) has them."""

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
APP = "tests.apps.header_app:runner"


def _crashtest(*args: str, app: str = APP, timeout: float = 100
               ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNALED_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "journaled.cli", "crashtest", app, *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(120)
def test_crashtest_submits_every_run_with_the_given_headers(tmp_path: Path) -> None:
    out = _crashtest("-H", "greeting=hello", "-H", "lang=en", "--runs", "2", "--kills", "1",
                     "--seed", "4", "--no-reader", "--keep", "--state", str(tmp_path), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    rep = json.loads(out.stdout)
    kept = Path(rep["kept"])
    try:
        rounds = sorted(p for p in kept.iterdir() if p.is_dir())
        assert [p.name for p in rounds][:2] == ["reference", "round-001"]
        for state in rounds:
            results = {o.result for o in final_outcomes(state).values() if o is not None}
            # Without the header the runner fails permanently; with it, it greets.
            assert results == {b"hello, 0 (en)", b"hello, 1 (en)"}, (state, results)
    finally:
        shutil.rmtree(kept, ignore_errors=True)


@pytest.mark.timeout(30)
def test_crashtest_refuses_a_bad_header_in_one_line() -> None:
    for bad, words in ((["-H", "novalue"], "KEY=VALUE"),
                       (["-H", "big=" + "x" * 70_000], "bad -H"),
                       (["--runner", ""], "--runner needs a name")):
        out = _crashtest(*bad)
        assert out.returncode == 2, out.stdout + out.stderr
        assert words in out.stderr and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
