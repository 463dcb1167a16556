"""Issue 13 / DESIGN §4: the sync does not stall the loop, and nothing acts before its sync.

The supervisor writes each turn and a flusher thread fdatasyncs it; the loop
folds and writes the next turns meanwhile. ``journal.before_sync=delay:MS``
holds every sync open for MS milliseconds, so these tests can look inside
the window between a turn's write and its sync:

- (a) turn N+1 is written while sync N is still held;
- (b) no Future, dispatch, inbox ack or hook for a turn before its sync
  returned (judged by the published synced mark, read after the act was seen);
- (c) under load one fdatasync covers many turns;
- (d) a failed sync on the flusher thread stops the supervisor with nothing
  acknowledged and its workers killed.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from journaled import Client, Runtime, failpoints
from journaled.errors import JournaledError, StorageFailure
from journaled.journal import FrameReader, list_segments, read_mark
from journaled.records import Leased, Submitted, Terminated, decode
from tests.apps import basic
from tests.e2e.helpers import pid_alive, wait_for


@pytest.fixture(autouse=True)
def _reset_failpoints():
    failpoints.reset()
    yield
    failpoints.reset()


def record_end(state: Path, match: Callable[[Any], bool]) -> tuple[int, int] | None:
    """(segment number, end offset) of the first record ``match`` accepts, in the file now."""
    for seg in list_segments(state / "journal"):
        data = seg.read_bytes()
        reader = FrameReader(data, seg.name)
        try:
            for off, body in reader:
                if match(decode(body)):
                    return int(seg.stem), off + 8 + len(body)
        except Exception:  # noqa: BLE001 - a frame being written right now: not there yet
            continue
    return None


def durable(state: Path, pos: tuple[int, int]) -> bool:
    """The synced mark covers the record ending at ``pos``: its sync returned."""
    mark = read_mark(state / "journal")
    return mark is not None and (mark.segment, mark.offset) >= pos


def submitted(rid: str) -> Callable[[Any], bool]:
    return lambda r: type(r) is Submitted and r.run_id == rid


def leased(rid: str) -> Callable[[Any], bool]:
    return lambda r: type(r) is Leased and r.run_id == rid


def terminated(rid: str) -> Callable[[Any], bool]:
    return lambda r: type(r) is Terminated and r.run_id == rid


def inbox_files(state: Path) -> list[str]:
    return [n for n in os.listdir(state / "inbox") if not n.startswith(".") and n != "rejected"]


class Submitter(threading.Thread):
    """``rt.submit`` on its own thread; notes whether its record was durable when it returned."""

    def __init__(self, rt: Runtime, state: Path, rid: str, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.rt, self.state, self.rid, self.headers = rt, state, rid, headers
        self.returned_durable: bool | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.rt.submit(b"x", self.headers, run_id=self.rid)
        except BaseException as e:  # noqa: BLE001 - the test reads it
            self.error = e
            return
        pos = record_end(self.state, submitted(self.rid))
        self.returned_durable = pos is not None and durable(self.state, pos)


@pytest.mark.timeout(120)
def test_turn_n_plus_1_is_written_while_sync_n_is_still_running(tmp_path):
    state = tmp_path / "state"
    failpoints.configure("journal.before_sync=delay:1500")
    with Runtime(state, basic.runner, workers=1) as rt:
        mark_a = tmp_path / "a.mark"
        a = Submitter(rt, state, "a", {"app": "sleep", "seconds": "0", "mark": str(mark_a)})
        a.start()
        pos_a = wait_for(lambda: record_end(state, submitted("a")), 30, "run a to be written")
        assert not durable(state, pos_a), "a's sync is held for 1.5 s"
        b = Submitter(rt, state, "b", {})
        b.start()
        # (a) The loop took b's command, folded it and wrote its turn while a's
        # fdatasync is still held by the failpoint.
        pos_b = wait_for(lambda: record_end(state, submitted("b")), 30, "run b to be written")
        a_synced = durable(state, pos_a)
        assert pos_b > pos_a
        assert not a_synced, "turn N+1 must be written before sync N returns, not after"
        assert a.is_alive() and not mark_a.exists(), "nothing of turn N acted before its sync"
        a.join(30)
        b.join(30)
        assert a.returned_durable and b.returned_durable
        assert rt.wait("a", 30).status.value == "succeeded"
        assert rt.wait("b", 30).status.value == "succeeded"
        assert mark_a.exists()


@pytest.mark.timeout(180)
def test_no_future_dispatch_inbox_ack_or_hook_before_its_sync_returns(tmp_path):
    state = tmp_path / "state"
    hooks: list[tuple[str, bool]] = []

    def on_terminal(outcome: Any) -> None:
        pos = record_end(state, terminated(outcome.run_id))
        hooks.append((outcome.run_id, pos is not None and durable(state, pos)))

    failpoints.configure("journal.before_sync=delay:300")
    with Runtime(state, basic.runner, workers=2, on_terminal=on_terminal) as rt:
        marks = {f"r{i}": tmp_path / f"r{i}.mark" for i in range(4)}
        subs = [Submitter(rt, state, rid, {"app": "sleep", "seconds": "0", "mark": str(m)})
                for rid, m in marks.items()]
        for s in subs:
            s.start()
        client = Client(state)
        # One file for the three: when it is gone, all three must be durable.
        inbox_ids = client.submit_many([b"via the inbox"] * 3)
        inbox_left = set(inbox_files(state))
        seen_marks: set[str] = set()
        acked_early: list[str] = []
        dispatched_early: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for rid, m in marks.items():
                if rid not in seen_marks and m.exists():
                    # The step reached a worker: its Leased record must be durable
                    # now (the mark is read after the step was seen running).
                    seen_marks.add(rid)
                    pos = record_end(state, leased(rid))
                    if pos is None or not durable(state, pos):
                        dispatched_early.append(rid)
            gone = inbox_left - set(inbox_files(state))
            if gone:
                inbox_left -= gone
                for rid in inbox_ids:
                    pos = record_end(state, submitted(rid))
                    if pos is None or not durable(state, pos):
                        acked_early.append(rid)
            if len(seen_marks) == len(marks) and not inbox_left and len(hooks) >= 7:
                break
            time.sleep(0.002)
        for s in subs:
            s.join(30)
        assert not dispatched_early, f"steps reached a worker before their lease was durable: " \
                                     f"{dispatched_early}"
        assert not acked_early, f"inbox files acked before their runs were durable: {acked_early}"
        assert all(s.error is None and s.returned_durable for s in subs), \
            "a submit returned before its Submitted record was durable"
        wait_for(lambda: len(hooks) >= 7, 60, "every hook")
        assert all(ok for _rid, ok in hooks), f"a hook fired before its run's end was durable: " \
                                              f"{hooks}"
        assert len(seen_marks) == 4 and not inbox_left


@pytest.mark.timeout(180)
def test_many_turns_share_one_fdatasync_under_load(tmp_path):
    state = tmp_path / "state"
    failpoints.configure("journal.before_sync=delay:40")
    with Runtime(state, basic.runner, workers=2) as rt:
        sup = rt.supervisor
        j = sup.journal
        turns0, syncs0 = j.written, j.syncs
        # A steady stream of submissions, one command each, that does not wait
        # for its answer: the loop turns (and writes) for each as it comes.
        futures = []
        for i in range(200):
            futures.append(sup.call("submit_many", [(f"r{i}", b"load", {}, 0, 0, 0.0)]))
            time.sleep(0.001)
        for fut in futures:
            fut.result(60)
        for i in range(200):
            assert rt.wait(f"r{i}", 60).status.value == "succeeded"
        turns, syncs = j.written - turns0, j.syncs - syncs0
    # One sync per written turn would be the loop waiting on every sync; a held
    # sync lets every turn written meanwhile ride on the next one.
    assert syncs * 3 <= turns, f"{syncs} fdatasyncs for {turns} written turns"


@pytest.mark.timeout(120)
def test_a_failed_sync_on_the_flusher_stops_the_supervisor_with_nothing_acknowledged(tmp_path):
    state = tmp_path / "state"
    hooks: list[str] = []
    rt = Runtime(state, basic.runner, workers=2, on_terminal=lambda o: hooks.append(o.run_id))
    rt.start()
    try:
        for i in range(3):
            assert rt.wait(rt.submit(b"fine", run_id=f"ok{i}"), 30).status.value == "succeeded"
        wait_for(lambda: len(hooks) == 3, 30, "the first hooks")
        sup = rt.supervisor
        pids = [w.pid for w in sup.pool.workers if w.pid]
        assert pids
        failpoints.configure("journal.fdatasync=error")
        Client(state).submit(b"lost", run_id="via-inbox")
        with pytest.raises(JournaledError):
            rt.submit(b"lost", run_id="refused")
        wait_for(lambda: sup.stopped.is_set(), 30, "the supervisor to stop")
        assert isinstance(rt._error, StorageFailure), rt._error
        assert rt._error.op == "fdatasync"
        wait_for(lambda: not any(pid_alive(p) for p in pids), 30, "every worker to be killed")
        # Nothing after the failed sync was acknowledged: the inbox file stays
        # for the next start, no hook fired, nobody was told "refused" started.
        assert inbox_files(state), "the inbox file was acked after a failed sync"
        assert hooks == ["ok0", "ok1", "ok2"]
    finally:
        failpoints.reset()
        try:
            rt.close()
        except Exception:  # noqa: BLE001 - it stopped already
            pass
    # A restart replays what is really on disk; the acknowledged runs are there.
    with Runtime(state, basic.runner, workers=1) as rt2:
        for i in range(3):
            assert rt2.status(f"ok{i}").status.value == "succeeded"
        assert rt2.wait("via-inbox", 30).status.value == "succeeded"


@pytest.mark.timeout(120)
def test_the_dispatch_check_above_catches_a_step_sent_before_its_sync(tmp_path, monkeypatch):
    """The test-only switch that sends leases before they are synced is seen by the check."""
    from journaled import supervisor

    monkeypatch.setattr(supervisor, "_UNSAFE_DISPATCH_FIRST", True)
    state = tmp_path / "state"
    mark = tmp_path / "early.mark"
    failpoints.configure("journal.before_sync=delay:1500")
    with Runtime(state, basic.runner, workers=1) as rt:
        s = Submitter(rt, state, "early", {"app": "sleep", "seconds": "0", "mark": str(mark)})
        s.start()
        wait_for(mark.exists, 30, "the step to start")
        pos = record_end(state, leased("early"))
        assert pos is not None and not durable(state, pos), \
            "with the unsafe switch the step runs while its lease's sync is still held"
        s.join(30)


@pytest.mark.timeout(60)
def test_power_loss_mode_holds_what_is_written_until_the_flushers_sync(tmp_path):
    """Written and not synced stays in memory (a kill loses it); the flusher's sync lands it."""
    from journaled.journal import Flusher, Journal

    j = Journal(tmp_path / "journal", simulate_power_loss=True)
    list(j.replay())
    j.open_for_append()
    seg = list_segments(tmp_path / "journal")[-1]
    size0 = seg.stat().st_size
    woke = threading.Event()
    failpoints.configure("journal.before_sync=delay:500")
    fl = Flusher(j, woke.set)
    try:
        j.append(b"one")
        ticket = j.write()
        fl.request(ticket)
        j.append(b"two")
        second = j.write()  # while the first sync is held
        assert seg.stat().st_size == size0, "power-loss mode: nothing reaches the file unsynced"
        assert fl.synced < ticket
        wait_for(woke.is_set, 10, "the first sync")
        fl.request(second)
        fl.drain(10)
        assert fl.synced == second == j.synced
        assert [b for _s, _o, b in Journal(tmp_path / "journal").replay()] == [b"one", b"two"]
        # The file runs on past the data in zeros (the writer's PREALLOC).
        assert read_mark(tmp_path / "journal").offset == len(seg.read_bytes().rstrip(b"\0"))
    finally:
        fl.close()
        j.close()


@pytest.mark.timeout(60)
def test_segments_rotate_only_once_the_flusher_synced_them(tmp_path):
    from journaled.journal import Flusher, Journal

    j = Journal(tmp_path / "journal", segment_bytes=4096)
    list(j.replay())
    j.open_for_append()
    fl = Flusher(j, lambda: None)
    bodies = [f"record {i:05d}".encode() * 20 for i in range(200)]
    try:
        for body in bodies:
            j.append(body)
            fl.request(j.write())
            if j.rotate_due():
                if j.synced != j.written:
                    with pytest.raises(RuntimeError):
                        j.rotate_if_full()  # never leave a segment with unsynced bytes
                fl.drain(10)
                j.rotate_if_full()
        fl.drain(10)
    finally:
        fl.close()
        j.close()
    assert len(list_segments(tmp_path / "journal")) > 5
    assert [b for _s, _o, b in Journal(tmp_path / "journal").replay()] == bodies
