"""Pool regressions about tokens, environment, shutdown notice, deaths and sizes.

Issue 11 items 8 (queued cancel), 10 (stale environment), 15 (shutdown
notice), 18 (death messages) and the size limits inside the worker.
"""

from __future__ import annotations

import json
import os
import threading
import time
from multiprocessing.connection import wait as mp_wait

import pytest

from journaled.client import Client
from journaled.limits import MAX_VALUE
from journaled.pool import Dispatch, Pool
from journaled.runtime import Runtime
from tests.apps import pool_apps
from tests.conftest import FAST
from tests.e2e.helpers import wait_for


@pytest.mark.timeout(60)
def test_cancel_of_a_queued_step_leaves_the_running_steps_token_set(runtime, tmp_path):
    """S2-9: cancelling B (queued) wrote B's seq over A's in the slot: A's token went false."""
    rt = runtime(pool_apps.runner, workers=1, cancel_grace=30.0)
    # Tiny steps first, so the worker's batch depth grows past 1.
    for rid in rt.submit_many([b"warm"] * 40):
        rt.wait(rid, timeout=20)
    mark, go, seen = tmp_path / "a-running", tmp_path / "go", tmp_path / "seen"
    a, b = rt.submit_many([b"a", b"b"], headers={"app": "cooperative", "mark": str(mark),
                                                  "go": str(go), "seen": str(seen)})
    wait_for(mark.exists, timeout=20, what="step A to start")
    w = rt.supervisor.pool.workers[0]
    assert [i.run_id for i in list(w.outstanding)] == [a, b], "B must be queued behind A"
    rt.cancel(a)
    rt.cancel(b)
    go.write_text("go")
    wait_for(seen.exists, timeout=20, what="step A to look at its token")
    assert seen.read_text() == "set", "a queued cancel must not clear the running step's token"
    # Well inside the 30 s grace: A ended by its own Cancel, not by a kill.
    assert rt.wait(a, timeout=10).status.value == "cancelled"
    assert rt.wait(b, timeout=10).status.value == "cancelled"
    assert len(rt.history(a)) == 1 and w.proc is not None and w.kill_reason == ""


@pytest.mark.timeout(60)
def test_second_runtime_in_one_process_gives_workers_its_own_state_and_environment(
        tmp_path, monkeypatch):
    """S2-12: the forkserver's environment was the first Runtime's, for every later one."""
    seen = []
    for n in (1, 2):
        monkeypatch.setenv("POOL_TEST_VAR", f"value-{n}")
        state = tmp_path / f"state{n}"
        with Runtime(state, pool_apps.runner, **FAST) as rt:
            rid = rt.submit(b"", headers={"app": "env"})
            seen.append(json.loads(rt.wait(rid, timeout=30).result))
        assert seen[-1] == {"state": str(state.resolve()), "var": f"value-{n}"}, seen
    assert "JOURNALED_STATE" not in os.environ or os.environ["JOURNALED_STATE"] not in (
        str((tmp_path / "state1").resolve()), str((tmp_path / "state2").resolve())), \
        "the supervisor must not change the host's environment"


@pytest.mark.timeout(60)
def test_cancel_token_stopping_becomes_true_during_a_drain(tmp_path):
    """Item 15: a cooperative step got no shutdown notice to checkpoint on."""
    state, mark = tmp_path / "state", tmp_path / "running"
    rt = Runtime(state, pool_apps.runner, **{**FAST, "drain_timeout": 20.0})
    rt.start()
    try:
        rid = rt.submit(b"", headers={"app": "sleep", "seconds": "15", "until": "stopping",
                                      "mark": str(mark)})
        wait_for(mark.exists, timeout=20, what="the step to start")
    finally:
        t0 = time.monotonic()
        rt.close(drain=True)
    assert time.monotonic() - t0 < 10, "the step should have stopped at the notice"
    out = Client(state).status(rid)
    assert (out.status.value, out.result) == ("succeeded", b"saw stopping"), out


@pytest.mark.timeout(60)
def test_worker_killed_by_sigsegv_is_named_with_its_faulthandler_output(tmp_path):
    """Item 18: a death said 'exit code -11', and the worker's faulthandler output was lost."""
    state = tmp_path / "state"
    pool = Pool(pool_apps.runner, 1, state_dir=state)
    try:
        pool.start()
        w = pool.workers[0]
        pool.send(w, [Dispatch(pool.next_seq(), "r1", 0, 1, b"", {"app": "segv"})],
                  time.monotonic())
        sentinels = [k for k, (what, _) in pool.wait_objects().items() if what == "sentinel"]
        assert mp_wait(sentinels, timeout=30), "the worker should have died"
        code = pool.reap(w)
        msg = pool.death_reason(w, code)
    finally:
        pool.close()
    assert msg.startswith("worker 0 (pid ") and "was killed by SIGSEGV" in msg, msg
    assert "Segmentation fault" in msg, msg


@pytest.mark.timeout(60)
def test_payload_over_the_value_limit_is_a_permanent_error_naming_the_sizes(runtime):
    """Item 4/8: an oversized payload must never reach the journal (kept inline by a
    blob threshold above the limit; below it, it would become a blob)."""
    rt = runtime(pool_apps.runner, blob_threshold=2 * MAX_VALUE)
    rid = rt.submit(b"", headers={"app": "big", "size": str(MAX_VALUE + 1)})
    out = rt.wait(rid, timeout=30)
    assert out.status.value == "failed", out
    assert f"{MAX_VALUE + 1:,}" in (out.error or "") and f"{MAX_VALUE:,}" in out.error, out
    assert len(rt.history(rid)) == 1, "a permanent error is not retried"


@pytest.mark.timeout(60)
def test_memo_put_over_the_value_limit_raises_in_the_step(runtime):
    rt = runtime(pool_apps.runner, blob_threshold=2 * MAX_VALUE)
    rid = rt.submit(b"", headers={"app": "bigmemo", "size": str(MAX_VALUE + 1)})
    out = rt.wait(rid, timeout=30)
    assert out.status.value == "failed", out
    assert f"{MAX_VALUE + 1:,} bytes" in (out.error or "") and f"{MAX_VALUE:,}" in out.error, out
    assert len(rt.history(rid)) == 1, "a memo over the limit is a permanent error"


@pytest.mark.timeout(60)
def test_runtime_used_from_a_non_main_thread_still_spares_workers_from_sigterm(tmp_path):
    """The SIGTERM immunity must not depend on signal.signal (main thread only)."""
    state, mark = tmp_path / "state", tmp_path / "running"
    box: dict[str, object] = {}

    def body() -> None:
        rt = Runtime(state, pool_apps.runner, **{**FAST, "workers": 1})
        rt.start()
        box["rt"] = rt

    t = threading.Thread(target=body)
    t.start()
    t.join()
    rt = box["rt"]
    assert isinstance(rt, Runtime)
    try:
        rid = rt.submit(b"", headers={"app": "sleep", "seconds": "1.5", "mark": str(mark)})
        wait_for(mark.exists, timeout=20, what="the step to start")
        os.kill(int(mark.read_text()), 15)
        assert rt.wait(rid, timeout=20).result == b"no notice"
        assert [a.outcome for a in rt.history(rid)] == ["completed"]
    finally:
        rt.close(drain=False)


def _echo(x: int) -> int:
    return x


@pytest.mark.timeout(60)
def test_other_forkserver_children_still_die_of_sigterm_after_a_runtime_started(runtime):
    """The forkserver's SIGTERM immunity must not leak into other code's processes:
    ``multiprocessing.Pool.terminate()`` (SIGTERM to its workers) hung when it did."""
    import multiprocessing

    rt = runtime(pool_apps.runner, workers=1)
    rt.wait(rt.submit(b"x"), timeout=20)
    with multiprocessing.get_context("forkserver").Pool(1) as mp:
        assert mp.map(_echo, [1, 2]) == [1, 2]
    # Leaving the block terminated the pool's worker; reaching here is the test.
