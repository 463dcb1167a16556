"""The Dask executor's fast path keeps its promises: nothing per step left on the scheduler,
cancel still reaches a running step, a worker killed mid-step costs one attempt and the
step's code runs once for it (Dask's own re-run is stopped by the rerun guard).

Structure only, never speed: ``benchmarks/dask_executor.py`` measures that.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from journaled.runtime import Runtime
from tests.apps import dask_shape
from tests.conftest import FAST


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    pytest.importorskip("distributed", reason="the 'dask' extra is not installed")
    from distributed import Client, LocalCluster

    lc = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=50)
    client = Client(lc.scheduler_address, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        lc.close()


def _scheduler_state(dask_scheduler: Any) -> dict[str, Any]:
    """What the scheduler holds that a journaled executor could have left behind."""
    ext = dask_scheduler.extensions

    def named(obj: Any) -> list[str]:
        return [str(k) for k in (obj or {}) if "journaled" in str(k)]

    return {
        "tasks": [str(k) for k in dask_scheduler.tasks if str(k).startswith("journaled-")],
        "events": named(getattr(ext.get("events"), "_events", None)),
        "variables": named(getattr(ext.get("variables"), "variables", None)),
        "queues": named(getattr(ext.get("queues"), "queues", None)),
        "metadata": named(dask_scheduler.task_metadata),
        "plugins": named(dask_scheduler.plugins),
    }


def _settled(client: Any, timeout: float = 30.0) -> dict[str, Any]:
    """The scheduler's state once released keys are forgotten (releases travel async)."""
    deadline = time.monotonic() + timeout
    while True:
        state = client.run_on_scheduler(_scheduler_state)
        if not state["tasks"] or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


def _runtime(state_dir: Path, client: Any, **kw: Any) -> Runtime:
    return Runtime(state_dir, dask_shape.runner,
                   executor="dask://" + client.scheduler.address, **{**FAST, **kw})


@pytest.mark.timeout(180)
def test_no_per_step_state_is_left_on_the_scheduler(state_dir: Path, cluster: Any) -> None:
    with _runtime(state_dir, cluster) as rt:
        for rid in rt.submit_many([b"x"] * 20):
            assert rt.wait(rid, 60).status.value == "succeeded"
        few = _settled(cluster)
        ids = rt.submit_many([str(i).encode() for i in range(300)])
        for rid in ids:
            assert rt.wait(rid, 120).status.value == "succeeded"
        many = _settled(cluster)
    assert many["tasks"] == [], f"tasks left on the scheduler after their results: {many}"
    for kind in ("events", "variables", "queues", "metadata"):
        assert many[kind] == [], f"per-step {kind} on the scheduler: {many[kind]}"
    assert many == few, "what the scheduler holds must not grow with the number of steps"
    assert many["plugins"] == ["journaled-rerun-guard"], \
        "one rerun guard per scheduler, whatever the number of steps or executors"


@pytest.mark.timeout(120)
def test_cancel_reaches_a_running_step_and_leaves_nothing(state_dir: Path, cluster: Any,
                                                          tmp_path: Path) -> None:
    mark = tmp_path / "running"
    # A long grace: the run can only end in time if the step saw its token itself.
    with _runtime(state_dir, cluster, cancel_grace=60.0) as rt:
        rid = rt.submit(b"", headers={"app": "watch", "mark": str(mark)})
        deadline = time.monotonic() + 30
        while not mark.exists():
            assert time.monotonic() < deadline, "the step never started"
            time.sleep(0.01)
        rt.cancel(rid, "test")
        out = rt.wait(rid, 30)
        assert out.status.value == "cancelled", \
            f"the token never reached the running step (no grace kill before 60 s): {out}"
        assert Path(str(mark) + ".saw").exists(), \
            "the step must have seen its token and answered Cancel itself, not been abandoned"
        after = rt.submit(b"next")
        assert rt.wait(after, 60).result == b"next"
    assert _settled(cluster)["tasks"] == []


@pytest.mark.timeout(180)
def test_worker_killed_mid_step_is_one_attempt_and_one_execution(state_dir: Path,
                                                                 cluster: Any,
                                                                 tmp_path: Path) -> None:
    log = tmp_path / "ran"
    with _runtime(state_dir, cluster) as rt:
        rid = rt.submit(b"", headers={"app": "exit_first", "log": str(log)})
        out = rt.wait(rid, 120)
        assert out.status.value == "succeeded", out.error
        assert out.result == b"2"
        assert [a.outcome for a in rt.history(rid)] == ["worker_died", "completed"]
        time.sleep(1.0)  # a Dask re-run of attempt 1, were there one, would have run by now
    runs = log.read_text().split()
    assert runs == ["1", "2"], \
        f"attempt 1 must run once (Dask's re-run after the worker died must not run it): {runs}"
    cluster.wait_for_workers(2, timeout=60)
    assert _settled(cluster)["tasks"] == []


@pytest.mark.timeout(240)
def test_payloads_and_a_long_chain_travel_whole(state_dir: Path, cluster: Any) -> None:
    """Payloads from 100 B to 8 MB (the limit) go out in the task and come back intact,
    and a 200-step chain keeps its order (each step's Dask task is a new key)."""
    sizes = [100, 4 << 10, 64 << 10, 1 << 20, 8 << 20]
    with _runtime(state_dir, cluster) as rt:
        blobs = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
        ids = [rt.submit(b) for b in blobs]
        for rid, b in zip(ids, blobs, strict=True):
            out = rt.wait(rid, 120)
            assert out.status.value == "succeeded", out.error
            assert out.result == b, f"a {len(b):,}-byte payload must come back whole"
        rid = rt.submit(b"0", headers={"app": "count", "to": "200"})
        out = rt.wait(rid, 180)
        assert out.status.value == "succeeded", out.error
        assert out.result == b"200", "every step of the chain ran once, in order"
    assert _settled(cluster)["tasks"] == []


@pytest.mark.timeout(180)
def test_a_cancel_that_beats_its_task_to_the_worker_stops_it_unstarted(
        state_dir: Path, cluster: Any, tmp_path: Path) -> None:
    """Two steps hold both Dask threads; two more wait behind them. Cancelled first, the
    waiting two must end cancelled without their code ever running (the notice was in
    the worker process before the task came)."""
    marks = [tmp_path / f"m{i}" for i in range(4)]
    with _runtime(state_dir, cluster, cancel_grace=60.0) as rt:
        ids = [rt.submit(b"", headers={"app": "watch", "mark": str(m)}) for m in marks]
        deadline = time.monotonic() + 30
        while sum(m.exists() for m in marks) < 2:
            assert time.monotonic() < deadline, "two steps never started"
            time.sleep(0.01)
        time.sleep(0.5)
        running = [rid for rid, m in zip(ids, marks, strict=True) if m.exists()]
        waiting = [rid for rid in ids if rid not in running]
        assert len(running) == 2, "only two Dask threads: two steps run, two wait"
        for rid in waiting:
            rt.cancel(rid, "test")
        time.sleep(0.5)
        for rid in running:
            rt.cancel(rid, "test")
        for rid in ids:
            assert rt.wait(rid, 30).status.value == "cancelled"
        time.sleep(0.5)
    ran = [m.name for m, rid in zip(marks, ids, strict=True) if rid in waiting and m.exists()]
    assert ran == [], f"cancelled before they started, these steps still ran: {ran}"
    assert all(Path(str(m) + ".saw").exists() for m, rid in zip(marks, ids, strict=True)
               if rid in running), "the running two saw their tokens"
    assert _settled(cluster)["tasks"] == []
