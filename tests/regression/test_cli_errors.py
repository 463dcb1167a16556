"""User mistakes at the command line: one line on stderr, exit 2, never a traceback
(issue 11 item 13; REVIEW S2/S3-17), and output that is safe on a terminal (item 18)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from journaled.client import Client
from journaled.limits import MAX_VALUE
from tests.e2e.helpers import cli_env

CLI = [sys.executable, "-m", "journaled.cli"]


def _cli(*args: str, cwd: Path, stdin: bytes | None = None,
         **env: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*CLI, *args], cwd=cwd, env=cli_env(**env), capture_output=True,
                          input=stdin, timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode(errors="replace"),
                                       proc.stderr.decode(errors="replace"))


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("journaled: error: "), proc.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture
def live_run(tmp_path: Path) -> str:
    return Client(tmp_path / ".journaled").submit(b"x", run_id="r1")


@pytest.mark.timeout(60)
def test_signal_with_empty_key_is_one_line_error(tmp_path: Path, live_run: str) -> None:
    _assert_one_line_error(_cli("signal", live_run, "", cwd=tmp_path), "signal key")


@pytest.mark.timeout(60)
def test_submit_with_huge_priority_is_one_line_error(tmp_path: Path) -> None:
    _assert_one_line_error(_cli("submit", "x", "--priority", "99999999999999999999",
                                cwd=tmp_path), "priority")
    assert not (tmp_path / ".journaled").exists(), "a refused submit must create nothing"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("args,words", [
    (["submit", "x", "--run-id", "has space"], ["invalid run id"]),
    (["submit", "x", "--step-timeout", "nan"], ["step_timeout"]),
    (["submit", "x", "-H", "novalue"], ["header"]),
    (["submit", "x", "--priority", "-99999999999999999999"], ["priority"]),
    (["status", "no-such-run"], ["no run"]),
    (["signal", "no-such-run", "k"], ["no run"]),
    (["cancel", "bad id!"], ["invalid run id"]),
    (["retry", "r1"], ["no dead-lettered step"]),
    (["submit", "x", "--state", "/proc/1/nope"], ["--state"]),
])
def test_bad_input_is_one_line_error(tmp_path: Path, live_run: str, args: list[str],
                                     words: list[str]) -> None:
    _assert_one_line_error(_cli(*args, cwd=tmp_path), *words)


@pytest.mark.timeout(60)
def test_submit_over_the_size_limit_is_one_line_error(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(MAX_VALUE + 1)
    # Inline, that is with a blob threshold above the limit (below it: a blob, no limit).
    inline = {"JOURNALED_BLOB_THRESHOLD": str(2 * MAX_VALUE)}
    _assert_one_line_error(_cli("submit", "--input-file", str(big), cwd=tmp_path, **inline),
                           "limit")
    _assert_one_line_error(_cli("submit", "-", cwd=tmp_path, stdin=big.read_bytes(), **inline),
                           "limit")
    assert not (tmp_path / ".journaled").exists()


@pytest.mark.timeout(120)
def test_runs_prints_binary_results_as_a_safe_preview(tmp_path: Path) -> None:
    state = tmp_path / "st"
    client = Client(state)
    raw = b"\x00\x1b[2J\xff\xfe binary"
    client.submit(raw, run_id="bin")
    client.submit(b"plain text", run_id="txt")
    proc = subprocess.run([*CLI, "run", "tests.apps.basic:runner", "-w", "1", "--until-idle",
                           "--state", str(state)], env=cli_env(), capture_output=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = _cli("runs", "--state", str(state), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\x00" not in out.stdout, repr(out.stdout)
    assert f"<{len(raw)} bytes: 001b5b" in out.stdout, out.stdout
    assert "plain text" in out.stdout
    st = _cli("status", "bin", "--state", str(state), cwd=tmp_path)
    assert "\x1b" not in st.stdout and f"<{len(raw)} bytes" in st.stdout, st.stdout
    js = json.loads(_cli("runs", "--json", "--state", str(state), cwd=tmp_path).stdout)
    by_id = {r["run_id"]: r for r in js}
    assert base64.b64decode(by_id["bin"]["result_b64"]) == raw
    assert by_id["bin"]["result"] is None and by_id["txt"]["result"] == "plain text"
