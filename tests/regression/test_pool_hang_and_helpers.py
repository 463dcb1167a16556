"""Pool regressions with real processes: pipe deadlock, helper deaths, SIGTERM, stderr.

Issue 11 items 1, 8 (SIGTERM), 9: the supervisor and a worker must never
wait on each other's full pipe; a killed forkserver or resource tracker is
replaced; workers and the forkserver survive a SIGTERM to the process group;
a restart after ``kill -9`` prints nothing alarming.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from journaled.client import Client
from tests.apps import pool_apps
from tests.e2e.helpers import ROOT, cli_env, pid_alive, wait_for

# (payload bytes, runs, steps per run): every size from the issue, scaled so
# each case moves a few hundred MB at most.
SIZES = [
    (100, 100, 30),
    (4096, 200, 30),
    (65536, 200, 30),
    (300_000, 20, 10),
    (1 << 20, 8, 5),
    (8 << 20, 3, 3),
]


@pytest.mark.timeout(150)
@pytest.mark.parametrize(("size", "runs", "steps"), SIZES,
                         ids=[f"{s}B-{r}x{n}" for s, r, n in SIZES])
def test_payloads_between_steps_never_deadlock_the_worker_pipes(runtime, size, runs, steps):
    """S1-1: both ends in send_bytes to each other hung at 4 KB after a few thousand steps."""
    rt = runtime(pool_apps.runner, workers=2)
    headers = {"app": "payload", "size": str(size), "steps": str(steps)}
    ids = rt.submit_many([b""] * runs, headers=headers)
    deadline = time.monotonic() + 120
    for rid in ids:
        out = rt.wait(rid, timeout=max(1.0, deadline - time.monotonic()))
        assert (out.status.value, out.result) == ("succeeded", b"ok"), out


# ------------------------------------------------------------ CLI supervisors


def _live_procs() -> list[tuple[int, list[str]]]:
    """(pid, the fields of /proc/PID/stat after the command name) of every live process."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if stat[0] != "Z":
            found.append((int(entry), stat))
    return found


def _children(pid: int) -> list[int]:
    return [p for p, stat in _live_procs() if int(stat[1]) == pid]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _helper(sup: int, word: str) -> int | None:
    return next((p for p in _children(sup) if word in _cmdline(p)), None)


def _workers(sup: int) -> list[int]:
    """Worker processes: the forkserver's children (any forkserver of ``sup``)."""
    out = []
    for p in _children(sup):
        if "forkserver" in _cmdline(p):
            out += _children(p)
    return out


def _start(state: Path, err: Path, *extra: str) -> subprocess.Popen[bytes]:
    with open(err, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "journaled.cli", "run", "tests.apps.pool_apps:runner",
             "--state", str(state), "-w", "2", *extra],
            cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=f,
            start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def _quick_runs_succeed(state: Path, n: int, timeout: float = 30) -> None:
    c = Client(state)
    ids = [c.submit(f"r{i}".encode()) for i in range(n)]
    for rid in ids:
        out = Client(state).wait(rid, timeout=timeout)
        assert out.status.value == "succeeded", out


@pytest.mark.timeout(90)
@pytest.mark.parametrize("helper", ["forkserver", "resource_tracker"])
def test_kill_9_of_a_pool_helper_then_a_worker_death_is_survived(tmp_path, helper):
    """Item 9: a killed forkserver made the next respawn raise and the supervisor exit."""
    state, err, mark = tmp_path / "state", tmp_path / "stderr", tmp_path / "running"
    sup = _start(state, err)
    try:
        _quick_runs_succeed(state, 3)
        hp = wait_for(lambda: _helper(sup.pid, helper), timeout=10, what=f"the {helper}")
        before = wait_for(lambda: len(_workers(sup.pid)) == 2 and _workers(sup.pid),
                          timeout=10, what="two workers")
        long = Client(state).submit(b"", headers={"app": "sleep", "seconds": "1.5",
                                                   "mark": str(mark)})
        wait_for(mark.exists, timeout=20, what="the long step to start")
        os.kill(hp, signal.SIGKILL)
        wait_for(lambda: not pid_alive(hp), timeout=10, what=f"the {helper} to die")
        time.sleep(0.3)
        assert sup.poll() is None, err.read_text()
        # The forkserver reports exit codes: its death must not pass for the
        # death of every worker (the running step would be charged worker_died).
        assert Client(state).wait(long, timeout=20).status.value == "succeeded"
        assert [a.outcome for a in Client(state).history(long)] == ["completed"]
        before = [p for p in before if pid_alive(p)]
        os.kill(before[0], signal.SIGKILL)
        # The replacement worker starts (through a new forkserver if need be) and serves.
        _quick_runs_succeed(state, 10)

        def replaced() -> bool:
            # A worker whose forkserver was killed lives on, reparented to init.
            now = set(_workers(sup.pid)) | {p for p in before if pid_alive(p)}
            return len(now) == 2 and before[0] not in now

        wait_for(replaced, timeout=20, what="a replacement worker")
        assert sup.poll() is None, err.read_text()
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=30) == 0, err.read_text()
    finally:
        _stop(sup)
    text = err.read_text()
    assert "Traceback" not in text and "leak" not in text, text


@pytest.mark.timeout(90)
def test_sigterm_to_the_process_group_during_a_step_spares_workers_and_forkserver(tmp_path):
    """Item 8: systemd's SIGTERM to the group killed every worker: a counted worker_died."""
    state, err, mark = tmp_path / "state", tmp_path / "stderr", tmp_path / "running"
    rid = Client(state).submit(b"", headers={"app": "sleep", "seconds": "4",
                                              "mark": str(mark)})
    sup = _start(state, err)
    try:
        wait_for(mark.exists, timeout=30, what="the step to start")
        worker = int(mark.read_text())
        fs = _helper(sup.pid, "forkserver")
        assert fs is not None
        os.killpg(sup.pid, signal.SIGTERM)  # what systemd's KillMode=control-group does
        time.sleep(1.0)
        assert pid_alive(worker), "the worker must ignore SIGTERM; the supervisor drains it"
        assert pid_alive(fs), "the forkserver must ignore SIGTERM"
        assert sup.wait(timeout=40) == 0, err.read_text()
    finally:
        _stop(sup)
    out = Client(state).status(rid)
    assert (out.status.value, out.result) == ("succeeded", b"saw stopping"), out
    outcomes = [a.outcome for a in Client(state).history(rid)]
    assert outcomes == ["completed"], outcomes


@pytest.mark.timeout(90)
def test_restart_after_kill_9_of_the_supervisor_prints_no_traceback_or_leak(tmp_path):
    """Item 9: every restart printed a resource_tracker KeyError and 'leaked semaphore'."""
    state, err, mark = tmp_path / "state", tmp_path / "stderr", tmp_path / "running"
    c = Client(state)
    c.submit(b"", headers={"app": "sleep", "seconds": "2", "mark": str(mark)})
    for i in range(20):
        c.submit(f"r{i}".encode())
    sup = _start(state, err)
    try:
        wait_for(mark.exists, timeout=30, what="the step to start")
        kids = _children(sup.pid)
        grandkids = [g for k in kids for g in _children(k)]
        os.kill(sup.pid, signal.SIGKILL)  # the supervisor alone; helpers notice on their own
        sup.wait(timeout=10)
        for p in kids + grandkids:
            wait_for(lambda p=p: not pid_alive(p), timeout=15, what=f"helper {p} to exit")
        again = _start(state, err, "--until-idle")
        assert again.wait(timeout=60) == 0, err.read_text()
        for p in _children(again.pid):
            wait_for(lambda p=p: not pid_alive(p), timeout=15, what=f"helper {p} to exit")
    finally:
        _stop(sup)
    bad = [ln for ln in err.read_text().splitlines()
           if any(w in ln for w in ("Traceback", "KeyError", "leaked"))]
    assert not bad, err.read_text()


def _session_helpers(sup: int) -> list[tuple[str, int]]:
    """(kind, pid) of the supervisor's live helpers: forkserver, resource tracker, workers
    (a worker whose forkserver died is reparented, so look by session, not by parent)."""
    found = []
    for pid, st in _live_procs():
        ppid, sid = int(st[1]), int(st[3])
        if sid != sup or pid == sup:
            continue
        cl = _cmdline(pid)
        if "resource_tracker" in cl:
            found.append(("tracker", pid))
        elif "forkserver" in cl:
            found.append(("forkserver" if ppid == sup else "worker", pid))
    return found


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_torture_random_kill_9_of_forkserver_tracker_and_workers_with_64k_payloads(tmp_path):
    """Item 9 torture: 200 kills of helpers never make the supervisor exit or lose a run."""
    import random

    state, err = tmp_path / "state", tmp_path / "stderr"
    rng = random.Random(1)
    c = Client(state)
    ids = [c.submit(b"", headers={"app": "payload", "size": "65536", "steps": "40"})
           for _ in range(60)]
    sup = _start(state, err, "--max-attempts", "1000")
    kills: dict[str, int] = {}
    try:
        time.sleep(1.0)
        for _ in range(200):
            cands = _session_helpers(sup.pid)
            if cands:
                what, pid = rng.choice(cands)
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills[what] = kills.get(what, 0) + 1
                except ProcessLookupError:
                    pass
            time.sleep(rng.uniform(0.05, 0.4))
            assert sup.poll() is None, err.read_text()
        for rid in ids:
            assert Client(state).wait(rid, timeout=120).status.value == "succeeded"
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=60) == 0, err.read_text()
    finally:
        _stop(sup)
    assert set(kills) == {"tracker", "forkserver", "worker"}, kills
    text = err.read_text()
    assert "Traceback" not in text and "leak" not in text, text
