"""Issue 11 items 12 (journal part) and 16 (S2-14, S2-16).

- ``StateLock.is_locked`` used to take the lock to test it, so a supervisor
  starting in that instant failed with ``StateLocked``; the probe is now an
  OFD-lock test that takes nothing, and ``StateLock.holder`` names the pid.
- New ``STATE/`` and ``STATE/journal/`` directories get their parents
  fsynced; ``repair`` fsyncs the directory right after making the backup,
  before it truncates. Checked with strace on real processes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from journaled.errors import StateLocked
from journaled.journal import Journal, StateLock, list_segments
from tests.e2e.helpers import ROOT, cli_env, pid_alive, wait_for

PROBE = """
import sys, time
from journaled.journal import StateLock
stop = time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < stop:
    StateLock.is_locked(sys.argv[1])
    n += 1
print(n)
"""

HOLD = """
import sys, time
from journaled.journal import StateLock
StateLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


@pytest.mark.timeout(60)
def test_is_locked_probe_in_another_process_never_makes_a_starting_supervisor_fail(tmp_path):
    state = tmp_path / "state"
    with StateLock(state):  # create the lock file, then let it go
        pass
    probe = subprocess.Popen([sys.executable, "-c", PROBE, str(state), "4"], cwd=ROOT,
                             env=cli_env(), stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)  # the prober is running
    refused = tries = 0
    lock = StateLock(state)
    stop = time.monotonic() + 2.5
    while time.monotonic() < stop:
        tries += 1
        try:
            lock.acquire()
        except StateLocked:
            refused += 1
        else:
            lock.release()
    out, _ = probe.communicate(timeout=30)
    assert probe.returncode == 0 and int(out) > 100, "the prober ran the whole time"
    assert refused == 0, f"{refused} of {tries} acquires refused while another process probed"


@pytest.mark.timeout(60)
def test_holder_names_a_hung_supervisor_and_nothing_once_it_is_dead(tmp_path):
    state = tmp_path / "state"
    assert StateLock.holder(state) is None and not state.exists(), "a probe creates nothing"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(state)], cwd=ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        os.kill(proc.pid, signal.SIGSTOP)  # hung: alive, holding the lock, doing nothing
        assert StateLock.holder(state) == proc.pid
        assert StateLock.is_locked(state)
        with pytest.raises(StateLocked, match=f"pid {proc.pid}"):
            StateLock(state).acquire()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_for(lambda: not pid_alive(proc.pid), what="the holder to be gone")
    assert StateLock.holder(state) is None, "a dead process holds no lock"
    with StateLock(state):
        assert StateLock.holder(state) == os.getpid()
    assert StateLock.holder(state) is None


# --- fsync ordering, seen by strace --------------------------------------------------------

STRACE = shutil.which("strace")
needs_strace = pytest.mark.skipif(STRACE is None, reason="strace is not installed "
                                  "(apt-get install -y strace)")


def _strace(tmp_path: Path, args: list[str]) -> list[str]:
    out = tmp_path / "strace.txt"
    proc = subprocess.run(
        [STRACE, "-f", "-y", "-qq", "-o", str(out),
         "-e", "trace=fsync,fdatasync,ftruncate,truncate,rename,openat,mkdir", *args],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=60)
    if "Operation not permitted" in proc.stderr and "ptrace" in proc.stderr:
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out.read_text().splitlines()


def _index(lines: list[str], pattern: str, start: int = 0) -> int:
    rx = re.compile(pattern)
    for i in range(start, len(lines)):
        if rx.search(lines[i]):
            return i
    raise AssertionError(f"no syscall matching {pattern!r} after line {start}:\n"
                         + "\n".join(lines[start:]))


@needs_strace
@pytest.mark.timeout(60)
def test_new_state_and_journal_directories_have_their_parents_fsynced(tmp_path):
    state = tmp_path / "new" / "state"
    code = ("import sys\nfrom journaled.journal import Journal, StateLock\n"
            "StateLock(sys.argv[1]).acquire()\nJournal(sys.argv[1] + '/journal')\n")
    lines = _strace(tmp_path, [sys.executable, "-c", code, str(state)])
    for d in (state, state / "journal"):
        made = _index(lines, rf'mkdir\("{re.escape(str(d))}"')
        _index(lines, rf"fsync\(\d+<{re.escape(str(d.parent))}>\)", made)


@needs_strace
@pytest.mark.timeout(60)
def test_repair_makes_the_backup_durable_before_it_cuts_the_segment(tmp_path):
    state = tmp_path / "state"
    jdir = state / "journal"
    j = Journal(jdir)
    list(j.replay())
    j.open_for_append()
    j.extend([b"one", b"two", b"three"])
    j.commit()
    j.close()
    seg = list_segments(jdir)[-1]
    with open(seg, "r+b") as f:
        f.truncate(seg.stat().st_size - 2)  # a torn tail for repair to cut
    lines = _strace(tmp_path, [sys.executable, "-m", "journaled.cli", "repair", "-y",
                               "--state", str(state)])
    jd = re.escape(str(jdir))
    backup = _index(lines, rf'openat\(.*"{jd}/{seg.name}\.broken".*O_CREAT')
    backup_synced = _index(lines, rf"fsync\(\d+<{jd}/{seg.name}\.broken>\)", backup)
    dir_synced = _index(lines, rf"fsync\(\d+<{jd}>\)", backup_synced)
    cut = _index(lines, rf"ftruncate\(\d+<{jd}/{seg.name}>", backup)
    assert backup_synced < dir_synced < cut, (
        "the backup's directory entry must be durable before the segment is truncated:\n"
        + "\n".join(lines[backup:cut + 1])
    )
    assert (jdir / f"{seg.name}.broken").exists()
