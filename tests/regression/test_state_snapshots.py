"""Regression tests (issue 11, items 3, 4, 17): snapshots, compaction and ready order.

Real worker processes and a real journal; the supervisor is compacted on
request and restarted from its BASE segment. Runners: ``tests.apps.state_apps``.
"""

from __future__ import annotations

import json
import logging
import time

import pytest

from journaled import RunStatus
from journaled.records import Leased, Snapshot, StepDone, Terminated
from tests.apps import state_apps
from tests.e2e.helpers import journal_records, wait_for


def _compact(rt) -> None:
    sup = rt.supervisor
    done, failed = sup.compactions, getattr(sup, "compaction_failures", 0)
    sup.call("compact").result(timeout=30)
    wait_for(lambda: sup.compactions > done or getattr(sup, "compaction_failures", 0) > failed
             or sup.stopped.is_set(), 60, "the compaction to finish")


def _other_work(rt) -> None:
    for _ in range(3):
        out = rt.wait(rt.submit(b"", headers={"app": "echo"}), timeout=30)
        assert out.status is RunStatus.SUCCEEDED
    time.sleep(0.2)


@pytest.mark.timeout(90)
def test_snapshot_fold_keeps_signal_wait_without_timeout_asleep_across_restart(runtime,
                                                                             state_dir):
    rt = runtime(state_apps.runner, workers=1)
    rid = rt.submit(b"", headers={"app": "approval"}, run_id="approve-me")
    wait_for(lambda: rt.status(rid).status is RunStatus.WAITING, 20, "the run to park")
    _compact(rt)
    assert rt.supervisor.compactions == 1, "the compaction must succeed"
    _other_work(rt)  # leasing anything pops due timers
    assert rt.status(rid).status is RunStatus.WAITING, \
        "after a compaction the run must still wait for its signal (no timer, no false wake)"
    rt.close()
    rt = runtime(state_apps.runner, workers=1)  # restart from the BASE segment
    _other_work(rt)
    assert rt.status(rid).status is RunStatus.WAITING, \
        "after a restart from a snapshot the run must still wait for its signal"
    rt.signal(rid, "go", b"yes")
    out = rt.wait(rid, timeout=30)
    rt.close()
    assert out.status is RunStatus.SUCCEEDED, out
    assert json.loads(out.result) == {"key": "go", "data": "yes", "timed_out": False}, \
        "the step after the wait sees the real signal, not a timeout"
    steps = [r for r in journal_records(state_dir) if isinstance(r, Leased) and r.step == 1]
    assert len(steps) == 1, "step 1 ran once, after the signal"


@pytest.mark.timeout(180)
def test_compaction_of_runs_with_1mib_inputs_does_not_crash(runtime, state_dir):
    # 34 live runs holding 1 MiB input + 1 MiB payload: the old snapshot put them in one
    # part of ~68 MiB, over the frame limit; compaction raised and the supervisor died.
    n = 34
    # Inline (a blob threshold above 1 MiB): this is about snapshot parts holding big
    # values; below the threshold they would be blobs and the snapshot tiny.
    inline = 2 << 20
    rt = runtime(state_apps.runner, workers=2, blob_threshold=inline)
    rt.supervisor.compact_bytes = 1 << 40  # only the requested compaction (16 MiB default)
    # One step at a time per worker: this test is about compaction, not about the
    # pipe deadlock big batches can cause (issue 11 item 1, fixed in the pool).
    rt.supervisor.pool.depth = lambda w: 1
    big = b"x" * (1 << 20)
    rids = rt.submit_many([big] * n, headers={"app": "hold"},
                          run_ids=[f"big-{i}" for i in range(n)])
    wait_for(lambda: all(rt.status(r).status is RunStatus.WAITING for r in rids), 90,
             "every run to hold its payload")
    _compact(rt)
    sup = rt.supervisor
    assert sup.compactions == 1 and sup.compaction_failures == 0, "compaction must succeed"
    assert not sup.stopped.is_set(), "the supervisor keeps serving"
    out = rt.wait(rt.submit(b"still here", headers={"app": "echo"}), timeout=30)
    assert out.status is RunStatus.SUCCEEDED and out.result == b"still here"
    rt.close()
    parts = [r for r in journal_records(state_dir) if isinstance(r, Snapshot)]
    assert len(parts) > 1, "the snapshot is cut into several parts by bytes"
    rt = runtime(state_apps.runner, workers=1, blob_threshold=inline)
    assert all(rt.status(r).status is RunStatus.WAITING for r in rids), \
        "every big run survives the compaction and a restart"
    assert rt.supervisor.state.runs["big-0"].payload == big
    rt.close()


@pytest.mark.timeout(90)
def test_failed_compaction_keeps_old_journal_and_serves(runtime, state_dir):
    rt = runtime(state_apps.runner, workers=1)
    first = rt.wait(rt.submit(b"before", headers={"app": "echo"}), timeout=30)
    sup = rt.supervisor
    segments = sorted(p.name for p in (state_dir / "journal").iterdir())

    def too_big(bodies):
        raise ValueError("record body must be 1 to 67108864 bytes")

    sup.journal.compact = too_big  # the journal's own error for an oversized body
    # A handler of our own on journaled's logger: what earlier tests did to the
    # root logger's handlers (a CLI run's basicConfig) cannot hide the line.
    seen: list[logging.LogRecord] = []
    catch = logging.Handler(logging.ERROR)
    catch.emit = seen.append  # type: ignore[method-assign]
    logging.getLogger("journaled").addHandler(catch)
    try:
        _compact(rt)
    finally:
        logging.getLogger("journaled").removeHandler(catch)
    assert sup.compaction_failures == 1 and sup.compactions == 0
    msgs = [r.getMessage() for r in seen if "compaction failed" in r.getMessage()]
    assert msgs and "record body must be" in msgs[0], f"logged with its cause: {msgs}"
    assert sorted(p.name for p in (state_dir / "journal").iterdir()) == segments, \
        "the old journal stays in place"
    out = rt.wait(rt.submit(b"after", headers={"app": "echo"}), timeout=30)
    assert out.status is RunStatus.SUCCEEDED and not sup.stopped.is_set(), \
        "the supervisor keeps serving after a failed compaction"
    rt.close()
    rt = runtime(state_apps.runner, workers=1)
    assert rt.status(first.run_id).result == b"before" and rt.status(out.run_id).result == b"after"
    rt.close()


@pytest.mark.timeout(120)
def test_started_runs_finish_before_new_runs_start(runtime, state_dir):
    # 40 runs x 3 steps, 1 worker: the old ready queue served breadth-first, so the
    # first run finished only after every run's step 0 had started.
    rt = runtime(state_apps.runner, workers=1)
    rids = rt.submit_many([b""] * 40, headers={"app": "three_steps"},
                          run_ids=[f"r{i:02}" for i in range(40)])
    for rid in rids:
        assert rt.wait(rid, timeout=100).status is RunStatus.SUCCEEDED
    rt.close()
    recs = journal_records(state_dir)

    def index(pred) -> int:
        return next(i for i, r in enumerate(recs) if pred(r))

    first_done = index(lambda r: isinstance(r, Terminated) and r.run_id == "r00")
    last_start = index(lambda r: isinstance(r, Leased) and r.run_id == "r39" and r.step == 0)
    assert first_done < last_start, "the first run must finish before the last one starts"
    half = [r.run_id for r in recs if isinstance(r, StepDone) and r.step == 0]
    assert half[:3] == ["r00", "r01", "r02"], "runs still start in submission order"
