"""The supervisor: the one process that writes the journal and drives the pool.

::

      Client / CLI ──files──> inbox/ ──watchfiles──┐
      Runtime.submit/cancel ──command queue────────┤ (wake pipe)
                                                   v
    ┌───────────────── one turn ──────────────────────────────────────────┐
    │ wait(worker pipes, worker sentinels, wake pipe, timeout=next timer) │
    │ fold what arrived into State (commands -> records)                  │
    │ lease due runs to workers with room (more records)                  │
    │ journal: ONE write + ONE fdatasync of the turn's records            │
    │ only then act: send leases, set cancel flags, ack inbox files,      │
    │ report results, fire on_terminal hooks                              │
    └─────────────────────────────────────────────────────────────────────┘

Write-ahead rule: nothing leaves this process (a step to a worker, a
result to a waiter, a hook, an inbox deletion) before the records that
justify it are durable. A ``kill -9`` between the sync and the act leaves
records whose acts were never done; replay redoes them (a lease becomes
an abandoned attempt, a hook fires again, an inbox file is read again and
found to be a duplicate), which is always the safe side.

This module keeps the lifecycle, the turn and the write-then-act commit.
The rest of the loop is mixed in by job: ``intake`` (commands, inbox
files, the reload watch), ``leasing`` (the worker side; every decision is
``dispatch``'s), ``compaction`` (snapshots and retention), ``live`` (the
status for ``watch``) and ``hooks`` (the hand-off to the hook thread).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any, Callable, TypeVar, cast

from . import failpoints, replay
from .api import RunOutcome, RunStatus
from .archiving import Archiving
from .blobs import DEFAULT_THRESHOLD, BlobStore, check_threshold
from .compaction import Compaction
from .door import DoorIntake
from .errors import JournaledError, StorageFailure
from .executors import make_executor
from .hooks import HookFiring
from .inbox import Inbox
from .intake import Future, Intake
from .journal import Journal, StateLock
from .knobs import warn_test_knobs
from .leasing import Leasing
from .live import LivePublisher, clear_status
from .pool import Dispatch, Pool, Worker
from .records import CancelRequested, Record, Redriven, Terminated, encode
from .state import Policy, State, outcome_of

log = logging.getLogger("journaled.supervisor")

DAY = 86400.0

# Test-only: break the write-ahead rule on purpose (send leases before they are
# synced) to prove that crash tests in power-loss mode catch it. Never a flag.
_UNSAFE_DISPATCH_FIRST = os.environ.get("JOURNALED_UNSAFE_DISPATCH_BEFORE_SYNC") == "1"


F = TypeVar("F", bound=Callable[..., Any])


def _holding_state_lock(fn: F) -> F:
    """Run a method with ``self.state_lock`` held (re-entrant: the loop may nest them)."""

    @functools.wraps(fn)
    def locked(self: Supervisor, *args: Any, **kwargs: Any) -> Any:
        with self.state_lock:
            self._lock_depth += 1  # only ever changed by the thread holding the lock
            try:
                return fn(self, *args, **kwargs)
            finally:
                self._lock_depth -= 1

    return cast(F, locked)


class Supervisor(Intake, DoorIntake, Leasing, Compaction, LivePublisher, HookFiring,
                 Archiving):
    """Owns the journal, the state machine and the pool; ``turn()`` is one loop pass."""

    def __init__(self, state_dir: str | os.PathLike[str], runner: Any, *, workers: int = 2,
                 policy: Policy | None = None, on_terminal: Callable[[RunOutcome], Any] | None
                 = None, cancel_grace: float = 2.0, drain_timeout: float = 30.0,
                 preload: list[str] | None = None, retention: float = 7 * DAY,
                 compact_bytes: int = 16 << 20, unsafe_no_fsync: bool = False,
                 import_string: str = "", reload_dir: str | os.PathLike[str] | None = None,
                 executor: str = "local", blob_threshold: int = DEFAULT_THRESHOLD,
                 serve_socket: bool = True) -> None:
        if workers < 1 and executor in ("", "local"):
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.state_dir = Path(state_dir)
        self.policy = policy or Policy()
        self.runner = runner
        self.workers = workers
        self.on_terminal = on_terminal
        self.cancel_grace = cancel_grace
        self.drain_timeout = drain_timeout
        self.preload = preload
        self.retention = retention
        self.compact_bytes = compact_bytes
        self.import_string = import_string
        self.executor = executor
        # Values longer than this go out of line as blobs, written by whoever has
        # the bytes (clients, workers); the supervisor only passes refs along.
        self.blob_threshold = check_threshold(blob_threshold)
        self.blobs = BlobStore(self.state_dir, self.blob_threshold)
        self.reload_dir = Path(reload_dir) if reload_dir is not None else None
        self.state = State(self.policy)
        self.journal = Journal(self.state_dir / "journal", unsafe_no_fsync=unsafe_no_fsync)
        self.lock = StateLock(self.state_dir)
        self.pool: Pool | None = None
        self.inbox: Inbox | None = None
        self._init_intake()  # the command queue, the reload flags
        self._init_door(serve_socket)  # STATE/supervisor.sock, started by start()
        self._init_compaction()  # when to compact next, and its counters
        self._init_leasing()  # kills, respawn back-off, steps done
        self._init_live()  # when the live view is next published
        self._init_hooks()  # the hook thread, started with the first hook to fire
        self._init_archiving()  # the archive thread, started after replay
        self._wake_r, self._wake_w = -1, -1
        self._recs: list[Record] = []
        self._carry: list[Record] = []  # records made after a commit, for the next one
        # The turn's acts, done only once its records are durable (_commit).
        self._acks: list[Path] = []
        self._futures: list[tuple[Future, Any]] = []
        self._dispatch: list[tuple[Worker, list[Dispatch]]] = []
        self._memo_acks: list[tuple[Worker, int]] = []
        self._stopping = False
        self._stop_now = False
        self._drain_deadline = 0.0
        self._shutdown_cancelled = False
        self.stopped = threading.Event()
        # Runs whose terminal record is durable: only these are reported as ended.
        self.outcomes: set[str] = set()
        # Held by the loop while it changes state (a turn after its wait, a
        # compaction) and by every query from another thread (Runtime). The
        # condition shares it, so a waiter checks and sleeps without a gap.
        self.state_lock = threading.RLock()
        self._lock_depth = 0  # how deep the method holding it nests (_holding_state_lock)
        self.cond = threading.Condition(self.state_lock)
        self.recovered_runs = 0
        self._wait_map: dict[Any, tuple[str, Worker]] = {}

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Lock, replay, recover, start workers; raises before any worker starts on trouble."""
        warn_test_knobs()
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            self._replay()
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            self._start_archiver()  # finished runs the replay left (or a 0.2 state's)
            self.inbox = Inbox(self.state_dir)
            self.pool = make_executor(self.executor, self.import_string or self.runner,
                                      self.workers, self.preload, state_dir=self.state_dir,
                                      blob_threshold=self.blob_threshold)
            if hasattr(self.pool, "on_ready"):
                self.pool.on_ready = self.wake  # a remote executor came back: lease again
            self.pool.start()
            self._wait_map = self.pool.wait_objects()
            self.inbox.watch(self._inbox_changed)
            if self.reload_dir is not None:
                threading.Thread(target=self._watch_code, daemon=True,
                                 name="journaled-reload").start()
            self._read_inbox(time.time())
            self._start_door()  # after replay: every answer it gives rests on the journal
            self.wake()  # the first turn must lease what replay and the inbox left ready
        except BaseException:
            self.close()
            raise

    def _replay(self) -> None:
        state = self.state
        # The one reader: an undecodable record is JournalCorrupt with its place.
        replay.apply_all(state, replay.records(self.journal))
        self.journal.open_for_append()
        now = time.time()
        live = sum(1 for r in state.runs.values() if not r.terminal)
        self.recovered_runs = live
        recs = state.recover(now, os.getpid(), self.import_string)
        self.outcomes.update(r.run_id for r in state.runs.values() if r.terminal)
        self._write(recs)
        self._after_commit(recs)
        self._fire_owed_hooks()

    def wake(self) -> None:
        """Wake the loop from another thread (or a signal handler)."""
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def request_stop(self) -> None:
        """First call: drain (stop leasing, let steps finish). Second call: stop now."""
        if self._stopping:
            self._stop_now = True
        else:
            self._stopping = True
            self._drain_deadline = time.monotonic() + self.drain_timeout
            if self.pool is not None:
                self.pool.set_stopping()  # the shutdown notice: step.cancel_token.stopping()
        self.wake()

    def run(self, until_idle: bool = False) -> None:
        """Turn until stopped (or, with ``until_idle``, until nothing is left to do)."""
        try:
            while True:
                self.turn()
                if self._stopping and self._all_workers_gone():
                    break
                if until_idle and not self._stopping and self._idle():
                    self.request_stop()
        finally:
            self.close()

    def _idle(self) -> bool:
        return (self.state.idle() and not self._commands and not self._carry
                and not self._door_pending()
                and self.inbox is not None and not self.inbox.scan_pending()
                and (self._hooks is None or not self._hooks.busy())
                and not self._archive_busy())

    def _all_workers_gone(self) -> bool:
        return self.pool is None or all(w.proc is None for w in self.pool.workers)

    def close(self) -> None:
        self._close_door()  # first: clients not yet answered resend through the inbox
        if self._hooks is not None:
            self._hooks.close()  # hooks not yet delivered are owed to the next start
        self._close_archiver()  # runs not yet archived stay finished in the journal
        clear_status(self.state_dir)
        self._reload_stop.set()
        if self.inbox is not None:
            self.inbox.close()
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        self.journal.close()
        self.lock.release()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        gone = JournaledError("the supervisor stopped before this was durable")
        for _, _args, fut in self._commands:
            fut.set(error=gone)
        for fut, _value in self._futures:
            fut.set(error=gone)
        self._commands.clear()
        self._futures.clear()
        self.stopped.set()
        with self.cond:
            self.cond.notify_all()

    # ----------------------------------------------------------------- turn

    def turn(self, timeout: float | None = None) -> None:
        """One pass: wait, fold, lease, write + sync once, act."""
        pool = self.pool
        assert pool is not None
        if timeout is None:
            timeout = self._next_timeout()
        objs = list(self._wait_map)
        objs.append(self._wake_r)
        ready = mp_wait(objs, timeout)
        self._after_wait(ready)

    @_holding_state_lock
    def _after_wait(self, ready: list[Any]) -> None:
        """The part of a turn that changes state: readers on other threads wait for it."""
        pool = self.pool
        assert pool is not None
        now = time.time()
        mono = time.monotonic()
        recs = self._recs
        if self._carry:
            recs += self._carry
            self._carry = []
        recs += self._archived_records(now)  # the archive committed them: drop from the journal
        woke = False
        dead: list[Worker] = []
        for obj in ready:
            if obj == self._wake_r:
                woke = True
                continue
            what, w = self._wait_map[obj]
            if what == "conn":
                try:
                    self._results(w, pool.read(w, mono), now)
                except (EOFError, OSError):
                    dead.append(w)
                if w.memo_puts:
                    self._worker_messages(w)
            elif w not in dead:
                dead.append(w)
        if woke:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
            self._run_commands(now)
            self._run_door_requests(now)
            if self._inbox_dirty:  # only when a file landed: a socket wake lists no directory
                self._inbox_dirty = False
                self._read_inbox(now)
        for w in dead:
            self._worker_died(w, now)
        self._deadlines(mono, now)
        recs += self.state.reconcile(now)
        if self._reload.is_set() and not self._stopping:
            self._restart_workers()
        if not self._stopping:
            self._lease(now, mono)
        else:
            for w in pool.workers:
                # Stop: finish the running step, skip the queued ones (released on exit).
                pool.stop(w)
                if self._stop_now:
                    pool.kill(w, "shutdown")
        self._commit(recs)
        if mono >= self._status_due:
            self._write_status(mono)
        if self._respawn_at:
            self._respawn_due(mono)
        if self._compaction_due(mono):
            self.compact(now)

    def _next_timeout(self) -> float | None:
        if self._carry or self._commands or self._door_in:
            return 0.0
        now = time.time()
        mono = time.monotonic()
        times: list[float] = []  # monotonic
        due = self.state.next_due()
        if due is not None:
            times.append(mono + max(0.0, due - now))
        times += self._worker_timers(mono)
        # The live view, busy or idle: its age is how 'watch' tells a hung loop.
        times.append(self._status_due)
        times.append(self._retention_checked + self.retention_check)
        if not times:
            return None
        return min(max(0.0, min(times) - mono) + 0.0005, 5.0)

    # --------------------------------------------------------- write, then act

    def _write(self, recs: list[Record]) -> None:
        if not recs:
            return
        try:
            self.journal.extend([encode(r) for r in recs])
            self.journal.commit()
        except StorageFailure:
            # fsyncgate: nothing after a failed write or sync can be trusted.
            # Acknowledge nothing, stop every worker, let the caller exit.
            if self.pool is not None:
                for w in self.pool.workers:
                    self.pool.kill(w, "storage")
            raise

    def _commit(self, recs: list[Record]) -> None:
        self._recs = []
        pool = self.pool
        assert pool is not None
        if _UNSAFE_DISPATCH_FIRST:  # the bug crash tests must catch; see its definition
            self._send_dispatches()
        self._write(recs)
        # Everything below happens only once the records above are durable.
        self._send_dispatches()
        if self._memo_acks:
            for w, seq in self._memo_acks:
                pool.ack_memo(w, seq)  # the MemoPut is durable: put() may return
            self._memo_acks = []
        if self._acks:
            assert self.inbox is not None
            self.inbox.ack(self._acks)
            self._acks = []
        self._after_commit(recs)
        futures, self._futures = self._futures, []
        for fut, value in futures:
            fut.set(value)

    def _send_dispatches(self) -> None:
        pool = self.pool
        assert pool is not None
        if self._dispatch:
            if failpoints.ENABLED:
                failpoints.hit("supervisor.before_dispatch")
            mono = time.monotonic()
            for w, items in self._dispatch:
                try:
                    pool.send(w, items, mono)
                except OSError:
                    pass  # the worker is dying; its sentinel will say so next turn
            if failpoints.ENABLED or _UNSAFE_DISPATCH_FIRST:
                # Test runs only: "after dispatch" means the steps left this process.
                for w, _items in self._dispatch:
                    if w.sender is not None:
                        w.sender.flush(1.0)
            self._dispatch = []
            if failpoints.ENABLED:
                failpoints.hit("supervisor.after_dispatch")

    def _after_commit(self, recs: list[Record]) -> None:
        self._hooks_delivered()
        self._archive_after_commit(recs)  # durably finished (and hooked): to the archiver
        pool = self.pool
        terminated: list[str] = []
        for rec in recs:
            t = type(rec)
            if t is Terminated:
                terminated.append(rec.run_id)
            elif t is Redriven:
                self.outcomes.discard(rec.run_id)  # live again: the old end no longer holds
            elif t is CancelRequested and pool is not None:
                self._signal_cancel(rec.run_id)
        if not terminated:
            return
        state = self.state
        for rid in terminated:
            run = state.runs[rid]
            self.outcomes.add(rid)
            log.info("run %s %s after %d steps", rid, run.status, run.steps)
        self._door_terminated(terminated)  # after outcomes: a wait never falls between
        with self.cond:
            self.cond.notify_all()
        if self.on_terminal is not None:
            for rid in terminated:
                self._fire_hook(rid)

    # ---------------------------------------- entry points for other threads

    @_holding_state_lock
    def compact(self, now: float | None = None) -> bool:
        """Compact now, with the state lock held; returns whether it did (``_compact``)."""
        return self._compact(now)

    @_holding_state_lock
    def status_counts(self) -> dict[str, int]:
        """Runs by status (live and archived), safe from any thread."""
        return self.all_counts()

    @_holding_state_lock
    def status(self, run_id: str) -> RunOutcome | None:
        """Durable view: a terminal status is reported only once it is synced."""
        run = self.state.runs.get(run_id)
        if run is None:
            return None
        if run_id in self.outcomes:
            return outcome_of(run)
        if run.terminal:  # applied, not yet durable: still running as far as anyone knows
            return RunOutcome(run_id, RunStatus.RUNNING, None, None, run.step, run.submitted_at)
        return outcome_of(run)
