"""The supervisor: the one process that writes the journal and drives the pool.

::

      Client / CLI ──files──> inbox/ ──watchfiles──┐
      Client / CLI ──STATE/supervisor.sock─────────┤ (read on the loop: door.py)
      Runtime.submit/cancel ──command queue────────┤ (wake pipe)
                                                   v
    ┌───────────────── one turn ──────────────────────────────────────────┐
    │ wait(worker pipes, worker sentinels, wake pipe, timeout=next timer) │
    │ act on earlier turns the flusher has made durable since (in order): │
    │   send leases, ack memo puts and inbox files, report results,       │
    │   set cancel flags, fire on_terminal hooks                          │
    │ fold what arrived into State (commands -> records)                  │
    │ lease due runs to workers with room (more records)                  │
    │ journal: ONE write of the turn's records; the flusher thread syncs  │
    └─────────────────────────────────────────────────────────────────────┘
            │ request(ticket)                    ^ wake pipe
            v                                    │
    flusher thread: ONE fdatasync for every turn written since the last,
    publish the synced mark, then (if the loop is between turns) do the
    synced turns' acts itself, and wake the loop only if a turn is still
    needed (journal/flusher.py, flushing.py)

The loop never waits on the disk: turn N+1 folds and writes while turn
N's sync runs, and one sync covers every turn written meanwhile. A quiet
``Runtime.submit`` folds, leases and writes on its own thread when the
loop is between turns and no sync runs (``Intake._fold_here``): the same
turn code under the same lock, one hand-off fewer.

Write-ahead rule: nothing leaves this process (a step to a worker, a
result to a waiter, a hook, an inbox deletion, a terminal count in the
live view) before the records that justify it are durable. A turn's acts
wait in ``_written`` until the flusher's ``synced`` ticket covers it, and
turns are acted on in the order they were written. A ``kill -9`` between
the sync and the act leaves records whose acts were never done; replay
redoes them (a lease becomes an abandoned attempt, a hook fires again, an
inbox file is read again and found to be a duplicate), which is always
the safe side. A kill between the write and the sync may keep the turn or
lose it; nobody was told about it either way.

This module keeps the lifecycle, the turn and the write-then-act commit.
The rest of the loop is mixed in by job: ``intake`` (commands, inbox
files, the reload watch), ``leasing`` (the worker side; every decision is
``dispatch``'s), ``compaction`` (snapshots and retention), ``live`` (the
status for ``watch``), ``hooks`` (the hand-off to the hook thread),
``flushing`` (turns written and waiting for the flusher's sync),
``acting`` (what a durable turn does), ``waiting`` (the wake pipe, the
epoll set, the next timeout) and ``stopping`` (drain, idle, close).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, TypeVar, cast

from . import failpoints, replay
from .acting import Acting
from .api import RunOutcome, RunStatus
from .app import load_table
from .archiving import Archiving
from .blobs import DEFAULT_THRESHOLD, BlobStore, check_threshold
from .clock import SYSTEM_CLOCK, Clock
from .compaction import Compaction
from .door import DoorIntake
from .errors import StorageFailure
from .executors import make_executor
from .flushing import Flushing, _Turn
from .hooks import HookFiring
from .inbox import Inbox
from .intake import Future, Intake
from .journal import Flusher, Journal, Parker, StateLock
from .knobs import warn_test_knobs
from .leasing import Leasing
from .live import LivePublisher
from .metrics import Metrics
from .metrics_http import publish
from .operating import Operating
from .pool import Dispatch, Pool, Worker
from .pool.hygiene import Hygiene
from .quotas import NO_QUOTAS, Quotas
from .records import Record, Terminated, encode
from .recycling import Recycling
from .scheduling import Scheduling
from .serving import write_serving
from .state import RUNNING, Policy, State, outcome_of
from .stopping import Stopping
from .waiting import Waiting

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


class Supervisor(Waiting, Acting, Stopping, Intake, DoorIntake, Leasing, Recycling, Compaction,
                 LivePublisher, HookFiring, Archiving, Flushing, Scheduling, Operating):
    """Owns the journal, the state machine and the pool; ``turn()`` is one loop pass."""

    # Seconds a turn may wait for a running sync before folding what arrived
    # meanwhile: under load, one turn per sync instead of one per arrival.
    gather = 0.0005

    def __init__(self, state_dir: str | os.PathLike[str], runner: Any, *, workers: int = 2,
                 policy: Policy | None = None, on_terminal: Callable[[RunOutcome], Any] | None
                 = None, cancel_grace: float = 2.0, drain_timeout: float = 30.0,
                 preload: list[str] | None = None, retention: float = 7 * DAY,
                 compact_bytes: int = 16 << 20, unsafe_no_fsync: bool = False,
                 import_string: str = "", reload_dir: str | os.PathLike[str] | None = None,
                 executor: str = "local", blob_threshold: int = DEFAULT_THRESHOLD,
                 serve_socket: bool = True, quotas: Quotas | None = None,
                 hygiene: Hygiene | None = None, clock: Clock | None = None) -> None:
        if workers < 1 and executor in ("", "local"):
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.state_dir = Path(state_dir)
        # Every due time (delays, back-offs, signal timeouts, step limits) is
        # read from here: journaled.testing passes a FakeClock.
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.policy = policy or Policy()
        self.runner = runner
        # The names served (each worker loads the same table from the same spec).
        self.runner_table = load_table(import_string or runner)
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
        # --limit, --key-concurrency, --rate: checked at submit (the state) and at lease.
        self.quotas = quotas or NO_QUOTAS
        self.state.quotas = self.quotas
        self.hygiene = hygiene or Hygiene()  # BLAS caps, recycling, RSS limit, pinning
        self.journal = Journal(self.state_dir / "journal", unsafe_no_fsync=unsafe_no_fsync)
        self.lock = StateLock(self.state_dir)
        # Counters folded from durable turns, gauges sampled once a second (metrics.py).
        self.metrics = Metrics()
        self.journal.on_sync = self.metrics.observe_sync  # the flusher thread's
        self.pool: Pool | None = None
        self.inbox: Inbox | None = None
        self._init_intake()  # the command queue, the reload flags
        self._init_door(serve_socket)  # STATE/supervisor.sock, started by start()
        self._init_compaction()  # when to compact next, and its counters
        self._init_leasing()  # kills, respawn back-off, steps done
        self._init_recycling()  # the RSS monitor (started with the pool), recycle counts
        self._init_live()  # when the live view is next published
        self._init_hooks()  # the hook thread, started with the first hook to fire
        self._init_archiving()  # the archive thread, started after replay
        self._init_scheduling()  # schedule ticks: the next one's time, cached
        self._wake_r, self._wake_w = -1, -1
        self._recs: list[Record] = []
        self._carry: list[Record] = []  # records made after a commit, for the next one
        # The turn's acts, done only once its records are durable (_commit).
        self._acks: list[Path] = []
        self._futures: list[tuple[Future, Any]] = []
        self._dispatch: list[tuple[Worker, list[Dispatch]]] = []
        self._memo_acks: list[tuple[Worker, int]] = []
        # Turns written whose sync has not returned yet, oldest first; the
        # flusher (started after replay) syncs them while the loop goes on.
        self._written: deque[_Turn] = deque()
        self._storage_broken = False  # a write or sync failed: nothing more is synced
        self._flusher: Flusher | None = None
        self._unanswered: list[tuple[Future, Any]] = []  # the flusher's, after it failed
        self._flusher_acted = False  # the flusher did a sync's acts itself (_act_on_flusher)
        self._until_idle = False  # run(until_idle=True): every sync's end is a turn
        self._timed_sent = False  # a step with a deadline was sent (its timer: a turn)
        self._act_error: BaseException | None = None  # ...and one of them failed
        self._sync_wanted = 0  # ticket written, not yet handed to the flusher
        self._turned_at = 0.0  # monotonic start of the last turn (gather)
        self._door_busy = False  # the last turn folded socket requests (gather)
        self._unsent_n: dict[int, int] = {}  # slot -> leases in _written, not yet sent
        self._inbox_due = True  # the inbox watcher saw a change: scan it next turn
        self._poked = False  # someone asked for a full turn (_poke)
        self._wake_pending = False  # a wake byte is in the pipe, not yet read by the loop
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
        # run id -> Events of in-process waiters (Runtime.wait), set once its end is
        # durable: one wake per waiter of that run, not every waiter per commit.
        # Changed and read with the state lock held.
        self.run_waiters: dict[str, list[Parker]] = {}
        self.recovered_runs = 0
        self._wait_map: dict[Any, tuple[str, Worker]] = {}
        self._sel: Any = None  # _select's epoll set (select.epoll)
        self._sel_map: dict[Any, tuple[str, Worker]] | None = None
        self._sel_objs: list[Any] = []

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Lock, replay, recover, start workers; raises before any worker starts on trouble."""
        warn_test_knobs()
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            self._replay()
            self._write_serving()  # before the inbox and the door take any submission
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            self._flusher = Flusher(self.journal, self._wake_synced, self._act_on_flusher)
            self._start_archiver()  # finished runs the replay left (or a 0.2 state's)
            self.inbox = Inbox(self.state_dir)
            self.pool = make_executor(self.executor, self.import_string or self.runner,
                                      self.workers, self.preload, state_dir=self.state_dir,
                                      blob_threshold=self.blob_threshold,
                                      hygiene=self.hygiene)
            if hasattr(self.pool, "on_ready"):
                self.pool.on_ready = self._poke  # a remote executor came back: lease again
            self.pool.start()
            self._start_rss_monitor(self.wake)  # --max-worker-rss
            self._wait_map = self.pool.wait_objects()
            self.inbox.watch(self._inbox_changed)
            if self.reload_dir is not None:
                threading.Thread(target=self._watch_code, daemon=True,
                                 name="journaled-reload").start()
            self._read_inbox(self.clock.now())
            self._start_door()  # after replay: every answer it gives rests on the journal
            self.wake()  # the first turn must lease what replay and the inbox left ready
        except BaseException:
            self.close()
            raise

    def _write_serving(self) -> None:
        """``STATE/serving.json``: the runners and limits clients check at submit (best
        effort: the supervisor checks again when it folds a submission)."""
        try:
            write_serving(self.state_dir, self.quotas.serving(),
                          runners=self.runner_table.names,
                          default_runner=self.runner_table.default)
        except OSError as e:
            log.warning("cannot write %s: %s; clients will not check limits at submit",
                        self.state_dir / "serving.json", e)

    def _replay(self) -> None:
        state = self.state
        # The one reader: an undecodable record is JournalCorrupt with its place.
        replay.apply_all(state, replay.records(self.journal))
        self.journal.open_for_append()
        now = self.clock.now()
        live = sum(1 for r in state.runs.values() if not r.terminal)
        self.recovered_runs = live
        recs = state.recover(now, os.getpid(), self.import_string)
        self.outcomes.update(r.run_id for r in state.runs.values() if r.terminal)
        self._write_now(recs)  # no flusher yet: synced here, before any worker starts
        self._after_commit(recs)
        self._fire_owed_hooks()

    def run(self, until_idle: bool = False) -> None:
        """Turn until stopped (or, with ``until_idle``, until nothing is left to do)."""
        self._until_idle = until_idle
        try:
            while True:
                self.turn()
                if self._stopping and self._all_workers_gone() and self._hooks_settled():
                    break
                if until_idle and not self._stopping and self._idle():
                    self.request_stop()
        finally:
            self.close()

    # ----------------------------------------------------------------- turn

    def turn(self, timeout: float | None = None) -> None:
        """One pass: wait, act on what the flusher synced, fold, lease, write."""
        pool = self.pool
        assert pool is not None
        with self.state_lock:  # the flusher may act, a caller may fold (_fold_here) meanwhile
            if timeout is None:
                timeout = self._next_timeout()
            self._request_sync()
        objs = list(self._wait_map)
        objs.append(self._wake_r)
        door_fd = self._door_fd()
        if door_fd >= 0:
            objs.append(door_fd)  # the socket's requests are read on this thread (door.py)
        fl = self._flusher
        if (fl is not None and self.gather > 0 and (self._commands or self._door_busy)
                and not fl.idle()):
            # A sync is running and commands (or socket requests: the last turn
            # had some) keep coming (load): let them gather
            # into one turn, folded when the sync returns, or after `gather`
            # seconds if it is slow (a slow disk still overlaps with the folding
            # and writing). An idle loop never waits here.
            left = self._turned_at + self.gather - time.monotonic()
            if left > 0:
                # Then the wait below returns at once for whatever came meanwhile
                # (the sync's wake-up byte, a command's), or blocks as usual.
                fl.wait_synced(left)
        ready = self._select(objs, timeout)
        self._turned_at = time.monotonic()
        self._after_wait(ready)

    @_holding_state_lock
    def _after_wait(self, ready: list[Any]) -> None:
        """The part of a turn that changes state: readers on other threads wait for it."""
        pool = self.pool
        assert pool is not None
        woke = self._wake_r in ready
        if woke:
            # Empty the pipe before looking at the flusher: a sync that ends after
            # this leaves a byte behind, so its wake-up is never lost.
            try:
                # One read is enough unless it filled the buffer: every syscall here
                # gives the GIL away to the callers' threads, and taking it back waits.
                while len(os.read(self._wake_r, 65536)) == 65536:
                    pass
            except BlockingIOError:
                pass
            # After the read, not before: a waker that set the flag meanwhile may
            # have had its byte read already. Anyone who skipped writing queued
            # their work before they looked at the flag, so this turn sees it.
            self._wake_pending = False
        acted = self._act_durable()  # earlier turns the flusher has synced since: act first
        if self._flusher_acted:
            acted, self._flusher_acted = True, False
        door_fd = self._door_fd()
        door_ready = door_fd >= 0 and door_fd in ready
        if door_ready or self._door_timer_due():
            self._serve_door(time.monotonic())  # requests land in _door_in for this turn
        if (((acted and woke) or door_ready) and len(ready) == 1 and not self._commands
                and not self._carry and not self._inbox_due and not self._poked
                and not self._stopping and not self._door_pending()
                and not self._reload.is_set()):
            # Only the flusher's wake-up (its acts were the whole turn), or socket
            # traffic that brought no request: back to the wait at once, so the
            # threads just answered get the GIL sooner; the timers this skips
            # are in the next wait's timeout.
            return
        self._poked = False
        now = self.clock.now()
        mono = self.clock.monotonic()
        recs = self._recs
        if self._carry:
            recs += self._carry
            self._carry = []
        recs += self._archived_records(now)  # the archive committed them: drop from the journal
        dead: list[Worker] = []
        for obj in ready:
            if obj == self._wake_r or obj == door_fd:
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
            self._run_commands(now)
        self._door_busy = self._door_pending()  # under load: gather the next turn (turn)
        if woke or door_ready or self._door_busy:
            self._run_door_requests(now)
        if woke:
            if self._inbox_due:  # only when a file landed: a socket wake lists no directory
                self._inbox_due = False  # a change after this sets it again
                self._read_inbox(now)
        for w in dead:
            self._drop_unsent(w, now)
            self._worker_died(w, now)
        self._deadlines(mono, now)
        recs += self._schedule_ticks(now)  # before leasing: a tick's run may start this turn
        recs += self.state.reconcile(now)
        reload = self._reload.is_set() and not self._stopping
        if reload and not self._unsent():
            self._restart_workers()
        elif not self._stopping and not reload:
            self._lease(now, mono)
        elif self._stopping:
            for w in pool.workers:
                # Stop: finish the running step, skip the queued ones (released on exit).
                # Not before its leases written earlier are sent: a Stop that overtook
                # them would leave steps the worker never hears of.
                if not self._stop_now and self._unsent(w):
                    continue
                pool.stop(w)
                if self._stop_now:
                    pool.kill(w, "shutdown")
        self._commit(recs)
        if mono >= self._status_due:
            self._write_status(mono)
        publish(self, mono)  # metrics gauges and STATE/metrics.json, once a second
        if self._respawn_at:
            self._respawn_due(mono)
        if self._compaction_due(mono):
            self.compact(now)

    # --------------------------------------------------------- write, then act

    def _write_now(self, recs: list[Record]) -> None:
        """Write and sync on this thread (start-up, before the flusher runs)."""
        if not recs:
            return
        try:
            self.journal.extend([encode(r) for r in recs])
            self.journal.commit()
        except StorageFailure:
            self._storage_failed()
            raise

    def _commit(self, recs: list[Record]) -> None:
        """Write the turn's records and queue its acts until the flusher has synced them."""
        self._recs = []
        journal = self.journal
        if _UNSAFE_DISPATCH_FIRST:  # the bug crash tests must catch; see its definition
            self._send_dispatches(self._dispatch)
            self._dispatch = []
        try:
            if recs:
                journal.extend([encode(r) for r in recs])
            # 1. One write of the turn's records. Crash window until the flusher's
            # sync returns: they may survive or not; nothing has acted on them.
            ticket = journal.write()
        except StorageFailure:
            self._storage_failed()
            raise
        turn = _Turn(ticket, recs, self._dispatch, self._memo_acks, self._acks, self._futures)
        self._dispatch, self._memo_acks, self._acks, self._futures = [], [], [], []
        fl = self._flusher
        if fl is None or (ticket <= fl.synced and not self._written):
            # Nothing new to sync, nothing older pending (a duplicate submit, a
            # rejection): everything it rests on is durable already.
            self._act(turn)
            return
        if turn.futures and not self._compact_requested and fl.answer_after(ticket, turn.futures):
            # Answers need only durability: the flusher sets them right after
            # the sync that covers this turn (one hand-off fewer per caller).
            turn.futures = []
        # 2. Acts wait in order; 3. the flusher syncs (with every turn written
        # meanwhile) and wakes the loop, which acts next turn (_act_durable).
        if recs or turn.dispatch or turn.memo_acks or turn.acks or turn.futures:
            self._written.append(turn)
            unsent = self._unsent_n
            for w, items in turn.dispatch:
                unsent[w.slot] = unsent.get(w.slot, 0) + len(items)
        # The request itself is made right before the loop blocks (turn): the
        # flusher needs the GIL to start the sync, and gets it once we wait.
        self._sync_wanted = ticket
        if journal.rotate_due():
            # A full segment is left only once all of it is synced: wait here,
            # once per segment (64 MB), then start the next one.
            self._drain()
            try:
                journal.rotate_if_full()
            except StorageFailure:
                self._storage_failed()
                raise

    def _send_dispatches(self, sends: list[tuple[Worker, list[Dispatch]]]) -> None:
        pool = self.pool
        if sends and pool is not None:
            if not self._timed_sent:
                if self.policy.step_timeout:
                    self._timed_sent = True
                else:  # a run's own step_timeout (_step_limit, inline: once per step sent)
                    runs = self.state.runs
                    self._timed_sent = any(
                        (r := runs.get(d.run_id)) is not None and r.step_timeout
                        for _w, items in sends for d in items)
            if failpoints.ENABLED:
                failpoints.hit("supervisor.before_dispatch")
            mono = self.clock.monotonic()
            for w, items in sends:
                try:
                    pool.send(w, items, mono)
                except OSError:
                    pass  # the worker is dying; its sentinel will say so next turn
            if failpoints.ENABLED or _UNSAFE_DISPATCH_FIRST:
                # Test runs only: "after dispatch" means the steps left this process.
                for w, _items in sends:
                    if w.sender is not None:
                        w.sender.flush(1.0)
            if failpoints.ENABLED:
                failpoints.hit("supervisor.after_dispatch")

    # ---------------------------------------- entry points for other threads

    @_holding_state_lock
    def compact(self, now: float | None = None) -> bool:
        """Compact now, with the state lock held; returns whether it did (``_compact``).

        The snapshot must hold only what is durable, and the old segments must
        be synced before they are dropped: the flusher is drained first.
        """
        self._drain()
        return self._compact(now)

    @_holding_state_lock
    def status_counts(self) -> dict[str, int]:
        """Runs by status (live and archived), safe from any thread.

        A run ends only once its end is durable: until then it counts as running.
        """
        counts = self.all_counts()
        runs = self.state.runs
        for turn in self._written:
            for rec in turn.recs:
                if type(rec) is Terminated and rec.run_id not in self.outcomes:
                    run = runs.get(rec.run_id)
                    if run is not None and run.terminal:
                        counts[run.status] -= 1
                        counts[RUNNING] += 1  # as status() reports it until then
        return counts

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
