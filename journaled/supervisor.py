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
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
import threading
import time
from collections import deque
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any, Callable, TypeVar, cast

from . import dispatch, failpoints, replay
from .api import RunOutcome, RunStatus, Signal
from .errors import JournaledError, RunConflict, StorageFailure
from .executors import make_executor
from .hooks import HookRunner
from .inbox import (
    BatchMsg,
    CancelMsg,
    CompactMsg,
    Inbox,
    RedriveMsg,
    SignalMsg,
    SubmitMsg,
    check_message,
)
from .journal import Journal, StateLock
from .knobs import warn_test_knobs
from .live import (
    IDLE_STATUS_INTERVAL,
    STATUS_INTERVAL,
    LiveStatus,
    LiveStep,
    clear_status,
    write_status,
)
from .pool import Dispatch, InFlight, Pool, Worker
from .records import CancelRequested, Record, Redriven, Snapshot, Terminated, encode
from .state import Policy, State, WorkerResult, outcome_of

log = logging.getLogger("journaled.supervisor")

DAY = 86400.0
RETENTION_CHECK = 300.0  # seconds between checks for finished runs past retention

# Test-only: break the write-ahead rule on purpose (send leases before they are
# synced) to prove that crash tests in power-loss mode catch it. Never a flag.
_UNSAFE_DISPATCH_FIRST = os.environ.get("JOURNALED_UNSAFE_DISPATCH_BEFORE_SYNC") == "1"


def block_name(state_dir: Path) -> str:
    """Shared-memory name of a state directory's cancel block (one supervisor each)."""
    digest = hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:16]
    return f"journaled-{digest}"


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


class Future:
    """A result handed from the supervisor thread to a caller once it is durable."""

    __slots__ = ("_ev", "value", "error")

    def __init__(self) -> None:
        self._ev = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        self._ev.set()

    def result(self, timeout: float | None = None) -> Any:
        if not self._ev.wait(timeout):
            raise TimeoutError("the supervisor did not answer in time")
        if self.error is not None:
            raise self.error
        return self.value


class Supervisor:
    """Owns the journal, the state machine and the pool; ``turn()`` is one loop pass."""

    def __init__(self, state_dir: str | os.PathLike[str], runner: Any, *, workers: int = 2,
                 policy: Policy | None = None, on_terminal: Callable[[RunOutcome], Any] | None
                 = None, cancel_grace: float = 2.0, drain_timeout: float = 30.0,
                 preload: list[str] | None = None, retention: float = 7 * DAY,
                 compact_bytes: int = 256 << 20, unsafe_no_fsync: bool = False,
                 import_string: str = "", reload_dir: str | os.PathLike[str] | None = None,
                 executor: str = "local") -> None:
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
        self.reload_dir = Path(reload_dir) if reload_dir is not None else None
        self._reload = threading.Event()
        self._reload_stop = threading.Event()
        self.reloads = 0
        self.state = State(self.policy)
        self.journal = Journal(self.state_dir / "journal", unsafe_no_fsync=unsafe_no_fsync)
        self.lock = StateLock(self.state_dir)
        self.pool: Pool | None = None
        self.inbox: Inbox | None = None
        self._commands: deque[tuple[str, tuple[Any, ...], Future]] = deque()
        self._wake_r, self._wake_w = -1, -1
        self._recs: list[Record] = []
        self._carry: list[Record] = []  # records made after a commit, for the next one
        self._acks: list[Path] = []
        self._futures: list[tuple[Future, Any]] = []
        self._dispatch: list[tuple[Worker, list[Dispatch]]] = []
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
        self.steps_done = 0
        self._rng = random.Random()
        self._wait_map: dict[Any, tuple[str, Worker]] = {}
        self._startup_deaths = 0
        self._compact_requested = False
        self._status_due = 0.0
        self._counts_due = 0.0
        self._counts: dict[str, int] = {}
        self._started_wall = time.time()
        self._memo_acks: list[tuple[Worker, int]] = []
        self._next_size_check = 0
        self.compactions = 0
        self.compaction_failures = 0
        self._snapshot_bytes = 0  # size of the last snapshot written: the next trigger is 2x
        self._compact_after = 0.0  # monotonic: no automatic retry of a failed compaction before
        self._retention_due = time.monotonic() + RETENTION_CHECK
        self._kill_seq: dict[int, int] = {}  # slot -> the step whose own deadline killed it
        self._respawn_at: dict[int, float] = {}  # slot -> monotonic respawn time (back-off)
        self._respawn_delay = 0.0
        self._hooks: HookRunner | None = None  # started with the first hook to fire

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
            self.inbox = Inbox(self.state_dir)
            self.pool = make_executor(self.executor, self.import_string or self.runner,
                                      self.workers, self.preload, block_name(self.state_dir),
                                      state_dir=self.state_dir)
            if hasattr(self.pool, "on_ready"):
                self.pool.on_ready = self.wake  # a remote executor came back: lease again
            self.pool.start()
            self._wait_map = self.pool.wait_objects()
            self.inbox.watch(self.wake)
            if self.reload_dir is not None:
                threading.Thread(target=self._watch_code, daemon=True,
                                 name="journaled-reload").start()
            self._read_inbox(time.time())
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
        recs = state.recover(now, os.getpid(), self.import_string,
                             hooks=self.on_terminal is not None)
        self.outcomes.update(r.run_id for r in state.runs.values() if r.terminal)
        self._write(recs)
        self._after_commit(recs)
        if self.on_terminal is not None:
            # Owed hooks from before the crash; recovery's own dead letters are queued already.
            queued = self._hooks.owed() if self._hooks is not None else set()
            for rid in sorted(self.state.unhooked - queued):
                self._fire_hook(rid)

    def _watch_code(self) -> None:
        """--reload: flag a worker restart when a .py file under the app's directory changes."""
        import watchfiles

        assert self.reload_dir is not None
        for changes in watchfiles.watch(self.reload_dir, watch_filter=watchfiles.PythonFilter(),
                                        stop_event=self._reload_stop, raise_interrupt=False,
                                        debounce=300):
            names = sorted({Path(p).name for _, p in changes})
            log.warning("code changed (%s); restarting workers after their current steps",
                        ", ".join(names[:3]) + (" …" if len(names) > 3 else ""))
            self._reload.set()
            self.wake()

    def _restart_workers(self) -> None:
        """Stop every worker after its running step; each is replaced when it exits."""
        self._reload.clear()
        self.reloads += 1
        pool = self.pool
        assert pool is not None
        self._respawn_delay = 0.0
        for slot in self._respawn_at:  # backed off after a broken import: try the new code now
            self._respawn_at[slot] = 0.0
        for w in pool.workers:
            if w.proc is not None:
                w.kill_reason = "reload"
                pool.stop(w)

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
                and self.inbox is not None and not self.inbox.scan_pending()
                and (self._hooks is None or not self._hooks.busy()))

    def _all_workers_gone(self) -> bool:
        return self.pool is None or all(w.proc is None for w in self.pool.workers)

    def close(self) -> None:
        if self._hooks is not None:
            self._hooks.close()  # hooks not yet delivered are owed to the next start
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

    # ------------------------------------------------------------ commands

    def call(self, kind: str, *args: Any) -> Future:
        """Queue a command from another thread; the Future resolves once it is durable."""
        fut = Future()
        if self.stopped.is_set():
            fut.set(error=JournaledError("the supervisor is not running"))
            return fut
        self._commands.append((kind, args, fut))
        self.wake()
        return fut

    def _run_commands(self, now: float) -> None:
        state = self.state
        while self._commands:
            kind, args, fut = self._commands.popleft()
            try:
                if kind == "submit_many":
                    # All or nothing: every item is checked against the state (and
                    # the batch's own duplicates) before any is applied.
                    batch: dict[str, tuple[bytes, dict[str, str]]] = {}
                    for rid, data, hdrs, *_ in args[0]:
                        old = state.runs.get(rid)
                        seen = (old.input, old.headers) if old is not None else batch.get(rid)
                        if seen is not None and seen != (data, dict(hdrs or {})):
                            raise RunConflict(rid)
                        batch[rid] = (data, dict(hdrs or {}))
                    for rid, data, hdrs, prio, attempts, timeout in args[0]:
                        self._recs += state.submit(rid, data, now, hdrs, prio, attempts, timeout)
                    self._futures.append((fut, [item[0] for item in args[0]]))
                elif kind == "cancel":
                    run_id, reason = args
                    self._recs += state.cancel(run_id, reason, now)
                    self._signal_cancel(run_id)
                    self._futures.append((fut, state.runs[run_id].status))
                elif kind == "signal":
                    self._recs += state.signal(*args, now=now)
                    self._futures.append((fut, None))
                elif kind == "compact":
                    self._compact_requested = True
                    self._futures.append((fut, None))
                elif kind == "redrive":
                    self._recs += state.redrive(args[0], now)
                    self._futures.append((fut, None))
                else:
                    raise ValueError(f"unknown command {kind!r}")
            except JournaledError as e:
                fut.set(error=e)

    def _read_inbox(self, now: float) -> None:
        assert self.inbox is not None
        state = self.state
        for path, msg in self.inbox.scan():
            try:
                if isinstance(msg, (SubmitMsg, BatchMsg)):
                    # Each submission is accepted or rejected on its own: one
                    # conflict in a batch never drops the others. A rejection is
                    # recorded before the file is acknowledged (after the commit).
                    for m in msg.items if isinstance(msg, BatchMsg) else [msg]:
                        try:
                            self._recs += self._submit_msg(m, now)
                        except (JournaledError, TypeError, ValueError) as e:
                            self.inbox.reject_run(m.run_id, str(e), path.name)
                    self._acks.append(path)
                    continue
                check_message(msg)
                if isinstance(msg, CancelMsg):
                    self._recs += state.cancel(msg.run_id, msg.reason, now)
                    self._signal_cancel(msg.run_id)
                elif isinstance(msg, RedriveMsg):
                    self._recs += state.redrive(msg.run_id, now)
                elif isinstance(msg, CompactMsg):
                    self._compact_requested = True
                elif isinstance(msg, SignalMsg):
                    self._recs += state.signal(msg.run_id, msg.key, msg.data, now)
            except (JournaledError, TypeError, ValueError) as e:
                self.inbox.reject(path, str(e))
                continue
            self._acks.append(path)

    def _submit_msg(self, m: SubmitMsg, now: float) -> list[Record]:
        # The clients' checks again: a file from elsewhere must not crash us later.
        check_message(m)
        # The client's clock: submitted_at must not change when a pending run is taken up.
        return self.state.submit(m.run_id, m.input, m.at, m.headers, m.priority, m.max_attempts,
                                 m.step_timeout)

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

    def _compaction_due(self, mono: float) -> bool:
        """Asked for; the journal outgrew its last snapshot; or finished runs expired."""
        if self._compact_requested:
            return True
        if mono < self._compact_after:
            return False  # the last one failed: do not rebuild the state every turn
        if self.journal.bytes_written >= self._next_size_check:
            # Stat the segments only every few MB written, not every turn. Relative
            # to the last snapshot: a big live state must not compact in a loop.
            self._next_size_check = self.journal.bytes_written + (4 << 20)
            if self.journal.size_bytes > max(self.compact_bytes, 2 * self._snapshot_bytes):
                return True
        if mono >= self._retention_due:
            self._retention_due = mono + RETENTION_CHECK
            return self.state.expired(time.time(), self.retention, self.on_terminal is not None)
        return False

    @_holding_state_lock
    def compact(self, now: float | None = None) -> bool:
        """Snapshot the state into a new base segment; drop old segments and expired runs.

        Returns whether it compacted. A failure to build or write the snapshot
        (a run too large for a record, say) is logged and the old journal,
        which is still valid, stays in use; only a ``StorageFailure`` stops us.
        """
        now = time.time() if now is None else now
        self._compact_requested = False
        try:
            parts = self.state.snapshot(now, self.retention, hooks=self.on_terminal is not None)
            bodies = [encode(p) for p in parts]
            # The snapshot is built from the state after the last commit, so it
            # holds what is durable; the journal syncs it before the old
            # segments go (see Journal.compact for each crash window).
            self.journal.compact(bodies)
        except StorageFailure:
            raise
        except Exception as e:  # noqa: BLE001 - the old journal is intact: keep serving
            self.compaction_failures += 1
            wait = min(900.0, 60.0 * 2 ** min(self.compaction_failures - 1, 4))
            self._compact_after = time.monotonic() + wait
            log.error("compaction failed; keeping the old journal, which is still valid, "
                      "and retrying in %.0f s: %s: %s", wait, type(e).__name__, e)
            return False
        self._snapshot_bytes = sum(len(b) for b in bodies)
        self._swap_in(parts)
        self.compactions += 1
        self.compaction_failures = 0
        log.info("compacted the journal: %d runs kept, %.1f MB", len(self.state.runs),
                 self.journal.size_bytes / 1e6)
        return True

    def _swap_in(self, parts: list[Snapshot]) -> None:
        """Fold the snapshot into a fresh State (dropping expired runs) and swap it in.

        Built beside the live state and installed with one assignment, so a
        reader on another thread sees the old state or the new, never half.
        """
        fresh = State(self.policy)
        fresh.apply_all(parts)
        fresh.records_applied = self.state.records_applied
        self.state = fresh
        self.outcomes.intersection_update(fresh.runs)

    def _write_status(self, mono: float) -> None:
        """Publish a live view for 'journaled watch' (not durable, not the source of truth).

        Called on the loop thread only, busy or idle, so the age of the last
        publish measures the loop itself: 'watch' calls a supervisor whose
        status stopped changing while it holds the lock hung.
        """
        self._status_due = mono + (STATUS_INTERVAL if self.state.in_flight
                                   else IDLE_STATUS_INTERVAL)
        pool = self.pool
        assert pool is not None
        now = time.time()
        flights = []
        for w in pool.workers:
            running = pool.running_seq(w)
            pseq, done, total, msg = pool.progress(w)
            for i, item in enumerate(w.outstanding):
                run = self.state.runs.get(item.run_id)
                if run is None:
                    continue
                started = item.seq == running or (i == 0 and running == 0)
                flights.append(LiveStep(
                    item.run_id, run.step, item.attempt, w.slot, w.pid or 0,
                    now - (mono - w.head_started) if i == 0 else None,
                    "running" if started else "queued",
                    done if pseq == item.seq else None,
                    total if pseq == item.seq else None,
                    msg if pseq == item.seq else ""))
        j = self.journal
        if len(self.state.runs) < 20_000 or mono >= self._counts_due:
            # Counting is O(runs): on a big state do it every few seconds only.
            self._counts = self.state.status_counts()
            self._counts_due = mono + 5.0
        live = LiveStatus(os.getpid(), self.import_string, self.workers, self._started_wall, now,
                          self.steps_done, j.syncs, j.records_written, j.size_bytes,
                          self._counts, flights, self._stopping)
        write_status(self.state_dir, live)
        self.live = live  # for the CLI's status line: a finished view, never mutated

    def _results(self, w: Worker, done: list[tuple[InFlight, WorkerResult]], now: float) -> None:
        complete = self.state.complete
        recs = self._recs
        rng = self._rng.random
        for item, res in done:
            if res.kind == "revoked":  # skipped unstarted (the worker was told to stop)
                recs += self.state.release(item.run_id, item.attempt, False, now)
                continue
            if self._shutdown_cancelled and item.cancel_at and res.kind in ("cancel", "cancelled"):
                # Our own shutdown set that token: the step was interrupted, not cancelled,
                # and a deploy is no crash: it counts toward nothing.
                recs += self.state.release(item.run_id, item.attempt, True, now, shutdown=True)
                continue
            recs += complete(item.run_id, item.attempt, res, now, rng())
        self.steps_done += len(done)

    def _worker_messages(self, w: Worker) -> None:
        """Memo puts: journaled this turn, acknowledged to the worker after the commit."""
        state = self.state
        for put in w.memo_puts:
            item = next((i for i in w.outstanding if i.seq == put.seq), None)
            if item is not None:
                self._recs += state.memo_put(item.run_id, item.attempt, put.key, put.value)
            self._memo_acks.append((w, put.seq))
        w.memo_puts.clear()

    def _view(self, w: Worker) -> dispatch.WorkerView:
        """What the pure dispatch decisions need of ``w`` (the head's step limit only)."""
        pool = self.pool
        assert pool is not None
        items = tuple(dispatch.StepView(i.seq, i.run_id, i.attempt, i.cancel_at,
                                        self._step_limit(i.run_id) if n == 0 else 0.0)
                      for n, i in enumerate(w.outstanding))
        alive = w.proc is not None
        return dispatch.WorkerView(w.slot, items, pool.running_seq(w) if alive else 0,
                                   w.head_started, w.avg_step, alive and not w.stopping,
                                   pool.depth(w) if alive else 0)

    def _kill(self, w: Worker, reason: str, seq: int) -> None:
        """Kill ``w`` for step ``seq``'s sake: only that step may be charged for it."""
        pool = self.pool
        assert pool is not None
        if w.proc is not None and not w.kill_reason:
            self._kill_seq[w.slot] = seq
        pool.kill(w, reason)

    def _death_message(self, w: Worker, pid: int | None, code: int | None) -> str:
        why = getattr(self.pool, "death_reason", None)
        if why is not None:
            return str(why(w, code))
        return f"worker {w.slot} (pid {pid}) {dispatch.signal_name(code)}"

    def _worker_died(self, w: Worker, now: float) -> None:
        pool = self.pool
        assert pool is not None
        try:
            while w.conn is not None and w.conn.poll(0):
                self._results(w, pool.read(w, time.monotonic()), now)
        except (EOFError, OSError):
            pass
        view = self._view(w)
        running = view.running_seq
        reason = w.kill_reason
        kill_seq = self._kill_seq.pop(w.slot, 0)
        pid = w.pid
        code = pool.reap(w)
        died = self._death_message(w, pid, code)
        w.outstanding.clear()
        state = self.state
        rng = self._rng.random
        for item, verdict in dispatch.worker_lost(view.items, running, reason, kill_seq,
                                                  self._stopping):
            run = state.runs.get(item.run_id)
            step = run.step if run is not None else -1
            if verdict == dispatch.RELEASE:
                self._recs += state.release(item.run_id, item.attempt, False, now)
            elif verdict == dispatch.ABANDON:
                self._recs += state.release(item.run_id, item.attempt, True, now)
            elif verdict == dispatch.INTERRUPT:
                self._recs += state.release(item.run_id, item.attempt, True, now,
                                            shutdown=True)
            elif verdict == dispatch.CANCELLED:
                self._recs += state.complete(item.run_id, item.attempt, WorkerResult(
                    "cancelled", error="cancelled; its worker was killed after the grace "
                    "period"), now, rng())
            elif verdict == dispatch.FAIL_TIMEOUT:
                limit = self._step_limit(item.run_id)
                log.warning("run %s step %d attempt %d timed out after %g s (step_timeout=%g);"
                            " killing its worker", item.run_id, step, item.attempt, limit, limit)
                self._recs += state.complete(item.run_id, item.attempt, WorkerResult(
                    "timeout", error=f"step timed out after {limit:g} s (step_timeout="
                    f"{limit:g}) and its worker was killed"), now, rng())
            else:  # FAIL_DIED
                log.warning("%s in run %s step %d attempt %d%s", died, item.run_id, step,
                            item.attempt, "" if self._stopping else "; respawning")
                self._recs += state.complete(item.run_id, item.attempt, WorkerResult(
                    "worker_died", error=f"{died} during the step"), now, rng())
        self._startup_death(w, running, reason, code, died)
        self._wait_map = pool.wait_objects()

    def _startup_death(self, w: Worker, running: int, reason: str, code: int | None,
                       died: str) -> None:
        """Respawn ``w``; stop only if fresh workers keep *exiting* before any step.

        A runner that cannot import exits with an error code at start-up, every
        time: that is a clear stop. A worker killed by a signal (the OOM killer,
        an operator, a dying helper process) is no verdict on the runner: back
        off the respawn instead, so the service never goes down for it.
        """
        pool = self.pool
        assert pool is not None
        if self._stopping:
            return  # a worker told to stop exits; no verdict on the runner, no respawn
        if w.ever_ran or running or reason:
            self._startup_deaths = 0  # it got as far as a step (or we killed it)
            self._respawn_delay = 0.0
        elif code is not None and code > 0 and self.reload_dir is not None:
            # --reload: the code is mid-edit; keep retrying (backed off) until it imports.
            self._respawn_delay = min(5.0, max(0.5, 2 * self._respawn_delay))
            log.warning("%s at start-up (does the code import?); retrying in %.1f s",
                        died, self._respawn_delay)
            self._respawn_at[w.slot] = time.monotonic() + self._respawn_delay
            return
        elif code is not None and code > 0:
            self._startup_deaths += 1
            if self._startup_deaths >= 5:
                raise JournaledError(
                    f"worker processes keep dying at start-up ({died}); check that the "
                    "runner's module imports cleanly in a fresh process (guard script code "
                    "with 'if __name__ == \"__main__\":')")
        else:
            self._respawn_delay = min(5.0, max(0.1, 2 * self._respawn_delay))
            log.warning("%s at start-up; respawning in %.1f s", died, self._respawn_delay)
            self._respawn_at[w.slot] = time.monotonic() + self._respawn_delay
            return
        if not self._stopping:
            pool.respawn(w)

    def _respawn_due(self, mono: float) -> None:
        """Respawn workers whose back-off after a start-up kill is over."""
        pool = self.pool
        assert pool is not None
        for w in pool.workers:
            at = self._respawn_at.get(w.slot)
            if at is not None and mono >= at:
                del self._respawn_at[w.slot]
                if not self._stopping and w.proc is None:
                    pool.respawn(w)
                    self._wait_map = pool.wait_objects()

    def _deadlines(self, mono: float, now: float) -> None:
        pool = self.pool
        assert pool is not None
        if self._stopping and not self._shutdown_cancelled and mono >= self._drain_deadline:
            # Drain time is up: ask running steps to stop, kill them after the grace.
            self._shutdown_cancelled = True
            for w in pool.workers:
                if w.outstanding:
                    pool.cancel(w, w.outstanding[0], self.cancel_grace, mono)
        for w in pool.workers:
            if not w.outstanding or w.proc is None:
                continue
            due = dispatch.kill_due(self._view(w), mono, self._shutdown_cancelled)
            if due is not None:
                self._kill(w, *due)

    def _step_limit(self, run_id: str) -> float:
        """Seconds a step of this run may take (0 = no limit); a run's own option wins."""
        run = self.state.runs.get(run_id)
        return run.step_timeout if run is not None and run.step_timeout else \
            self.policy.step_timeout

    @staticmethod
    def _stuck_after(w: Worker) -> float:
        """How long a worker's head step may run before the steps behind it are taken back."""
        return dispatch.stuck_after(w.avg_step)

    def _next_timeout(self) -> float | None:
        if self._carry or self._commands:
            return 0.0
        now = time.time()
        mono = time.monotonic()
        times: list[float] = []  # monotonic
        due = self.state.next_due()
        if due is not None:
            times.append(mono + max(0.0, due - now))
        pool = self.pool
        assert pool is not None
        views = [self._view(w) for w in pool.workers]
        for v in views:
            t = dispatch.next_deadline(v, mono)
            if t is not None:
                times.append(t)
        t = dispatch.next_steal(views)
        if t is not None:
            times.append(t)
        if self._stopping and not self._shutdown_cancelled:
            times.append(self._drain_deadline)
        # The live view, busy or idle: its age is how 'watch' tells a hung loop.
        times.append(self._status_due)
        times.extend(self._respawn_at.values())
        times.append(self._retention_due)
        if not times:
            return None
        return min(max(0.0, min(times) - mono) + 0.0005, 5.0)

    def _steal(self, mono: float) -> bool:
        """An idle worker and nothing ready: take back steps queued behind a long one.

        Returns whether anything was taken back (it is ready again at once).
        """
        pool = self.pool
        assert pool is not None
        if not hasattr(pool, "revoke_queued"):
            return False
        took = False
        by_slot = {w.slot: w for w in pool.workers}
        for slot in dispatch.steal_candidates([self._view(w) for w in pool.workers], mono):
            for item in pool.revoke_queued(by_slot[slot]):
                self._recs += self.state.release(item.run_id, item.attempt)
                took = True
        return took

    def _lease(self, now: float, mono: float) -> None:
        pool = self.pool
        assert pool is not None
        state = self.state
        if not state.has_ready() and (state.next_due() or now + 1) > now:
            if not self._steal(mono):
                return
        recs = self._recs
        by_slot = {w.slot: w for w in pool.workers}
        plan = dispatch.lease_plan([self._view(w) for w in pool.workers], state.ready_count())
        for slot, want in plan:
            w = by_slot[slot]
            runs = state.due_runs(now, want)
            if not runs:
                break
            items = []
            for run in runs:
                rec = state.lease(run, w.slot, now)
                recs.append(rec)
                woken = state.woken_by(run)
                items.append(Dispatch(pool.next_seq(), run.run_id, run.step, rec.attempt,
                                      run.payload, run.headers,
                                      Signal(*woken) if woken is not None else None,
                                      run.memos or None))
            self._dispatch.append((w, items))

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
        with self.cond:
            self.cond.notify_all()
        if self.on_terminal is not None:
            for rid in terminated:
                self._fire_hook(rid)

    def _signal_cancel(self, run_id: str) -> None:
        pool = self.pool
        assert pool is not None
        mono = time.monotonic()
        # Set before the CancelRequested record is synced: the token is advisory,
        # and whatever the step answers is journaled after that record anyway.
        for w in pool.workers:
            for item in w.outstanding:
                if item.run_id == run_id:
                    if not item.cancel_at:
                        pool.cancel(w, item, self.cancel_grace, mono)
                    return

    def _fire_hook(self, run_id: str) -> None:
        """Hand a durable outcome to the hook thread (never call user code on the loop)."""
        run = self.state.runs[run_id]
        outcome = outcome_of(run)
        self.outcomes.add(run_id)
        if failpoints.ENABLED:
            failpoints.hit("supervisor.before_hook")
        assert self.on_terminal is not None
        if self._hooks is None:
            self._hooks = HookRunner(self.on_terminal, self.wake)
        self._hooks.submit(run_id, outcome)

    def _hooks_delivered(self) -> None:
        """Hooks that returned: HookDelivered goes out with the next commit (at least once)."""
        if self._hooks is not None:
            state = self.state
            for rid in self._hooks.delivered():
                self._carry += state.hook_delivered(rid)

    # -------------------------------------------------------------- queries

    @_holding_state_lock
    def status_counts(self) -> dict[str, int]:
        """Runs by status, safe from any thread."""
        return self.state.status_counts()

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
