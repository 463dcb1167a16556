"""The pure fan-out rules (``journaled.fanout``) and the worker's ``Spawn`` encoding.

Child ids, the one ``Spawned`` record, its fold (children created, the
parent parked and counted down), snapshots, the fan-in outcomes (live,
archived, gone), cancel cascades and the orphans a torn cancel leaves,
and what the worker sends for a ``Spawn`` (blobs for big inputs, a
permanent error for a malformed one).
"""

from __future__ import annotations

import pytest

from journaled import Spawn
from journaled.api import Children, RunStatus
from journaled.blobs import BlobRef, BlobStore
from journaled.fanout import (
    MAX_CHILDREN,
    child_id,
    child_ids,
    fans_in,
    orphans,
    outcomes,
)
from journaled.inbox import check_run_id
from journaled.pool import to_result
from journaled.pool.spawn import MAX_SPAWN_INLINE
from journaled.records import CancelRequested, Spawned, Terminated, decode, encode
from journaled.state import CANCELLED, FAILED, RUNNING, SUCCEEDED, WAITING, State, WorkerResult

T = 1000.0


def _parent(n: int = 3, headers: dict | None = None) -> tuple[State, list]:
    """A parent that spawned ``n`` children, and every record that took (the last: Spawned)."""
    st = State()
    recs = st.submit("p", b"in", T, headers={"team": "a"}, priority=2, max_attempts=5)
    (run,) = st.due_runs(T, 1)
    lease = st.lease(run, 0, T)
    recs += [lease] + st.complete("p", lease.attempt, WorkerResult(
        "spawn", b"then", children=[f"c{i}".encode() for i in range(n)],
        child_headers=headers), T + 1)
    return st, recs


def _finish(st: State, rid: str, result: bytes = b"r", kind: str = "succeed") -> list:
    run = st.runs[rid]
    if not run.leased:
        st._ready.append((0, 0, run.seq, rid))  # noqa: SLF001 - lease it directly
        lease = st.lease(run, 1, T + 2)
    else:
        lease = run
    return st.complete(rid, lease.attempt, WorkerResult(kind, result, error="no"), T + 3)


@pytest.mark.timeout(10)
def test_child_ids_are_derived_valid_and_stable():
    assert child_id("p", 0, 3) == "p:s0.3" and child_ids("p", 2, 2) == ["p:s2.0", "p:s2.1"]
    long = "x" * 128
    ids = child_ids(long, 7, 100_000)
    assert ids == child_ids(long, 7, 100_000), "the same parent always names the same children"
    assert len(set(ids)) == len(ids)
    for cid in (ids[0], ids[-1], child_id(ids[-1], 99, 99_999)):
        assert check_run_id(cid) == cid and len(cid) <= 128, cid


@pytest.mark.timeout(10)
def test_one_spawned_record_creates_children_that_inherit_and_parks_the_parent():
    st, recs = _parent(3)
    assert [type(r) for r in recs[2:]] == [Spawned] and recs[2].children == [b"c0", b"c1", b"c2"]
    assert decode(encode(recs[2])) == recs[2], "the record survives the disk format"
    p = st.runs["p"]
    assert (p.status, p.step, p.payload, p.pending, p.spawned) == (WAITING, 1, b"then", 3, 3)
    c = st.runs["p:s0.1"]
    assert (c.parent, c.input, c.headers, c.priority, c.max_attempts) == \
        ("p", b"c1", {"team": "a"}, 2, 5), "children inherit headers, priority and retries"
    due = st.due_runs(T + 10, 10)
    assert "p" not in [r.run_id for r in due], "a parked parent is not leasable"
    assert sorted(r.run_id for r in due) == ["p:s0.0", "p:s0.1", "p:s0.2"]
    st.requeue(due)
    st2, _ = _parent(1, headers={"role": "kid"})
    assert st2.runs["p:s0.0"].headers == {"role": "kid"}, "Spawn.headers replaces the parent's"


@pytest.mark.timeout(10)
def test_the_last_child_to_end_wakes_the_parent_with_every_outcome_in_order():
    st, _ = _parent(3)
    _finish(st, "p:s0.2", b"two")
    _finish(st, "p:s0.0", kind="fail")
    assert st.runs["p"].pending == 1 and st.runs["p"].status == WAITING
    _finish(st, "p:s0.1", b"one")
    p = st.runs["p"]
    assert (p.pending, p.status) == (0, RUNNING) and fans_in(p)
    assert [r.run_id for r in st.due_runs(T + 10, 10)] == ["p"]
    got = outcomes(st, p)
    assert [(o[0], o[1], o[2]) for o in got] == [
        ("p:s0.0", FAILED, None), ("p:s0.1", SUCCEEDED, b"one"), ("p:s0.2", SUCCEEDED, b"two")]


@pytest.mark.timeout(10)
def test_a_snapshot_keeps_the_parked_parent_and_its_count():
    st, recs = _parent(4)
    _finish(st, "p:s0.0")
    snap = st.snapshot(T + 5)
    again = State()
    for part in snap:
        again.apply(decode(encode(part)))
    p = again.runs["p"]
    assert (p.pending, p.spawned, p.spawn_step, p.status) == (3, 4, 0, WAITING)
    assert "p" not in [r.run_id for r in again.due_runs(T + 1e6, 100)], \
        "a parked parent gets no timer from a snapshot"
    for i in (1, 2, 3):
        _finish(again, f"p:s0.{i}")
    assert again.runs["p"].status == RUNNING and [r.run_id for r in
                                                  again.due_runs(T + 10, 10)] == ["p"]


@pytest.mark.timeout(10)
def test_fan_in_reads_archived_children_through_the_lookup_and_reports_lost_ones():
    st, _ = _parent(3)
    for i in range(3):
        _finish(st, f"p:s0.{i}", str(i).encode())
    st.archived([("p:s0.0", st.runs["p:s0.0"].finished_at),
                 ("p:s0.2", st.runs["p:s0.2"].finished_at)], T + 4)
    asked = []

    def lookup(ids):
        asked.append(ids)
        return {"p:s0.0": ["p:s0.0", SUCCEEDED, b"0", None]}

    got = outcomes(st, st.runs["p"], lookup)
    assert asked == [["p:s0.0", "p:s0.2"]], "one lookup for every archived child"
    assert got[0][2] == b"0" and got[1][2] == b"1"
    assert got[2][1] == FAILED and "no longer kept" in got[2][3]


@pytest.mark.timeout(10)
def test_cancelling_a_parent_cancels_its_live_children_and_grandchildren():
    st, _ = _parent(2)
    (kid,) = [r for r in st.due_runs(T + 2, 10) if r.run_id == "p:s0.0"]
    lease = st.lease(kid, 1, T + 2)
    st.complete("p:s0.0", lease.attempt, WorkerResult("spawn", b"", children=[b"g"]), T + 3)
    recs = st.cancel("p", "stop", T + 4)
    cancels = [r.run_id for r in recs if type(r) is CancelRequested]
    assert cancels[0] == "p" and set(cancels) == {"p", "p:s0.0", "p:s0.1", "p:s0.0:s0.0"}
    assert all(st.runs[r].status == CANCELLED for r in cancels)


@pytest.mark.timeout(10)
def test_a_cancel_torn_after_the_parents_record_is_finished_at_recovery():
    st, recs = _parent(3)
    journal = recs + st.cancel("p", "stop", T + 4)
    torn = journal[:4]  # up to the Spawned and the parent's CancelRequested only
    again = State()
    again.apply_all(torn)
    assert again.runs["p"].cancel_reason == "stop" and not again.runs["p:s0.1"].cancel_reason
    out = again.recover(T + 10)
    assert {r.run_id for r in out if type(r) is CancelRequested} == {
        "p:s0.0", "p:s0.1", "p:s0.2"}, "recovery cancels the orphans"
    assert all(again.runs[f"p:s0.{i}"].status == CANCELLED for i in range(3))
    assert again.runs["p"].status == CANCELLED
    assert orphans(again, T + 11) == [], "nothing is left to cancel"


@pytest.mark.timeout(10)
def test_refused_spawns_dead_letter_the_step():
    st = State()
    st.submit("p", b"", T)
    st.submit("p:s0.1", b"mine", T)
    for run in st.due_runs(T, 10):
        if run.run_id == "p":
            lease = st.lease(run, 0, T)
    (rec,) = st.complete("p", lease.attempt, WorkerResult("spawn", b"", children=[b"a", b"b"]),
                         T)
    assert type(rec) is Terminated and rec.dead and "already taken" in rec.error
    st = State()
    st.submit("q", b"", T)
    (run,) = st.due_runs(T, 1)
    lease = st.lease(run, 0, T)
    (rec,) = st.complete("q", lease.attempt, WorkerResult(
        "spawn", b"", children=[b""] * (MAX_CHILDREN + 1)), T)
    assert type(rec) is Terminated and rec.dead and "over the limit" in rec.error


@pytest.mark.timeout(10)
def test_the_worker_encodes_spawn_big_inputs_as_blobs_and_refuses_bad_ones(tmp_path):
    store = BlobStore(tmp_path, threshold=1024)
    res = to_result(Spawn([b"small", b"B" * 5000], then=b"t", headers={"k": "v"}), store)
    assert res.kind == "spawn" and res.data == b"t" and res.child_headers == {"k": "v"}
    assert res.children[0] == b"small" and isinstance(res.children[1], BlobRef)
    assert store.read(res.children[1]) == b"B" * 5000
    for bad in (Spawn(["text"]), Spawn(b"xy"), Spawn([b""], then="s"),  # type: ignore[list-item]
                Spawn([b""], headers={"k": 1})):  # type: ignore[dict-item]
        out = to_result(bad, store)
        assert out.kind == "error" and out.permanent and "Spawn." in out.error, out
    big = to_result(Spawn([b"x" * 1000] * (MAX_SPAWN_INLINE // 1000 + 1)))
    assert big.kind == "error" and big.permanent and "inline" in big.error


@pytest.mark.timeout(10)
def test_step_children_read_blob_results_lazily(tmp_path):
    store = BlobStore(tmp_path, threshold=16)
    ref = store.put(b"R" * 100)
    kids = Children([("a", "succeeded", ref, None), ("b", "failed", None, "no")], store)
    assert len(kids) == 2 and kids.statuses() == ["succeeded", "failed"]
    assert kids[0].result == b"R" * 100 and kids[0].status is RunStatus.SUCCEEDED
    assert [k.run_id for k in kids] == ["a", "b"] and kids[1].error == "no"
    assert [k.run_id for k in kids[1:]] == ["b"]


@pytest.mark.timeout(10)
def test_a_parent_waiting_on_children_that_wait_for_a_signal_is_idle():
    st, _ = _parent(1)
    assert not st.idle(), "a ready child keeps the state busy"
    (kid,) = st.due_runs(T + 2, 10)
    lease = st.lease(kid, 1, T + 2)
    st.complete(kid.run_id, lease.attempt, WorkerResult("continue", b"", key="go"), T + 3)
    assert st.idle(), "only outside input can move it now (--until-idle may exit)"
    st.signal(kid.run_id, "go", b"", T + 4)
    assert not st.idle()
