"""``Runtime`` queries from caller threads never race the loop (issue 11 item 7;
REVIEW S2-8, §4 items 1 and 12)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from journaled.errors import JournaledError
from journaled.runtime import Runtime
from tests.e2e.helpers import wait_for

RUNS = 3000


@pytest.mark.timeout(180)
def test_runtime_status_during_compaction_never_misses_a_live_run(
        runtime: Callable[..., Runtime]) -> None:
    rt = runtime()
    sup = rt.supervisor
    ids = rt.submit_many([b""] * RUNS, {"app": "long_delay"})  # each parks for an hour
    last = ids[-1]
    wait_for(lambda: sup.status_counts()["waiting"] == RUNS, 120, "every run to park")
    errors: list[BaseException] = []
    reads = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                assert rt.status(last).status.value == "waiting"
                rt.history(last)
                if reads % 50 == 0:
                    assert len(rt.runs(limit=None)) == RUNS
                    assert sup.status_counts()["waiting"] == RUNS
                reads += 1
            except BaseException as e:  # noqa: BLE001 - collected for the assert below
                errors.append(e)
                return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(6):
            done = sup.compactions
            rt._await(sup.call("compact"))
            wait_for(lambda done=done: sup.compactions > done or errors, 60, "a compaction")
            if errors:
                break
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, f"a query raced the loop after {reads} reads: {errors[0]!r}"
    assert sup.compactions >= 6 and reads > 0


@pytest.mark.timeout(60)
def test_runtime_dead_returns_copies_not_live_runs(runtime: Callable[..., Runtime]) -> None:
    rt = runtime()
    rid = rt.submit(b"", headers={"app": "permanent"})
    rt.wait(rid, 30)
    (d,) = rt.dead()
    with rt.supervisor.state_lock:
        assert d is not rt.supervisor.state.runs[rid], "dead() must not hand out a live Run"


@pytest.mark.timeout(60)
def test_runtime_command_to_a_stuck_supervisor_times_out_instead_of_hanging(
        runtime: Callable[..., Runtime]) -> None:
    from journaled import failpoints

    rt = runtime(call_timeout=0.5)
    first = rt.submit(b"first")
    rt.wait(first, timeout=20)
    # Every sync now stalls for 5 s, as a dying disk (or S1-1's deadlock) would:
    # the loop thread cannot answer, so the caller must get its timeout.
    failpoints.configure("journal.before_sync=delay:5000")
    try:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            rt.submit(b"stuck")
        assert time.monotonic() - t0 < 4
    finally:
        failpoints.reset()


@pytest.mark.timeout(60)
def test_runtime_command_after_the_supervisor_thread_ended_raises_not_hangs(
        runtime: Callable[..., Runtime]) -> None:
    rt = runtime()
    rid = rt.submit(b"warm")
    rt.supervisor.request_stop()
    rt.supervisor.request_stop()  # stop now; Runtime.close() is never called
    wait_for(rt.supervisor.stopped.is_set, 20, "the supervisor to stop")
    t0 = time.monotonic()
    with pytest.raises(JournaledError):
        rt.submit(b"late")
    with pytest.raises(JournaledError):
        rt.cancel(rid)
    with pytest.raises(JournaledError):
        rt.signal(rid, "k")
    assert time.monotonic() - t0 < 10
