"""The same end-to-end behaviours against every executor: local processes and Dask.

The Dask half runs on a ``distributed.LocalCluster`` with worker processes
started by this module; it is skipped, saying why, only when the ``dask``
extra is not installed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from journaled import Client
from journaled.runtime import Runtime
from tests.apps import basic
from tests.conftest import FAST, ROOT


@pytest.fixture(scope="module")
def dask_address() -> Iterator[str]:
    pytest.importorskip("distributed", reason="the 'dask' extra is not installed")
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=50)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


@pytest.fixture(params=["local", "dask"])
def executor(request: pytest.FixtureRequest) -> str:
    if request.param == "local":
        return "local"
    return "dask://" + request.getfixturevalue("dask_address")


@pytest.fixture
def start(state_dir: Path, executor: str) -> Iterator[Callable[..., Runtime]]:
    started: list[Runtime] = []

    def go(**kw: Any) -> Runtime:
        rt = Runtime(state_dir, basic.runner, executor=executor, **{**FAST, **kw})
        rt.start()
        started.append(rt)
        return rt

    yield go
    for rt in started:
        rt.close(drain=False)


def _wait_for(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared: the step did not start"
        time.sleep(0.01)


@pytest.mark.timeout(90)
def test_multi_step_run_retries_and_threads_payloads(start: Callable[..., Runtime]) -> None:
    rt = start()
    ids = [rt.submit(str(n).encode(), headers={"app": "chain"}) for n in (1, 5)]
    for n, rid in zip((1, 5), ids, strict=True):
        out = rt.wait(rid, timeout=60)
        assert out.status.value == "succeeded", f"run {rid} must succeed: {out.error}"
        data = json.loads(out.result or b"{}")
        assert data["n"] == n * 2 ** (basic.CHAIN_STEPS - 1), "payloads must thread through steps"
        attempts = [o["attempts"] for o in data["obs"] if o["step"] == 1]
        assert attempts == [2], "step 1 fails transiently once, so its success is attempt 2"


@pytest.mark.timeout(90)
def test_permanent_error_dead_letters_after_one_attempt(start: Callable[..., Runtime]) -> None:
    rt = start()
    rid = rt.submit(b"x", headers={"app": "permanent", "file": "/nonexistent/x"})
    out = rt.wait(rid, timeout=60)
    assert out.status.value == "failed" and "dead-lettered" in (out.error or "")
    assert [a.outcome for a in rt.history(rid)] == ["dead_lettered"], \
        "a permanent error must end the run after exactly one attempt"


@pytest.mark.timeout(90)
def test_cancel_reaches_a_step_watching_its_token(start: Callable[..., Runtime],
                                                  tmp_path: Path) -> None:
    rt = start()
    mark = tmp_path / "running"
    rid = rt.submit(b"", headers={"app": "watch_token", "mark": str(mark)})
    _wait_for(mark)
    rt.cancel(rid, "test")
    out = rt.wait(rid, timeout=30)
    assert out.status.value == "cancelled", "a cancelled run must end cancelled"


@pytest.mark.timeout(90)
def test_step_ignoring_its_token_is_given_up_after_the_grace(start: Callable[..., Runtime],
                                                             tmp_path: Path, executor: str
                                                             ) -> None:
    rt = start(cancel_grace=0.3)
    mark = tmp_path / "running"
    rid = rt.submit(b"", headers={"app": "ignore_token", "mark": str(mark)})
    _wait_for(mark)
    t0 = time.monotonic()
    rt.cancel(rid, "test")
    out = rt.wait(rid, timeout=30)
    assert out.status.value == "cancelled"
    assert time.monotonic() - t0 < 20, "the grace period, not the 60 s sleep, must bound it"
    after = rt.submit(b"next", headers={"app": "echo"})
    assert rt.wait(after, timeout=60).status.value == "succeeded", \
        "the executor must keep serving runs after giving up on a step"
    if executor.startswith("dask://"):
        # An abandoned Dask task keeps its worker thread busy until it returns
        # (documented); restart the cluster's workers so later tests get them.
        from distributed import Client as DaskClient

        with DaskClient(executor[len("dask://"):], set_as_default=False) as dc:
            dc.restart()


@pytest.mark.timeout(120)
def test_worker_killed_mid_step_costs_one_attempt(start: Callable[..., Runtime]) -> None:
    rt = start()
    rid = rt.submit(b"", headers={"app": "exit_once"})
    out = rt.wait(rid, timeout=90)
    assert out.status.value == "succeeded", f"the retry must succeed: {out.error}"
    assert out.result == b"2", "the step's worker died on attempt 1, so it succeeds on 2"
    outcomes = [a.outcome for a in rt.history(rid)]
    assert outcomes == ["worker_died", "completed"], outcomes


@pytest.mark.timeout(150)
def test_supervisor_kill_and_restart_finishes_every_run_once(state_dir: Path,
                                                             executor: str) -> None:
    client = Client(state_dir)
    ids = client.submit_many([str(i).encode() for i in range(8)],
                             headers={"app": "chain"})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "journaled.cli", "run", "tests.apps.basic:runner",
           "--state", str(state_dir), "-w", "2", "--executor", executor, "--backoff", "0.01"]
    for delay in (1.5, 2.5):
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
    subprocess.run(cmd + ["--until-idle"], cwd=ROOT, env=env, check=True, timeout=120,
                   stderr=subprocess.DEVNULL)
    from journaled.records import Terminated
    from journaled.tools import records

    ends: dict[str, int] = {}
    for _seg, _off, rec in records(state_dir):
        if type(rec) is Terminated:
            ends[rec.run_id] = ends.get(rec.run_id, 0) + 1
    for rid in ids:
        assert ends.get(rid) == 1, f"run {rid} must finish exactly once, got {ends.get(rid)}"
        assert client.status(rid).status.value == "succeeded"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until a TCP connect to ``port`` succeeds (the scheduler is up), not a fixed sleep."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"the dask scheduler exited with {proc.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"the dask scheduler did not listen on {port} within {timeout} s")
            time.sleep(0.05)


@pytest.mark.timeout(150)
def test_lost_dask_scheduler_pauses_leasing_and_resumes_when_back(state_dir: Path) -> None:
    pytest.importorskip("distributed", reason="the 'dask' extra is not installed")
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}

    def scheduler() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", "from distributed.cli.dask_scheduler "
                                 "import main; main()", "--port", str(port), "--no-dashboard"],
                                **quiet)

    def worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", "from distributed.cli.dask_worker "
                                 "import main; main()", addr, "--nthreads", "1",
                                 "--no-dashboard"], **quiet)

    procs = [scheduler()]
    _wait_listening(port, procs[0])
    procs.append(worker())
    try:
        with Runtime(state_dir, basic.runner, executor="dask://127.0.0.1:" + str(port),
                     **{**FAST, "workers": 1}) as rt:
            first = rt.submit(b"a")
            assert rt.wait(first, 60).status.value == "succeeded"
            procs[0].kill()
            procs[0].wait()
            second = rt.submit(b"b")
            time.sleep(3)
            assert rt.status(second).status.value in ("pending", "running"), \
                "with the scheduler gone the run must wait, not fail"
            procs.append(scheduler())
            _wait_listening(port, procs[-1])
            procs.append(worker())  # the old worker gave up on the dead scheduler
            out = rt.wait(second, 90)
            assert out.status.value == "succeeded" and out.result == b"b", \
                "once the scheduler is back the run must finish"
            assert "worker_died" not in [a.outcome for a in rt.history(second)], \
                "losing the scheduler is not the step's failure"
    finally:
        for p in procs:
            p.kill()
            p.wait()
