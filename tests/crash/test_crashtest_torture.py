"""Short versions of the long torture: 64 KB payloads, helper kills, self-exits, clean stderr.

Issue 11 "Tests": the in-suite crash test gains 64 KB payloads between
steps and kills of the forkserver and the resource tracker (not only the
supervisor and its workers); the report counts supervisor self-exits and
checks that supervisor stderr holds no traceback or leak warning. What
must hold: the supervisor replaces a dead helper and keeps serving, so a
torture with helper kills ends with 0 self-exits and a clean stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = "examples.primes:runner"
INPUTS = "150000\n200000\n250000\n"


def _crashtest(tmp: Path, *args: str, inputs_text: str = INPUTS, **env_extra: str
               ) -> tuple[int, dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("JOURNALED_STATE", "JOURNALED_FAILPOINTS",
                        "JOURNALED_UNSAFE_DISPATCH_BEFORE_SYNC", "JOURNALED_SIMULATE_POWER_LOSS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(env_extra)
    inputs = tmp / "inputs.txt"
    inputs.write_text(inputs_text)
    proc = subprocess.run([sys.executable, "-m", "journaled.cli", "crashtest", APP,
                           "--input-file", str(inputs), "--json", "--state", str(tmp / "ct"),
                           *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=170)
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"crashtest printed no JSON (exit {proc.returncode}):\n{proc.stdout[-2000:]}"
                    f"\n{proc.stderr[-3000:]}")
    if doc.get("kept"):
        shutil.rmtree(doc["kept"], ignore_errors=True)
    return proc.returncode, doc, proc.stderr


def _why(doc: dict[str, Any]) -> str:
    return "\n".join(f"({v['check']}) {v['message'][:600]}" for v in doc["violations"][:6])


@pytest.mark.timeout(180)
def test_crashtest_with_64k_payloads_between_steps_passes_under_kills(tmp_path: Path) -> None:
    code, doc, err = _crashtest(tmp_path, "--runs", "4", "--kills", "6", "--seed", "5",
                                "--payload-bytes", "65536")
    assert doc["payload_bytes"] == 65536
    assert code == 0 and doc["ok"], f"64 KB payloads must survive the kills:\n{_why(doc)}"
    assert doc["kills"]["total"] >= 6 and doc["self_exits"] == 0 and doc["dirty_stderr"] == 0
    assert doc["reader"]["on"] and doc["reader"]["lines"] > 0, "the reader saw the runs"


@pytest.mark.timeout(180)
def test_kill_of_forkserver_and_resource_tracker_mid_round_supervisor_keeps_serving(
        tmp_path: Path) -> None:
    # Longer rounds than the other tests: helper kills land while work is left to do.
    code, doc, err = _crashtest(tmp_path, "--runs", "6", "--kills", "16", "--seed", "4",
                                "--kill-helpers", inputs_text="400000\n500000\n600000\n")
    k = doc["kills"]
    assert doc["self_exits"] == 0, f"a dead helper must be replaced, not fatal:\n{_why(doc)}"
    assert doc["dirty_stderr"] == 0, f"stderr must stay clean after helper kills:\n{_why(doc)}"
    assert code == 0 and doc["ok"], _why(doc)
    assert k["forkserver"] >= 1 and k["resource_tracker"] >= 1, \
        f"the killer must pick both helpers: {k}"
    assert k["total"] == (k["supervisor"] + k["workers"] + k["failpoint"] + k["forkserver"]
                          + k["resource_tracker"])


@pytest.mark.timeout(180)
def test_storage_errors_make_supervisor_self_exit_and_crashtest_counts_them(
        tmp_path: Path) -> None:
    """A supervisor that ends by itself is counted and reported (check 'exit')."""
    code, doc, err = _crashtest(tmp_path, "--runs", "3", "--kills", "4", "--seed", "1",
                                JOURNALED_FAILPOINTS="journal.before_sync=error%40")
    assert code == 1 and not doc["ok"]
    assert doc["self_exits"] >= 2, f"each self-exit is counted and the round goes on: {doc}"
    exits = [v for v in doc["violations"] if v["check"] == "exit"]
    assert exits and "by itself" in exits[0]["message"], _why(doc)
    assert "self-exits" not in err  # the text table is for the non-JSON report only
