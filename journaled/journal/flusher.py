"""The flusher: one thread that makes written records durable, so the writer never waits.

::

    loop thread                          flusher thread
    ───────────                          ──────────────
    turn N: fold, write(N) ──request──>  sync(): fdatasync, publish the mark
    turn N+1: fold, write(N+1) ─req──>     (N+1 waits: a sync is running)
    turn N+2: fold, write(N+2) ─req──>   synced = N ──on_synced()──> loop acts on N
                                         sync(): one fdatasync covers N+1 and N+2
                                         synced = N+2 ──on_synced()──> loop acts

A ``Journal.sync`` covers every write made before it started, so while one
sync runs every turn written meanwhile piles up for the next one: group
commit across turns, one fdatasync for many. The loop never blocks on the
disk; it only acts (sends steps, answers callers) on turns whose ticket is
at most ``synced``.

Answers that need nothing but durability (a caller's Future: a submit's
ids, a socket reply) can be left here with ``answer_after``: they are set
on this thread right after the sync that covers their ticket, sparing the
hand-off back to the loop and from it to the caller. Everything else (a
step to a worker, an inbox ack, a hook) is the loop's, in order; with
``on_durable`` the loop's owner may do those acts on this thread too, right
after the sync (when it can do so without waiting), sparing the hop to the
loop on the way from the disk to a worker or a waiter.

A failed sync (``StorageFailure``: fsyncgate, a full disk) is never retried
and never swallowed here: it is kept in ``error``, the loop is woken, and
the loop raises it; the thread stops, since nothing after a failed sync can
be trusted.

Guests. A thread that blocks anyway (a ``Runtime.submit`` caller that just
wrote its own submission, a ``Runtime.wait`` caller) may run the sync
itself instead of handing it here and waiting to be handed the answer
back: ``sync_here`` runs the sync a caller asked for at once if none is
running, and ``park`` offers a waiting thread as the next sync's runner
(``request`` wakes the parked guest rather than this thread). The cycle
is the same code whoever runs it, one at a time (``_syncing``), so the
order (sync, publish the mark, ``on_durable``, answers, ``on_synced``) and
the write-ahead rule hold on every thread; this thread runs whatever no
guest takes.
"""

from __future__ import annotations

import _thread
import logging
import threading
from collections import deque
from typing import Any, Callable

from .writer import Journal

__all__ = ["Flusher", "Parker"]

_log = logging.getLogger("journaled.journal")


class Parker:
    """One waiting thread's wake-up: ``set`` by whoever has news for it, from any thread.

    A bare lock (``threading.Event`` costs a Condition and a lock per wait);
    ``set`` twice is one wake-up. ``clear`` before looking, ``wait`` after.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:
            pass  # set already

    def clear(self) -> None:
        self._lock.acquire(False)

    def is_set(self) -> bool:
        return not self._lock.locked()

    def wait(self, timeout: float | None = None) -> bool:
        """True once set (and it stays set), False after ``timeout`` seconds."""
        if self._lock.acquire(True, -1 if timeout is None else max(0.0, timeout)):
            self._lock.release()
            return True
        return False


class Flusher:
    """Runs ``journal.sync()`` whenever a later ticket is requested; see the module doc.

    Args:
        journal: an open ``Journal``; only ``write`` may be used on it meanwhile.
        on_synced: called on the flusher thread after each sync (and after a
            failure): the loop's wake-up. It must not block.
        on_durable: called on the flusher thread after each successful sync,
            once ``synced`` is published and before the answers and
            ``on_synced``: acts that may not wait for the loop. It must not
            block (nor raise). True: it did everything the sync called for,
            so ``on_synced`` is skipped (the loop is not woken for nothing).
    """

    def __init__(self, journal: Journal, on_synced: Callable[[], None],
                 on_durable: Callable[[], bool] | None = None) -> None:
        self.journal = journal
        self.on_synced = on_synced
        self.on_durable = on_durable
        self.synced = journal.synced  # last ticket made durable
        self.error: BaseException | None = None
        self._want = journal.synced  # last ticket asked for
        self._lock = lock = threading.Lock()  # `with self._lock`: a C call, not Condition's
        self._cond = threading.Condition(lock)  # a sync ended (wait_synced, drain, close)
        self._work = threading.Condition(lock)  # this thread's: a sync is wanted
        self._syncing = False  # a sync cycle runs (here or on a guest); guarded by the lock
        self._guest: Parker | None = None  # a parked caller that runs the next sync
        self._watchers = 0  # threads in a wait on _cond (a cycle's end notifies only then)
        self._closed = False
        # A parked guest (park) runs the cycle now: on_durable may leave it the
        # least to do before it returns (journaled.flushing). Set only by the
        # thread that claimed _syncing.
        self.guest_running = False
        # (ticket, [(future, value)]) set once synced >= ticket; guarded by _cond.
        self._answers: deque[tuple[int, list[tuple[Any, Any]]]] = deque()
        self._thread = threading.Thread(target=self._run, daemon=True, name="journaled-flusher")
        self._thread.start()

    def request(self, ticket: int) -> None:
        """Ask for ``ticket`` (and everything before it) to be made durable; never blocks."""
        with self._lock:
            if ticket > self._want:
                self._want = ticket
                if not self._syncing and self.error is None:  # else the running
                    self._hand_on()  # cycle's end hands it on (or nothing is synced again)

    def _hand_on(self) -> None:
        """Under the lock, a sync wanted and none running: to the parked guest, or here."""
        guest = self._guest
        if guest is not None:
            self._guest = None
            guest.set()  # it runs the sync (park), then goes back to its own wait
        else:
            self._work.notify()

    def sync_here(self, ticket: int) -> bool:
        """``request(ticket)``, and run the sync on this thread now if none is running.

        For a caller that would block on the answer anyway: the write it just
        made is synced and acted on here, with no hand-off to this thread
        and back. False: a sync runs already (or the flusher failed or
        closed); it was requested as by ``request``.
        """
        with self._lock:
            if ticket > self._want:
                self._want = ticket
            if self._syncing:
                return False  # its end hands the new ticket on
            if self._closed or self.error is not None or self._want <= self.synced:
                return False
            self._syncing = True
        self._cycle()
        return True

    def park(self, parker: Parker, timeout: float | None) -> None:
        """Wait on ``parker`` up to ``timeout`` seconds, running syncs while parked.

        While parked this thread is the one ``request`` wakes to run the next
        sync (one guest at a time; a second waits on its parker only). Returns
        after its parker is set, after one sync it ran (which may have set
        it: the caller looks again either way), or on timeout.
        """
        with self._lock:
            ok = not self._closed and self.error is None  # else: only its own wait
            if ok and not self._syncing and self._want > self.synced:
                self._syncing = run = True
            else:
                run = False
                if ok and self._guest is None and not parker.is_set():
                    self._guest = parker
        if run:
            self._guest_cycle()
            return
        try:
            parker.wait(timeout)
        except BaseException:  # a Ctrl-C in the wait: leave the slot, hand a sync on
            with self._lock:
                if self._guest is parker:
                    self._guest = None
                elif (self._want > self.synced and not self._syncing and not self._closed
                      and self.error is None):
                    self._hand_on()  # chosen just before: another thread runs it
            raise
        with self._lock:
            if self._guest is parker:
                self._guest = None  # woken by its own news, or timed out: not chosen
            if (self._closed or self.error is not None or self._syncing
                    or self._want <= self.synced):
                return
            self._syncing = True  # chosen by request (or work left unclaimed): run it
        self._guest_cycle()

    def _guest_cycle(self) -> None:
        self.guest_running = True
        try:
            self._cycle()
        finally:
            self.guest_running = False

    def answer_after(self, ticket: int, futures: list[tuple[Any, Any]]) -> bool:
        """Set each ``future.set(value)`` once ``ticket`` is durable, on this thread.

        Returns False, keeping nothing, when ``ticket`` is synced already or the
        flusher failed or closed: the caller sets them itself. Asked under the
        lock the sync's end is published under, so none can fall between.
        ``Future.set`` and its callbacks must be quick and thread-safe.
        """
        with self._lock:
            if ticket <= self.synced or self.error is not None or self._closed:
                return False
            self._answers.append((ticket, futures))
            return True

    def _take_answers(self, upto: int) -> list[tuple[Any, Any]]:
        """Under ``_cond``: the answers whose ticket is at most ``upto``."""
        out: list[tuple[Any, Any]] = []
        q = self._answers
        while q and q[0][0] <= upto:
            out += q.popleft()[1]
        return out

    def take_unanswered(self) -> list[tuple[Any, Any]]:
        """After a failed sync or ``close``: the answers never set (the caller fails them).

        Left to the caller so it can first close its doors: a socket client
        whose connection drops unanswered resends through the inbox.
        """
        with self._lock:
            return self._take_answers(1 << 62)

    def has_guest(self) -> bool:
        """A thread is parked as the next sync's runner (a hint: it may leave any time)."""
        return self._guest is not None

    def idle(self) -> bool:
        """Nothing asked for is still unsynced (or the flusher failed)."""
        return self.synced >= self._want or self.error is not None

    def wait_synced(self, timeout: float) -> None:
        """Block until the running sync returns (or fails), or ``timeout`` seconds pass."""
        with self._cond:
            if not self.idle():
                done = self.synced
                self._watchers += 1
                try:
                    self._cond.wait_for(lambda: self.synced != done or self.idle(), timeout)
                finally:
                    self._watchers -= 1

    def drain(self, timeout: float | None = None) -> None:
        """Block until every requested ticket is durable.

        Raises:
            StorageFailure: (any error of the sync) the flusher failed.
            TimeoutError: ``timeout`` passed first.
        """
        with self._cond:
            self._watchers += 1
            try:
                if not self._cond.wait_for(self.idle, timeout):
                    raise TimeoutError("the journal sync did not finish in time")
            finally:
                self._watchers -= 1
            if self.error is not None:
                raise self.error

    def close(self) -> None:
        """Stop the thread after the sync it is running, if any (nothing new starts).

        Also waits for a guest's running cycle: nothing calls back once closed.
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._work.notify_all()
            guest, self._guest = self._guest, None
        if guest is not None:
            guest.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()
            with self._cond:
                self._watchers += 1
                self._cond.wait_for(lambda: not self._syncing, 10.0)
                self._watchers -= 1

    def _run(self) -> None:
        work = self._work
        while True:
            with work:
                while not self._closed and (self._want <= self.synced or self._syncing):
                    work.wait()
                if self._closed or self.error is not None:
                    return
                self._syncing = True
            if not self._cycle():
                return

    def _cycle(self) -> bool:
        """One sync and what follows it, on whichever thread claimed ``_syncing``.

        Returns False after a failed sync (the flusher is done for good).
        """
        cond = self._cond
        try:
            try:
                done = self.journal.sync()
            except BaseException as e:  # noqa: BLE001 - handed to the loop, which stops
                with self._lock:
                    self.error = e
                _log.debug("journal sync failed: %s", e)
                self.on_synced()
                return False
            with self._lock:
                self.synced = done
                answers = self._take_answers(done) if self._answers else ()
            quiet = False
            if self.on_durable is not None:
                # Steps to workers first: they start while the callers are answered.
                quiet = self.on_durable()
            # Durable, and the mark published: the callers may hear it now.
            for fut, value in answers:
                fut.set(value)
            # The loop may act on everything up to `done` now; the mark says so
            # to other processes already (published inside sync()). Woken before
            # the waiters (wait_synced), so one that wakes finds the byte there.
            if not quiet:
                self.on_synced()
            return True
        finally:
            # Even if this thread was interrupted (a caller's Ctrl-C): the next
            # sync may start, and a ticket asked for meanwhile is handed on.
            with self._lock:
                self._syncing = False
                if (self._want > self.synced and not self._closed
                        and self.error is None):
                    self._hand_on()
                if self._watchers:
                    cond.notify_all()  # wait_synced, drain, close
