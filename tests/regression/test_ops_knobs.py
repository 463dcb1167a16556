"""Test-only switches say so at start-up; a bad JOURNALED_FAILPOINTS is one line, not a traceback.

Issue 11 items 13 and 14 (REVIEW S2-15): JOURNALED_FAILPOINTS,
JOURNALED_UNSAFE_DISPATCH_BEFORE_SYNC and JOURNALED_SIMULATE_POWER_LOSS
weakened guarantees without a word, and a malformed failpoint spec raised
a ValueError traceback at import in every process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KNOBS = ("JOURNALED_FAILPOINTS", "JOURNALED_UNSAFE_DISPATCH_BEFORE_SYNC",
         "JOURNALED_SIMULATE_POWER_LOSS")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in KNOBS and k != "JOURNALED_STATE"}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def _run(state: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "journaled.cli", "run", "examples.primes:runner",
                           "--state", str(state), "-w", "1", "--until-idle"],
                          cwd=ROOT, env=_env(**extra), capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(90)
def test_test_only_switches_set_at_supervisor_start_log_one_loud_warning(tmp_path: Path) -> None:
    res = _run(tmp_path / "s", JOURNALED_FAILPOINTS="journal.before_write=delay:1",
               JOURNALED_UNSAFE_DISPATCH_BEFORE_SYNC="1", JOURNALED_SIMULATE_POWER_LOSS="1")
    assert res.returncode == 0, res.stderr
    loud = [ln for ln in res.stderr.splitlines() if "WARNING" in ln]
    assert len(loud) == 1, res.stderr
    for knob in KNOBS:
        assert knob in loud[0], loud[0]
    assert "durability is NOT guaranteed" in loud[0]
    assert "write-ahead" in loud[0], "each switch says which guarantee it weakens"


@pytest.mark.timeout(90)
def test_no_switch_set_at_supervisor_start_logs_no_warning(tmp_path: Path) -> None:
    res = _run(tmp_path / "s", JOURNALED_SIMULATE_POWER_LOSS="0")
    assert res.returncode == 0, res.stderr
    assert "WARNING" not in res.stderr and "TEST-ONLY" not in res.stderr, res.stderr


@pytest.mark.timeout(60)
def test_bad_failpoint_spec_in_env_for_run_is_one_line_exit_2(tmp_path: Path) -> None:
    res = _run(tmp_path / "s", JOURNALED_FAILPOINTS="journal.before_sync=explode")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1, res.stderr
    assert "JOURNALED_FAILPOINTS" in res.stderr and "unknown action 'explode'" in res.stderr
    assert not (tmp_path / "s").exists(), "a refused start must not create the state directory"


@pytest.mark.timeout(60)
def test_bad_failpoint_spec_in_env_at_import_raises_only_at_first_use(tmp_path: Path) -> None:
    code = (
        "import journaled, journaled.failpoints as fp\n"
        "from journaled.runtime import Runtime\n"
        "print('imported', fp.ENV_ERROR is not None)\n"
        "try:\n"
        "    fp.hit('journal.before_write')\n"
        "except fp.FailpointSpecError as e:\n"
        "    print('hit:', e)\n"
        "try:\n"
        f"    Runtime({str(tmp_path / 's')!r}, 'examples.primes:runner').start()\n"
        "except journaled.errors.JournaledError as e:\n"
        "    print('start:', type(e).__name__)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=_env(JOURNALED_FAILPOINTS="nosuch.point=crash"), timeout=60)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    out = res.stdout.splitlines()
    assert out[0] == "imported True", out
    assert out[1].startswith("hit: JOURNALED_FAILPOINTS=") and "unknown point" in out[1], out
    assert out[2] == "start: FailpointSpecError", out
