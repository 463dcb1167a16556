"""The flusher's guests: a caller that would block anyway runs the sync on its own thread.

``sync_here`` (a folding submitter) and ``park`` (a waiter) run the same
sync cycle as the flusher thread, one at a time: whoever runs it, the
mark is published and ``on_durable`` and the answers come after the
fdatasync, a ticket asked for meanwhile is handed on, and a failure is
kept for the loop. Real journal, real fsync, real threads.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from journaled import failpoints
from journaled.errors import StorageFailure
from journaled.intake import Future
from journaled.journal import Flusher, Journal, Parker, read_mark


def _journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "journal")
    list(j.replay())
    j.open_for_append()
    return j


def _write(j: Journal, body: bytes) -> int:
    j.append(body)
    return j.write()


class _Seen:
    """Which thread ran ``on_durable``, and what was durable when it ran."""

    def __init__(self, j: Journal) -> None:
        self.j = j
        self.threads: list[str] = []
        self.synced_at_act: list[int] = []

    def on_durable(self) -> bool:
        self.threads.append(threading.current_thread().name)
        self.synced_at_act.append(self.j.synced)
        return True


@pytest.mark.timeout(30)
def test_sync_here_syncs_publishes_and_answers_on_the_callers_thread(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    seen = _Seen(j)
    fl = Flusher(j, lambda: None, seen.on_durable)
    try:
        ticket = _write(j, b"one")
        fut = Future()
        assert fl.answer_after(ticket, [(fut, "ok")])
        assert fl.sync_here(ticket)
        assert fut.done() and fut.result(0) == "ok"
        assert fl.synced == j.synced == ticket and fl.idle()
        assert seen.threads == [threading.current_thread().name]
        assert seen.synced_at_act == [ticket], "acts only after the sync returned"
        assert read_mark(tmp_path / "journal").offset == j._size
        assert not fl.sync_here(ticket), "nothing left to sync"
    finally:
        fl.close()
        j.close()


@pytest.mark.timeout(30)
def test_sync_here_while_a_sync_runs_hands_the_ticket_on(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    fl = Flusher(j, lambda: None)
    failpoints.configure("journal.before_sync=delay:300@1")
    try:
        first = _write(j, b"one")
        fl.request(first)  # the flusher thread runs it, held 300 ms
        time.sleep(0.05)
        second = _write(j, b"two")
        assert not fl.sync_here(second), "one sync at a time"
        fl.drain(10)  # the running sync's end handed `second` on
        assert fl.synced == second
    finally:
        failpoints.reset()
        fl.close()
        j.close()


@pytest.mark.timeout(30)
def test_a_parked_guest_runs_the_next_requested_sync(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    seen = _Seen(j)
    fl = Flusher(j, lambda: None, seen.on_durable)
    parker = Parker()
    out: list[float] = []

    def guest() -> None:
        t0 = time.monotonic()
        fl.park(parker, 10.0)
        out.append(time.monotonic() - t0)

    t = threading.Thread(target=guest, name="the-guest")
    try:
        t.start()
        deadline = time.monotonic() + 5
        while fl._guest is not parker and time.monotonic() < deadline:
            time.sleep(0.001)
        assert fl._guest is parker, "the waiter did not park"
        fl.request(_write(j, b"one"))
        t.join(5)
        assert not t.is_alive() and out and out[0] < 5, "the guest was not woken to sync"
        assert seen.threads == ["the-guest"], "the sync ran elsewhere than on the guest"
        assert fl.idle()
    finally:
        fl.close()
        j.close()


@pytest.mark.timeout(30)
def test_park_times_out_and_close_releases_a_parked_guest(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    fl = Flusher(j, lambda: None)
    try:
        t0 = time.monotonic()
        fl.park(Parker(), 0.2)  # nothing to sync: just the timeout
        assert 0.15 < time.monotonic() - t0 < 3
        assert fl._guest is None, "a guest that timed out left its slot"
        parker = Parker()
        t = threading.Thread(target=fl.park, args=(parker, 30.0))
        t.start()
        deadline = time.monotonic() + 5
        while fl._guest is not parker and time.monotonic() < deadline:
            time.sleep(0.001)
        fl.close()
        t.join(5)
        assert not t.is_alive(), "close left a guest parked"
    finally:
        fl.close()
        j.close()


@pytest.mark.timeout(30)
def test_a_failed_sync_on_a_guest_is_kept_and_nothing_syncs_after_it(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    woke = threading.Event()
    acted: list[int] = []
    fl = Flusher(j, woke.set, lambda: acted.append(1) is None)
    failpoints.configure("journal.fdatasync=error")
    try:
        ticket = _write(j, b"one")
        fut = Future()
        assert fl.answer_after(ticket, [(fut, "ok")])
        assert fl.sync_here(ticket)
        assert isinstance(fl.error, StorageFailure) and woke.is_set(), "the loop must hear it"
        assert not acted and not fut.done(), "nothing acted on or answered after a failed sync"
        assert fl.take_unanswered() == [(fut, "ok")]
        with pytest.raises(StorageFailure):
            fl.drain(1)
        t0 = time.monotonic()
        fl.park(Parker(), 0.2)  # no sync is run for a guest now, it only waits
        assert time.monotonic() - t0 >= 0.15
    finally:
        failpoints.reset()
        fl.close()
        j.close()


@pytest.mark.timeout(30)
def test_an_exception_on_the_guests_cycle_leaves_the_flusher_usable(tmp_path: Path) -> None:
    """A caller's Ctrl-C inside its cycle: the next sync still starts, nothing hangs."""
    j = _journal(tmp_path)
    calls: list[int] = []

    def on_durable() -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return True

    fl = Flusher(j, lambda: None, on_durable)
    try:
        first = _write(j, b"one")
        with pytest.raises(KeyboardInterrupt):
            fl.sync_here(first)
        assert fl.synced == first and not fl._syncing
        second = _write(j, b"two")
        fl.request(second)
        fl.drain(10)
        assert fl.synced == second and len(calls) == 2
    finally:
        fl.close()
        j.close()


class _Interrupted(Parker):
    """A guest whose wait is cut by Ctrl-C once it has been chosen to run a sync."""

    __slots__ = ()

    def wait(self, timeout: float | None = None) -> bool:
        super().wait(timeout)
        raise KeyboardInterrupt


@pytest.mark.timeout(30)
def test_a_guest_interrupted_in_its_wait_hands_the_sync_on(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    fl = Flusher(j, lambda: None)
    parker = _Interrupted()
    errors: list[BaseException] = []

    def guest() -> None:
        try:
            fl.park(parker, 10.0)
        except BaseException as e:  # noqa: BLE001 - the test's
            errors.append(e)

    t = threading.Thread(target=guest)
    try:
        t.start()
        deadline = time.monotonic() + 5
        while fl._guest is not parker and time.monotonic() < deadline:
            time.sleep(0.001)
        ticket = _write(j, b"one")
        fl.request(ticket)  # wakes the guest, which is interrupted instead of syncing
        t.join(5)
        assert errors and isinstance(errors[0], KeyboardInterrupt)
        fl.drain(5)  # the flusher thread ran it: no sync is lost with the guest
        assert fl.synced == ticket and fl._guest is None
    finally:
        fl.close()
        j.close()
