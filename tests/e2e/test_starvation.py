"""No prefetch starvation (celery #6500): a long step never holds queued steps hostage."""

from __future__ import annotations

import pytest

from benchmarks import apps


@pytest.mark.timeout(120)
def test_steps_queued_behind_a_long_step_move_to_an_idle_worker(runtime) -> None:
    rt = runtime(apps.cpu_step)
    for rid in rt.submit_many([b"1"] * 40):  # teach the pool that steps are tiny: deep batches
        rt.wait(rid, 60)
    long_id, *short = rt.submit_many([b"1500"] + [b"20"] * 10)
    for rid in short:
        rt.wait(rid, 60)
    assert rt.status(long_id).status.value == "running", \
        "every short step must finish while the long one still runs, not wait behind it"
    workers = {a.worker for rid in short for a in rt.history(rid) if a.outcome == "completed"}
    long_worker = rt.history(long_id)[-1].worker
    assert workers - {long_worker}, "the short steps must have run on the idle worker"
    assert rt.wait(long_id, 60).status.value == "succeeded"
    for rid in short:
        assert [a.attempt for a in rt.history(rid)] == [1], \
            "a step taken back before it started is not a delivery: attempts stay at 1"
