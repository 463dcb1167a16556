"""A crashtest mismatch shows where the two results first differ, not two equal prefixes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from journaled.crashtest.archive import Outcome
from journaled.crashtest.checks import mismatch
from journaled.crashtest.diff import describe, first_difference

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(10)
def test_first_difference_finds_the_offset() -> None:
    base = bytes(range(256)) * 1000
    assert first_difference(base, base) is None
    for at in (0, 1, 63, 64, 65, 70_000, len(base) - 1):
        other = bytearray(base)
        other[at] ^= 0xFF
        assert first_difference(base, bytes(other)) == at
    assert first_difference(b"abc", b"abcdef") == 3  # a prefix: where the shorter ends
    assert first_difference(b"", b"x") == 0


@pytest.mark.timeout(10)
def test_describe_shows_both_values_around_the_offset_in_repr_and_hex() -> None:
    ref = b"x" * 100 + b"GOOD" + b"y" * 100
    got = b"x" * 100 + b"BAD!" + b"y" * 100
    text = describe("its result", got, ref)
    assert "first differs at byte 100 (got 204 bytes, reference 204 bytes)" in text
    assert "bytes 68 to 131 of each" in text
    assert repr(got[68:132]) in text and repr(ref[68:132]) in text
    assert "[42]" in text and "[47]" in text  # the differing byte, marked: 'B', 'G'
    shorter = describe("the result", b"abc", b"abcdef")
    assert "at byte 3" in shorter and "[64]" in shorter  # 'd' is where they part
    assert describe("x", b"same", b"same") == ""
    assert "got has none" in describe("the result", None, b"abc")


@pytest.mark.timeout(10)
def test_check_b_names_the_offset_when_statuses_agree() -> None:
    ref = Outcome("succeeded", b"p" * 50 + b"1" + b"q" * 50, None)
    got = Outcome("succeeded", b"p" * 50 + b"2" + b"q" * 50, None)
    msg = mismatch("r-1", got, ref)
    assert msg.startswith("run r-1 ended succeeded like the crash-free reference, but its "
                          "result first differs at byte 50")
    assert "[32]" in msg and "[31]" in msg
    other = mismatch("r-2", Outcome("failed", None, "boom"), Outcome("succeeded", b"ok", None))
    assert other == ("run r-2 ended failed error='boom', but the crash-free reference ended "
                     "succeeded result=ok")
    err = mismatch("r-3", Outcome("failed", None, "worker 1 died at step 3"),
                   Outcome("failed", None, "worker 1 died at step 2"))
    assert "its error first differs at byte 22" in err


@pytest.mark.timeout(120)
def test_a_real_crashtest_mismatch_report_shows_the_offset() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNALED_")}
    env["PYTHONPATH"] = str(ROOT)
    env["JOURNALED_FAILPOINT_SEED"] = "1"  # crash rounds only: their results differ
    out = subprocess.run([sys.executable, "-m", "journaled.cli", "crashtest",
                          "tests.apps.drift_app:runner", "--runs", "1", "--kills", "1",
                          "--seed", "1", "--no-reader", "--json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=110)
    assert out.returncode == 1, out.stdout + out.stderr
    rep = json.loads(out.stdout)
    if rep.get("kept"):
        import shutil

        shutil.rmtree(rep["kept"], ignore_errors=True)
    b = [v for v in rep["violations"] if v["check"] == "b"]
    assert b, rep["violations"]
    msg = b[0]["message"]
    assert "result first differs at byte 70,000 (got 100,000 bytes, reference 100,000 bytes)" \
        in msg, msg
    assert "[43]" in msg and "[52]" in msg  # 'C' in the crash round, 'R' in the reference
