"""A ``--state`` that is a typo or a file: one line on stderr, exit 2, nothing created
(issue 11 item 13: "a read must never create a state directory").

Before, ``runs``/``dead``/``verify``/``watch`` on a typo printed an empty state and
exited 0 (``verify`` said "ok"), ``compact`` created ``typo/journal`` and ``typo/lock``,
and a ``--state`` naming a regular file got click's four-line usage error.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import cli_env

CLI = [sys.executable, "-m", "journaled.cli"]

# Every command that must not create a state directory: the reads, the journal tools,
# and the requests that act on a run that is already there.
NEEDS_EXISTING = [
    ["status", "r1"], ["runs"], ["result", "r1"], ["wait", "r1", "--timeout", "0.1"],
    ["dead"], ["log"], ["verify"],
    ["step", "r1", "0"], ["repair", "-y"], ["compact"], ["cancel", "r1"], ["retry", "r1"],
    ["signal", "r1", "k"],
]
# watch is often started before the supervisor creates the directory: it says so, and
# shows an empty state, but creates nothing either.
WATCH = [["watch", "--once"], ["watch", "--json"]]
EVERY = [*NEEDS_EXISTING, *WATCH, ["submit", "x"], ["run", "examples.primes:runner"],
         ["crashtest", "examples.primes:runner", "--kills", "0"]]


def _cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=cwd, env=cli_env(**env), capture_output=True,
                          text=True, timeout=60)


def _one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Usage:" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("journaled: error: "), proc.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert proc.stdout == "", proc.stdout
    return lines[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", NEEDS_EXISTING, ids=lambda a: " ".join(a))
def test_missing_state_dir_on_read_is_one_line_error_and_creates_nothing(
        tmp_path: Path, args: list[str]) -> None:
    proc = _cli(*args, "--state", "typo", cwd=tmp_path)
    _one_line_error(proc, "no state directory 'typo'", "--state")
    assert not (tmp_path / "typo").exists(), f"'journaled {args[0]}' created the state dir"
    assert os.listdir(tmp_path) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", WATCH, ids=lambda a: " ".join(a))
def test_watch_of_a_missing_state_dir_says_so_in_one_line_and_creates_nothing(
        tmp_path: Path, args: list[str]) -> None:
    proc = _cli(*args, "--state", "typo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("journaled: warning: no state directory "
                                                   "'typo'"), proc.stderr
    assert "no supervisor running" in proc.stdout, proc.stdout
    assert os.listdir(tmp_path) == []


@pytest.mark.timeout(60)
def test_missing_default_state_dir_on_read_names_it_and_creates_nothing(tmp_path: Path) -> None:
    proc = _cli("runs", cwd=tmp_path)  # cli_env() has no JOURNALED_STATE
    _one_line_error(proc, "no state directory '.journaled'", "JOURNALED_STATE")
    typo = _cli("verify", cwd=tmp_path, JOURNALED_STATE="from-env")
    _one_line_error(typo, "'from-env'")
    assert os.listdir(tmp_path) == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("args", EVERY, ids=lambda a: " ".join(a))
def test_state_that_is_a_regular_file_is_one_line_error(tmp_path: Path,
                                                        args: list[str]) -> None:
    (tmp_path / "afile").write_bytes(b"not a directory")
    _one_line_error(_cli(*args, "--state", "afile", cwd=tmp_path), "--state", "file")
    assert (tmp_path / "afile").read_bytes() == b"not a directory"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", [["runs"], ["submit", "x"]], ids=lambda a: a[0])
def test_state_under_a_regular_file_is_one_line_error(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "afile").write_bytes(b"")
    _one_line_error(_cli(*args, "--state", "afile/state", cwd=tmp_path), "--state",
                    "Not a directory")


@pytest.mark.timeout(60)
def test_state_file_from_the_environment_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_bytes(b"")
    _one_line_error(_cli("status", "r1", cwd=tmp_path, JOURNALED_STATE="afile"), "file")
