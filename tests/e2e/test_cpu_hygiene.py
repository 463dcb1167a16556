"""CPU hygiene end to end: BLAS thread caps (through the forkserver), worker recycling,
RSS kills charged as ``oom`` with their peak, CPU pinning."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from journaled import Client
from journaled.pool.hygiene import MB, THREAD_VARS, RssMonitor, rss_bytes, thread_env
from tests.apps import limits_apps
from tests.e2e.helpers import ROOT, cli_env, wait_for

CAPS = THREAD_VARS


@pytest.fixture(autouse=True)
def _no_inherited_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Runtime tests here start supervisors in this process: none of the caps may be
    inherited from the test process, where the dask tests' ``LocalCluster`` (an earlier
    test in the same xdist process) leaves them set to 1 in ``os.environ``; the
    supervisor would take them for the user's own and cap nothing."""
    for k in CAPS:
        monkeypatch.delenv(k, raising=False)


def _cli_report(tmp: Path, name: str, *args: str, **env: str) -> dict:
    state = tmp / name
    rid = Client(state).submit(b"", run_id="r")
    # Only the caps this test sets: none inherited from whoever runs the suite.
    run_env = {k: v for k, v in cli_env(**env).items() if k not in CAPS or k in env}
    p = subprocess.run([sys.executable, "-m", "journaled.cli", "run", "tests.apps.blas_apps:report",
                        "--state", str(state), "-w", "1", "--until-idle", *args],
                       cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = Client(state).status(rid)
    assert out.status.value == "succeeded", out.error
    return json.loads(out.result)


@pytest.mark.timeout(90)
def test_blas_is_capped_in_workers_even_when_the_forkserver_loaded_numpy(tmp_path):
    pytest.importorskip("numpy")
    pytest.importorskip("threadpoolctl")
    got = _cli_report(tmp_path, "default")
    assert [got[k] for k in CAPS] == ["1"] * 5
    assert got["blas"] == [1], "numpy was loaded in the forkserver before the cap: not capped"
    assert got["forkserver_threads"] == 1, "the forkserver loaded numpy with no cap"
    got = _cli_report(tmp_path, "two", "--threads-per-worker", "2")
    assert [got[k] for k in CAPS] == ["2"] * 5 and got["blas"] == [2]
    assert got["forkserver_threads"] == 2
    if got["cpus"] >= 2:  # the user's setting wins, and no other variable is touched
        got = _cli_report(tmp_path, "user", OPENBLAS_NUM_THREADS="2")
        assert got["OPENBLAS_NUM_THREADS"] == "2" and got["OMP_NUM_THREADS"] is None
        assert got["blas"] == [2]


def test_thread_env_leaves_a_user_setting_alone():
    assert thread_env({}, 1) == dict.fromkeys(CAPS, "1")
    assert thread_env({"MKL_NUM_THREADS": "4"}, 1) == {}
    assert thread_env({}, 0) == {}


@pytest.mark.timeout(60)
def test_runtime_caps_and_recycles_after_max_steps(runtime):
    rt = runtime(limits_apps.env, workers=1, max_steps_per_worker=2, threads_per_worker=3)
    outs = []
    for _ in range(5):
        rid = rt.submit(b"")
        assert rt.wait(rid, 30).status.value == "succeeded"
        outs.append((rid, json.loads(rt.status(rid).result)))
    assert all([o[k] for k in CAPS] == ["3"] * 5 for _, o in outs)
    pids = [o["pid"] for _, o in outs]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    assert max(o["steps"] for _, o in outs) == 2
    for rid, _ in outs:  # a recycle is no failure: one attempt each
        assert [a.outcome for a in rt.history(rid)] == ["completed"]
    assert rt.supervisor.recycled >= 2


@pytest.mark.timeout(60)
def test_a_step_over_max_worker_rss_is_an_oom_attempt_with_its_peak(runtime, state_dir):
    rt = runtime(limits_apps.hog, workers=1, max_worker_rss=120, max_attempts=2)
    rid = rt.submit(b"300", {"sleep": "3"})
    out = rt.wait(rid, 40)
    assert out.status.value == "failed" and "--max-worker-rss 120 MB" in out.error
    hist = rt.history(rid)
    assert [a.outcome for a in hist] == ["oom", "dead_lettered"]
    assert all(a.peak_rss > 120 * MB for a in hist)
    # The worker was replaced: a small step runs.
    ok = rt.submit(b"1", {"sleep": "0"})
    assert rt.wait(ok, 30).status.value == "succeeded"
    p = subprocess.run([sys.executable, "-m", "journaled.cli", "status", rid, "--state",
                        str(state_dir)], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                       timeout=30)
    assert ": oom (" in p.stdout and "peak RSS" in p.stdout, p.stdout


@pytest.mark.timeout(60)
def test_pin_workers_gives_each_worker_one_cpu(runtime):
    rt = runtime(limits_apps.env, workers=2, pin_workers=True)
    cpus = sorted(os.sched_getaffinity(0))
    ids = rt.submit_many([b""] * 6)
    seen = {}
    for rid in ids:
        assert rt.wait(rid, 30).status.value == "succeeded"
        got = json.loads(rt.status(rid).result)
        seen[rt.history(rid)[-1].worker] = got["cpus"]
    for slot, c in seen.items():
        assert c == [cpus[slot % len(cpus)]]


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return ""


@pytest.mark.timeout(30)
def test_a_killed_worker_not_yet_reaped_keeps_its_last_rss_sample():
    """Between the kernel's SIGKILL and the supervisor's reap, the process is a zombie whose
    RSS reads 0; a sample then must not replace the last real one, or a death near the
    limit (the OOM killer's) reads as a plain worker death. Flaked under load before."""
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        w = SimpleNamespace(pid=victim.pid, proc=victim, kill_reason="", slot=0)
        pool = SimpleNamespace(workers=[w], running_seq=lambda _w: 3)
        mon = RssMonitor(pool, limit=10_000 * MB, wake=lambda: None)
        wait_for(lambda: (rss_bytes(victim.pid) or 0) > 4 * MB, 10, "python to start")
        mon.sample()
        before = mon.last_sample(0, victim.pid)
        assert before is not None and before[2] > 4 * MB
        os.kill(victim.pid, signal.SIGKILL)  # not reaped: Popen.wait is not called yet
        wait_for(lambda: _state(victim.pid) == "Z", 10, "the killed process to be a zombie")
        assert not rss_bytes(victim.pid), "a zombie has no resident pages"
        mon.sample()
        assert mon.last_sample(0, victim.pid) == before, "the zombie's 0 replaced the sample"
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.wait()


@pytest.mark.timeout(30)
def test_rss_monitor_kills_busy_and_recycles_idle_workers():
    """The monitor against real processes: busy over the limit is SIGKILLed, idle is flagged."""
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        w = SimpleNamespace(pid=victim.pid, proc=victim, kill_reason="", slot=0)
        seq = {"now": 0}
        pool = SimpleNamespace(workers=[w], running_seq=lambda _w: seq["now"])
        woke = []
        mon = RssMonitor(pool, limit=1 * MB, wake=lambda: woke.append(1))
        wait_for(lambda: (rss_bytes(victim.pid) or 0) > 4 * MB, 10, "python to start")
        mon.sample()  # idle and over: recycle, no kill
        assert mon.take_recycles() == {0} and victim.poll() is None
        seq["now"] = 7
        mon.sample()
        assert victim.wait(5) == -signal.SIGKILL
        got = mon.take_kill(0, victim.pid)
        assert got is not None and got[0] == 7 and got[1] > MB and woke
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()


@pytest.mark.timeout(90)
def test_a_sigkill_we_did_not_send_near_the_rss_limit_is_charged_as_oom(runtime):
    """What the kernel's OOM killer does: SIGKILL a worker whose RSS is near the limit.
    The supervisor did not send it, so the attempt is ``oom`` with the peak it saw."""
    rt = runtime(limits_apps.hog, workers=1, max_worker_rss=200, max_attempts=2)
    rid = rt.submit(b"175", {"sleep": "20"})
    wait_for(lambda: rt.status(rid).status.value == "running", 30, "the hog to start")
    w = rt.supervisor.pool.workers[0]
    pid = w.proc.pid
    wait_for(lambda: rss_bytes(pid) > 170 * MB, 30, "the hog's pages to be resident")
    monitor = rt.supervisor._rss
    assert monitor is not None

    def sampled_near_the_limit() -> bool:
        got = monitor.last_sample(w.slot, pid)
        return got is not None and got[1] > 170 * MB

    # A monitor sample (every ~100 ms) must have seen it near the limit: waited for,
    # not slept for, since a loaded machine can delay the sampling thread.
    wait_for(sampled_near_the_limit, 30, "the RSS monitor to sample the hog near the limit")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: rt.history(rid) and rt.history(rid)[0].outcome != "running", 30,
             "the supervisor to notice the death")
    first = rt.history(rid)[0]
    assert first.outcome == "oom", first
    assert "OOM killer" in (first.error or "") and first.peak_rss > 170 * MB, first
    rt.cancel(rid)
