"""Intake: what reaches the supervisor's loop from outside it, as records for the turn.

Two doors, one rule. ``Runtime`` threads queue commands (``call``) and get
a ``Future``; clients drop files into ``inbox/``. Each turn folds both into
the state, and the records go into that turn's one write. Nothing is
answered before then: a ``Future`` resolves and an inbox file is deleted
(acknowledged) only after the commit, so a crash in between reads the
file again and finds a duplicate, or leaves the caller without an answer,
never with a false one. With ``--reload`` the app's own source is watched
too: a change only flags a worker restart for the next turn.
"""

from __future__ import annotations

import _thread
import logging
import threading
from collections import deque
from pathlib import Path
from typing import Any, Callable

from . import quotas
from .app import RunnerTable
from .archive import Identity
from .archiving import check_archived
from .errors import JournaledError, RunConflict
from .inbox import (
    BatchMsg,
    CancelMsg,
    CompactMsg,
    ForkMsg,
    Inbox,
    PauseMsg,
    RedriveMsg,
    ScheduleMsg,
    SignalMsg,
    SubmitMsg,
    check_message,
)
from .records import Record
from .run import same_submission
from .state import State

log = logging.getLogger("journaled.supervisor")


class Future:
    """A result handed from the supervisor thread to a caller once it is durable.

    A bare lock, held until ``set``: a caller blocks on one ``acquire``
    (``threading.Event`` costs a Condition and a waiter lock per wait). The
    first ``set`` wins; later ones are ignored.
    """

    __slots__ = ("_lock", "_done", "value", "error", "_callbacks")

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()  # released by set()
        self._done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self._callbacks: list[Callable[[Future], None]] | None = None

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        if self._done:
            return
        self.value, self.error = value, error
        self._done = True  # after the value: a reader that sees it finds the value
        self._lock.release()
        if self._callbacks is not None:
            for cb in self._callbacks:
                cb(self)

    def add_done_callback(self, cb: Callable[["Future"], None]) -> None:
        """Call ``cb(self)`` on the thread that sets the Future (the socket's answers).

        Add it before the Future can be set (the supervisor adds it when it
        queues the Future); ``cb`` must be quick and must not raise.
        """
        if self._done:
            cb(self)
            return
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(cb)

    def done(self) -> bool:
        return self._done

    def result(self, timeout: float | None = None) -> Any:
        if not self._done:
            if not self._lock.acquire(True, -1 if timeout is None else max(0.0, timeout)):
                raise TimeoutError("the supervisor did not answer in time")
            self._lock.release()  # for any other caller waiting on the same answer
        if self.error is not None:
            raise self.error
        return self.value


class Intake:
    """The supervisor's intake (a mixin): the command queue, the inbox reader, the reload watch."""

    # What this part needs of the supervisor it is mixed into.
    state: State
    inbox: Inbox | None
    stopped: threading.Event
    _recs: list[Record]
    _acks: list[Path]
    _futures: list[tuple[Future, Any]]
    _compact_requested: bool
    wake: Callable[[], None]
    state_lock: Any
    clock: Any  # journaled.clock.Clock
    _flusher: Any
    _stopping: bool
    _storage_broken: bool
    _act_error: BaseException | None
    _carry: list[Record]
    _lease: Callable[[float, float], None]
    _commit: Callable[[list[Record]], None]
    _request_sync: Callable[[], None]
    _sync_wanted: int
    _signal_cancel: Callable[[str], None]
    _restore_archived: Callable[[str], list[Record]]
    _archived_identities: Callable[[list[str]], dict[str, Identity]]
    reload_dir: Path | None
    runner_table: RunnerTable
    _ops_message: Callable[[Any, float], list[Record]]

    def _init_intake(self) -> None:
        self._commands: deque[tuple[str, tuple[Any, ...], Future]] = deque()
        self._reload = threading.Event()  # --reload: the code changed, restart the workers
        self._reload_stop = threading.Event()
        # A folding caller runs its own sync (_fold_here), a waiter may run one
        # (Runtime.wait). Off with a call_timeout: a stuck disk must not hold a
        # caller past it, so the flusher thread does every sync then.
        self.caller_syncs = True
        # ...and the submission's own sync too (Flusher.sync_here). On: on a quiet
        # 2-core box (load ~1), serial submit+wait went from 1,051-1,325 to
        # 1,325-1,514 runs/s and from 553-697 to 427-510 us of CPU per run,
        # alternated in the same minute. Under heavy load (6-17) the two were
        # within noise of each other (317-1222 vs 527-1205 runs/s). A busy
        # flusher (load) sends submissions to the loop's turn anyway (_fold_here).
        self.submit_syncs_here = True
        # Runs' ends whose archive, door and log acts wait for the next act
        # (Acting._run_tails; set here to leave Supervisor.__init__ alone).
        self._tails: list[tuple[list[Record], list[str]]] = []
        self._defer_ends = False  # the act running now may leave them so
        self._tail_armed = False  # the loop's wait ends within TAIL_DELAY (waiting.py)

    def call(self, kind: str, *args: Any) -> Future:
        """Queue a command from another thread; the Future resolves once it is durable."""
        fut = Future()
        if self.stopped.is_set():
            fut.set(error=JournaledError("the supervisor is not running"))
            return fut
        self._commands.append((kind, args, fut))
        if kind == "submit_many" and self._fold_here():
            return fut
        self.wake()
        return fut

    def _fold_here(self) -> bool:
        """Fold, lease and write the queued commands on the caller's thread, if that is free.

        Only when the loop is between turns (the state lock is free) and no
        sync runs (a busy flusher means load: the loop gathers commands into
        one turn instead): a quiet caller's submission then reaches the
        journal without a hand-off to the loop, and (``submit_syncs_here``)
        may be synced and acted on by the caller too, after the lock is
        released: no hand-off to the flusher and back either. The same fold, lease,
        commit and sync cycle as the loop's and the flusher's, under the same
        locks, so the write-ahead order holds whoever runs them (the lease
        reaches its worker only from the cycle, after fdatasync returned).
        False: wake the loop.
        """
        fl = self._flusher
        if (fl is None or not fl.idle() or self._stopping or self._reload.is_set()
                or self._storage_broken or self._act_error is not None):
            return False
        lock = self.state_lock
        if not lock.acquire(blocking=False):
            return False
        try:
            if self.stopped.is_set() or self._compact_requested:
                return False
            now = self.clock.now()
            self._run_commands(now)
            self._lease(now, self.clock.monotonic())
            recs = self._recs
            if self._carry:
                recs += self._carry
                self._carry = []
            self._commit(recs)
            # This thread asks for the sync (the loop would at its next turn).
            ticket, self._sync_wanted = self._sync_wanted, 0
            folded = not self._compact_requested  # a compact command came with it: a turn
        except BaseException as e:  # noqa: BLE001 - the loop raises it (_act_durable)
            self._act_error = e
            return False
        finally:
            lock.release()
        if ticket and self.caller_syncs and self.submit_syncs_here:
            # The caller blocks on its answer next: it runs the sync itself (and
            # the acts after it: the lease to its worker, its own answer), with
            # the state lock free so the loop may turn meanwhile. A sync already
            # running takes the ticket on instead (Flusher.sync_here).
            fl.sync_here(ticket)
        elif ticket:
            fl.request(ticket)
        return folded

    def _run_commands(self, now: float) -> None:
        state = self.state
        cmds = self._commands
        if len(cmds) == 1:
            # The serial caller's turn: one plain run, its id minted here (no
            # archive look-up, as below), no runner, headers, resources or
            # key (Runtime.submit's fast path). What the general loop below
            # would do with it, minus every check such an item passes as is.
            kind, args, fut = cmds[0]
            if kind == "submit_many" and len(args) > 1 and args[1] and len(args[0]) == 1:
                item = args[0][0]
                if (len(item) == 9 and not item[2] and not item[6] and not item[7]
                        and not item[8] and item[0] not in state.runs):
                    cmds.popleft()
                    rid, data, _h, prio, attempts, timeout, _r, _k, _n = item
                    try:
                        self._recs += state.submit(rid, data, now, None, prio, attempts,
                                                   timeout)
                    except JournaledError as e:  # OverLimit and the like: this caller's
                        fut.set(error=e)
                        return
                    self._futures.append((fut, [rid]))
                    return
        # The commands queued so far (more may arrive meanwhile: next turn), and
        # in ONE archive query, the submitted ids the live state does not know.
        # A batch whose ids were all minted here (``new_run_id``, the caller gave
        # none: args[1] True) cannot be in the archive, which holds only ids
        # submitted before they were made: no query for it. An id the caller
        # chose (even one it minted earlier) is always looked up.
        batch_cmds = list(self._commands)
        known = self._archived_identities([
            item[0] for kind, args, _ in batch_cmds if kind == "submit_many"
            and not (len(args) > 1 and args[1]) for item in args[0]
            if item[0] not in state.runs])
        for _ in range(len(batch_cmds)):
            kind, args, fut = self._commands.popleft()
            try:
                if kind == "submit_many":
                    # All or nothing: every item is checked against the state, the
                    # archive (history) and the batch's own duplicates before any is applied.
                    batch: dict[str, tuple[Any, dict[str, str], str]] = {}
                    archived: set[str] = set()
                    for rid, data, hdrs, *rest in args[0]:
                        runner = rest[5] if len(rest) > 5 else ""
                        self.runner_table.check(runner)
                        old = state.runs.get(rid)
                        seen = (old.input, old.headers, old.runner) if old is not None \
                            else batch.get(rid)
                        if seen is not None and not same_submission(seen, data, dict(hdrs or {}),
                                                                    runner):
                            raise RunConflict(rid)
                        if old is None and check_archived(known, rid, data, hdrs, runner):
                            archived.add(rid)  # finished long ago with this input: no-op
                        batch[rid] = (data, dict(hdrs or {}), runner)
                    # (id, input, headers, priority, attempts, timeout[, resources, key, runner])
                    items = [(*item, None, "", "")[:9] for item in args[0]]
                    for rid, *_, res, _key, _runner in items:
                        if res:  # {} (no resources) fits any limits
                            quotas.check_fits(rid, quotas.check_resources(res),
                                              state.quotas.limits)  # none or all
                        elif res is not None and type(res) is not dict:
                            quotas.check_resources(res)  # its TypeError
                    for rid, data, hdrs, prio, attempts, timeout, res, key, runner in items:
                        if rid not in archived:
                            self._recs += state.submit(rid, data, now, hdrs, prio, attempts,
                                                       timeout, runner=runner, resources=res,
                                                       key=key)
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
                    self._recs += self._restore_archived(args[0])
                    self._recs += state.redrive(args[0], now)
                    self._futures.append((fut, None))
                elif kind == "ops":  # schedules, pause/resume, fork (operating.py)
                    self._recs += self._ops_message(args[0], now)
                    self._futures.append((fut, None))
                else:
                    raise ValueError(f"unknown command {kind!r}")
            except (TypeError, ValueError) as e:
                if kind != "ops":
                    raise
                fut.set(error=e)
            except JournaledError as e:
                fut.set(error=e)

    def _read_inbox(self, now: float) -> None:
        assert self.inbox is not None
        state = self.state
        found = self.inbox.scan()
        # One archive query for the turn: submitted ids the live state does not know.
        known = self._archived_identities([
            m.run_id for _, msg in found if isinstance(msg, (SubmitMsg, BatchMsg))
            for m in (msg.items if isinstance(msg, BatchMsg) else [msg])
            if isinstance(m, SubmitMsg) and m.run_id not in state.runs])
        for path, msg in found:
            try:
                if isinstance(msg, (SubmitMsg, BatchMsg)):
                    # Each submission is accepted or rejected on its own: one
                    # conflict in a batch never drops the others. A rejection is
                    # recorded before the file is acknowledged (after the commit).
                    for m in msg.items if isinstance(msg, BatchMsg) else [msg]:
                        try:
                            self._recs += self._submit_msg(m, now, known)
                        except (JournaledError, TypeError, ValueError) as e:
                            self.inbox.reject_run(m.run_id, str(e), path.name)
                    self._acks.append(path)
                    continue
                check_message(msg)
                if isinstance(msg, CancelMsg):
                    self._recs += state.cancel(msg.run_id, msg.reason, now)
                    self._signal_cancel(msg.run_id)
                elif isinstance(msg, RedriveMsg):
                    self._recs += self._restore_archived(msg.run_id)
                    self._recs += state.redrive(msg.run_id, now)
                elif isinstance(msg, CompactMsg):
                    self._compact_requested = True
                elif isinstance(msg, SignalMsg):
                    self._recs += state.signal(msg.run_id, msg.key, msg.data, now)
                elif isinstance(msg, (ScheduleMsg, PauseMsg, ForkMsg)):
                    self._recs += self._ops_message(msg, now)
            except (JournaledError, TypeError, ValueError) as e:
                if isinstance(msg, ForkMsg):  # its new id: 'status' says why, not "not found"
                    self.inbox.reject_run(msg.run_id, str(e), path.name)
                self.inbox.reject(path, str(e))
                continue
            self._acks.append(path)

    def _submit_msg(self, m: SubmitMsg, now: float,
                    known: dict[str, Identity]) -> list[Record]:
        # The clients' checks again: a file from elsewhere must not crash us later.
        check_message(m)
        self.runner_table.check(m.runner)  # the client's serving.json may be stale or absent
        if m.run_id not in self.state.runs and check_archived(known, m.run_id, m.input,
                                                              m.headers, m.runner):
            return []  # archived with this input: a duplicate, like a live one
        # The client's clock: submitted_at must not change when a pending run is taken up.
        return self.state.submit(m.run_id, m.input, m.at, m.headers, m.priority, m.max_attempts,
                                 m.step_timeout, runner=m.runner, resources=m.resources,
                                 key=m.key)

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
