"""Reads never create a state directory; writes create what they need, durably
(issue 11 items 12 and 13; REVIEW §4 item 13, S2-14)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from journaled.client import Client
from journaled.errors import RunNotFound
from journaled.inbox import Inbox, SubmitMsg, post
from tests.e2e.helpers import cli_env

CLI = [sys.executable, "-m", "journaled.cli"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=cwd, env=cli_env(), capture_output=True,
                          text=True, timeout=60)


@pytest.mark.timeout(30)
def test_client_reads_on_a_typo_path_create_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "typo"
    client = Client(typo)
    for read in (client.status, client.history, client.result, client.retry):
        with pytest.raises(RunNotFound):
            read("r1")
    with pytest.raises(RunNotFound):
        client.wait("r1", timeout=0.1)
    assert client.runs() == [] and client.dead() == []
    assert not typo.exists(), "a read must never create a state directory"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", [
    ["status", "r1"], ["runs"], ["result", "r1"], ["wait", "r1", "--timeout", "0.1"],
    ["dead"], ["cancel", "r1"], ["signal", "r1", "k"], ["retry", "r1"],
])
def test_status_with_typo_state_creates_nothing(tmp_path: Path, args: list[str]) -> None:
    proc = _cli(*args, "--state", "typo", cwd=tmp_path)
    assert proc.returncode in (0, 2), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "typo").exists(), f"'journaled {args[0]}' created the state dir"


@pytest.mark.timeout(60)
def test_submit_into_a_directory_no_supervisor_used_says_so_in_one_line(tmp_path: Path) -> None:
    proc = _cli("submit", "hello", "--state", "fresh", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"r-[0-9a-f]+-[0-9a-f]+\n", proc.stdout), proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "no supervisor has run on this state directory" in lines[0] \
        and "journaled run" in lines[0], proc.stderr
    assert (tmp_path / "fresh" / "inbox").is_dir()


def _strace(code: str, tmp_path: Path) -> str:
    log = tmp_path / "strace.log"
    subprocess.run(["strace", "-f", "-y", "-qq", "-e", "trace=fsync,unlink,unlinkat",
                    "-o", str(log), sys.executable, "-c", code], env=cli_env(), check=True,
                   timeout=60)
    return log.read_text()


@pytest.mark.timeout(60)
def test_first_submit_fsyncs_each_new_directory_parent(tmp_path: Path) -> None:
    if subprocess.run(["which", "strace"], capture_output=True).returncode:
        pytest.skip("strace is not installed")
    state = tmp_path / "a" / "state"
    out = _strace(f"from journaled.client import Client; Client({str(state)!r}).submit(b'x')",
                  tmp_path)
    synced = set(re.findall(r"fsync\(\d+<([^>]*)>\)", out))
    for parent in (tmp_path, tmp_path / "a", state):
        assert str(parent) in synced, f"{parent} was not fsynced after a new entry:\n{out}"


@pytest.mark.timeout(60)
def test_inbox_ack_unlinks_then_fsyncs_the_directory_once_per_batch(tmp_path: Path) -> None:
    if subprocess.run(["which", "strace"], capture_output=True).returncode:
        pytest.skip("strace is not installed")
    state = tmp_path / "state"
    paths = [post(state, SubmitMsg(f"r{i}", b"x", 0.0)) for i in range(5)]
    code = ("import sys; from pathlib import Path; from journaled.inbox import Inbox; "
            f"ib = Inbox(Path({str(state)!r})); "
            f"ib.ack([Path(p) for p in {[str(p) for p in paths]!r}])")
    out = _strace(code, tmp_path)
    after = out[out.rindex(" unlink("):] if " unlink(" in out else ""
    unlinks = len(re.findall(r"unlink(?:at)?\(", out))
    dir_syncs = re.findall(rf"fsync\(\d+<{re.escape(str(state / 'inbox'))}>\)", after)
    assert unlinks == 5, out
    assert len(dir_syncs) == 1, f"want one inbox directory fsync after the unlinks:\n{out}"
    assert Inbox(state).scan() == []
