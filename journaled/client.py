"""``Client``: submit, cancel and query runs from any process, supervisor or not.

Two doors, one meaning. With a supervisor listening on
``STATE/supervisor.sock``, ``submit``/``submit_many``/``cancel``/``signal``/
``retry``/``wait`` go over the socket (``connection``): the supervisor folds
them into its next turn and answers once their records are durable in the
journal, so many client processes share one fsync; it also pushes the end
of every run submitted on the connection once durable, so a ``wait`` after
the submits mostly reads it from the socket's buffer. Otherwise (nothing
listens, or the connection breaks before an answer) the same call goes
through the inbox, with the same run ids, checks, errors and answers.

A client never takes the writer's lock and never talks to workers. It
writes requests into the inbox (durable on return) and reads the journal
incrementally: each call folds only the records appended since the last
one, through the same ``State`` the supervisor uses, so what a client
reports is exactly what is durable. A torn tail being written is skipped
until it is whole; a segment removed by compaction makes the reader start
over from the snapshot. The journal holds live work only: a finished run
is looked up in ``STATE/archive.sqlite3`` (read-only, one indexed query),
asked after the journal, since a run leaves the journal only once its
archive row is committed.

Reading never creates anything: ``Client(path)`` on a mistyped path makes no
directory, and ``status`` there says ``RunNotFound``. Only ``submit``,
``cancel``, ``signal`` and ``retry`` create the inbox (each new directory's
parent fsynced).

What an acknowledged id means. ``submit`` returns once the message is
durable in the inbox *and* has passed every check the supervisor applies
(same decoder, same size limits), so it cannot be refused later for its
types or sizes. The one refusal left is a race: another client took the
same run id with other input first. The supervisor then records the
rejection before deleting the inbox file, and that id reads as follows:

* ``status``/``wait``/``history`` of an id that was never run raise
  ``SubmissionRejected`` with the reason;
* for a conflict the id names the *winner's* run (a run id is one run):
  other processes see that run; the ``Client`` object that posted the
  losing submission remembers what it posted and raises
  ``SubmissionRejected`` instead of reporting someone else's result.

``submit_many`` checks every item before posting any (types, sizes, ids,
duplicates inside the batch, conflicts this client can see): it raises
and posts nothing, or posts all. After that the supervisor takes each
item on its own, so a racing conflict on one item loses no other item.
Those checks (``submit_msgs``) and the packing into inbox files live in
``submission``, shared with ``Runtime`` and the asyncio client.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Sequence

import msgspec

from . import replay
from .api import Attempt, DeadLetter, RunOutcome, RunStatus
from .app import check_runner_name
from .archive import ArchivedRun, CachedReader
from .blobs import BlobRef, BlobStore, content_sha256, value_size
from .connection import DoorConnection, DoorLost, this_pid
from .errors import (
    RunConflict,
    RunNotDead,
    RunNotFound,
    RunNotLive,
    RunNotTerminal,
    SubmissionRejected,
)
from .inbox import (
    CancelMsg,
    RedriveMsg,
    SignalMsg,
    SubmitMsg,
    check_bytes,
    check_headers,
    check_run_id,
    check_signal_key,
    inbox_dir,
    pending_submissions,
    post,
    rejection,
    seconds,
)
from .journal import JournalTailer, list_segments
from .limits import MAX_VALUE
from .listing import dead_letter, merge_dead, merge_runs, pending_outcome
from .notify import DirWatcher
from .ops_client import OpsCalls
from .protocol import MAX_FRAME, Cancel, Ops, Retry, Signal, Wait
from .run import same_submission
from .serving import check_served_runner, served_limits
from .state import Run, State, attempts_of, outcome_of
from .submission import (  # noqa: F401 - re-exported: callers import these from here
    _BATCH_BYTES,
    _batches,
    _frame_bytes,
    _same_input,
    fits_a_frame,
    fresh_submit,
    is_plain,
    new_run_id,
    submit_msgs,
)
from .typed import decode_result

__all__ = ["Client", "check_headers", "check_run_id", "fresh_submit", "new_run_id"]

# Own submissions remembered until seen journaled (to tell a lost race apart).
_MINE_MAX = 100_000
# A plain input this long or shorter passes check_bytes and fits one frame unchecked.
_PLAIN_MAX = min(MAX_VALUE, MAX_FRAME - (64 << 10) - 1024)


def _digest(data: bytes | BlobRef, headers: dict[str, str]) -> bytes:
    """What identifies a submission for idempotency: its input's content and headers."""
    return hashlib.blake2b(msgspec.msgpack.encode([content_sha256(data), value_size(data, True),
                                                   sorted(headers.items())]),
                           digest_size=16).digest()


class Client(OpsCalls):
    """Talk to a state directory from any process.

    Args:
        state_dir: the supervisor's state directory (``str`` or path-like).
            Nothing is created until something is submitted or requested.
        blob_threshold: inputs longer than this many bytes are written as a
            blob under ``STATE/blobs/`` before the submission is posted (default
            64 KiB, or ``$JOURNALED_BLOB_THRESHOLD``); results stored as blobs
            are read back from there.
        use_socket: talk to a running supervisor over ``STATE/supervisor.sock``
            (one shared group commit for every client); ``False``, or no
            supervisor listening, uses the inbox. Same answers either way.
    """

    def __init__(self, state_dir: str | os.PathLike[str],
                 blob_threshold: int | None = None, *, use_socket: bool = True) -> None:
        self.state_dir = Path(state_dir)
        self.blobs = BlobStore(self.state_dir, blob_threshold)
        self.use_socket = use_socket
        self._local = threading.local()  # one socket connection per thread
        self._journal_dir = self.state_dir / "journal"
        self._tailer = JournalTailer(self._journal_dir)
        self.state = State()
        # What this client posted, by run id: tells its own refused submission
        # apart from the run that won the id.
        self._mine: dict[str, bytes] = {}
        # Finished runs: one indexed read of STATE/archive.sqlite3 (read-only).
        self._archive = CachedReader(self.state_dir)

    # ---------------------------------------------------------- the socket

    def _door(self) -> DoorConnection | None:
        """This thread's connection to a listening supervisor, or None (use the inbox)."""
        if not self.use_socket:
            return None
        conn: DoorConnection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.pid == this_pid():
            return conn
        # ends=True: the supervisor pushes each submitted run's end once durable, so
        # the wait that follows a submit mostly reads it locally (no round trip).
        conn = DoorConnection.open(self.state_dir, ends=True)
        self._local.conn = conn
        return conn

    def _door_call(self, make: Callable[[int], Any], timeout: float | None = None,
                   run_id: str | None = None) -> tuple[bool, Any]:
        """``(True, answer)`` from the supervisor, or ``(False, None)``: serve it from the inbox.

        The inbox serves it when nothing listens, when the run is unknown to
        the live state (it may wait in the inbox, be rejected or archived: the
        inbox path's reads tell), and when the connection breaks twice before
        an answer. Every request sent here is safe to send again that way:
        submissions and cancels are idempotent by run id, redrives act only on
        a dead run, and signals are at-least-once on both doors.

        A ``run_id`` this client posted to the inbox and has not yet seen
        journaled is served by the inbox path too: only it can tell this
        client's own refused submission apart from another client's run.
        """
        if run_id is not None and run_id in self._mine:
            return False, None
        for _ in (1, 2):  # reconnect once: a supervisor may have restarted
            conn = self._door()
            if conn is None:
                return False, None
            try:
                return True, conn.call(make, timeout)
            except DoorLost:
                self._local.conn = None
            except RunNotFound:
                return False, None
        return False, None

    def close(self) -> None:
        """Close this thread's socket connection (another call reopens it)."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    # ------------------------------------------------------------- reading

    def refresh(self) -> State:
        """Fold the records appended since the last call."""
        # Only records behind the synced mark: never an outcome a power cut could undo.
        reset, frames = self._tailer.poll_frames()
        if reset:
            self.state = State()
        return replay.apply_all(self.state, replay.decode_all(frames))

    def _pending(self) -> dict[str, SubmitMsg]:
        """Submissions still waiting in the inbox (no supervisor has taken them yet)."""
        return pending_submissions(self.state_dir)

    def never_served(self) -> bool:
        """True when no supervisor has ever run on this state directory (no journal yet)."""
        return not list_segments(self._journal_dir)

    def _live(self, run_id: str) -> Run | None:
        run = self.refresh().runs.get(run_id)
        if run is not None:
            mine = self._mine.get(run_id)
            if mine is not None:
                if mine != _digest(run.input, run.headers):
                    raise SubmissionRejected(run_id, rejection(self.state_dir, run_id) or (
                        "another submission took this run id with other input first"))
                del self._mine[run_id]  # journaled as we posted it: nothing left to tell
        return run

    def _archived(self, run_id: str) -> Run | None:
        """The run rebuilt from its archive row, if it finished and was archived.

        Asked after the journal: a run leaves the journal only once its row is
        committed, so a run the folded journal lacks is in the archive, if anywhere.
        """
        row: ArchivedRun | None = self._archive.call("get", run_id)
        if row is None:
            return None
        run = row.run()
        mine = self._mine.pop(run_id, None)
        if mine is not None and mine != _digest(run.input, run.headers):
            raise SubmissionRejected(run_id, rejection(self.state_dir, run_id) or (
                "another submission took this run id with other input first"))
        return run

    def _find(self, run_id: str) -> Run | SubmitMsg:
        """The journaled run, else its inbox submission, else the archived run; or raise."""
        run = self._live(run_id)
        if run is not None:
            return run
        msg = self._pending().get(run_id)
        if msg is not None:
            return msg
        why = rejection(self.state_dir, run_id)
        # It may have been journaled between our read and the inbox listing
        # (the supervisor deletes an inbox file only after its record is durable).
        run = self._live(run_id) or self._archived(run_id)
        if run is not None:
            return run
        if why is not None:
            raise SubmissionRejected(run_id, why)
        raise RunNotFound(run_id)

    def _run(self, run_id: str) -> Run | None:
        """The run's full record (live or archived); ``None`` while it is in the inbox."""
        found = self._find(run_id)
        return found if isinstance(found, Run) else None

    def _outcome(self, run_id: str) -> RunOutcome:
        """``status`` with a big result left as its ``BlobRef`` (nothing read)."""
        found = self._find(run_id)
        return outcome_of(found) if isinstance(found, Run) else pending_outcome(found)

    def status(self, run_id: str) -> RunOutcome:
        """Where the run is; a result stored as a blob is read into ``result``.

        Raises ``RunNotFound`` if it is neither journaled nor in the inbox, and
        ``SubmissionRejected`` if the supervisor refused its submission.
        """
        return self.blobs.resolve_outcome(self._outcome(run_id))

    def runs(self, status: str | RunStatus | None = None, since: float | None = None,
             limit: int | None = 100) -> list[RunOutcome]:
        """Runs newest first: live ones (inbox ones as ``pending``) and archived ones.

        Ordered by ``finished_at`` (a live run by ``submitted_at``), newest
        first; ``since`` (epoch seconds) keeps runs finished (live: submitted)
        at or after it; ``limit`` caps the list (``None``: all). The archive
        answers with one indexed query, whatever its size.
        """
        state = self.refresh()
        out = [outcome_of(r) for r in state.runs.values()]
        for rid, msg in self._pending().items():
            if rid not in state.runs:
                out.append(pending_outcome(msg))
        want = RunStatus(status) if status is not None else None
        rows = [] if want is not None and not want.terminal else \
            self._archive.call("runs", want and want.value, since, limit) or []
        return [self.blobs.resolve_outcome(o) for o in
                merge_runs(out, [r.outcome() for r in rows], status, since, limit)]

    def _result_value(self, run_id: str) -> bytes | BlobRef:
        out = self._outcome(run_id)
        if not out.status.terminal:
            raise RunNotTerminal(run_id, out.status.value)
        return out.result or b""  # type: ignore[return-value]

    def result(self, run_id: str, type: Any = None) -> Any:
        """The result bytes of a succeeded run; ``RunNotTerminal`` while it is live.

        With ``type`` (a Struct, ``dict``...) the msgpack result decoded as it,
        validated (``msgspec.ValidationError`` if it does not fit).
        """
        data = self.blobs.resolve(self._result_value(run_id)) or b""
        return data if type is None else decode_result(type, data)

    def result_view(self, run_id: str) -> memoryview:
        """The result as a read-only ``memoryview``: over an ``mmap`` of its blob for a big
        one (zero-copy, e.g. for ``numpy.frombuffer``), else of the bytes."""
        return self.blobs.resolve_view(self._result_value(run_id)).toreadonly()

    def open_result(self, run_id: str) -> BinaryIO:
        """The result as an open binary file, to stream a big one without loading it."""
        return self.blobs.open_value(self._result_value(run_id))

    def wait(self, run_id: str, timeout: float | timedelta | None = None) -> RunOutcome:
        """Block until the run is terminal; builtin ``TimeoutError`` if it is not in time.

        Sleeps on file-change notification of the journal and the inbox, not
        a poll loop. Raises what ``status`` raises.
        """
        limit = None if timeout is None or timeout == float("inf") else \
            seconds("timeout", timeout)
        deadline = None if limit is None else time.monotonic() + limit
        # The supervisor pushes the outcome once durable; a margin past its own
        # timeout in case it is too busy to say so.
        if isinstance(run_id, str) and run_id not in self._mine and self.use_socket:
            conn = self._door()
            end = conn.pushed_end(run_id) if conn is not None else None
            if end is not None:  # pushed by the supervisor once durable (Hello.ends)
                return self.blobs.resolve_outcome(end)
        served, out = self._door_call(lambda i: Wait(i, run_id, limit),
                                      None if limit is None else limit + 30.0, run_id) \
            if isinstance(run_id, str) else (False, None)
        if served:
            return self.blobs.resolve_outcome(out)
        out = self._outcome(run_id)  # one look first: a watcher costs ~1 ms to set up
        if out.status.terminal:
            return self.blobs.resolve_outcome(out)
        watched: tuple[Path, ...] = ()
        watcher: DirWatcher | None = None
        try:
            while True:
                # Watch what exists (a read creates nothing); rebuilt once the
                # supervisor creates the journal.
                dirs = tuple(d for d in (self._journal_dir, inbox_dir(self.state_dir))
                             if d.is_dir())
                if dirs != watched:
                    if watcher is not None:
                        watcher.close()
                    watcher, watched = DirWatcher(*dirs) if dirs else None, dirs
                out = self._outcome(run_id)
                if out.status.terminal:
                    return self.blobs.resolve_outcome(out)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"run {run_id!r} is still {out.status.value} after "
                                       f"{limit:g} s")
                # Wake at least every second: a compaction may swap directories.
                pause = 1.0 if left is None else min(left, 1.0)
                if watcher is None:
                    time.sleep(min(pause, 0.2))
                else:
                    watcher.wait(pause)
        finally:
            if watcher is not None:
                watcher.close()

    def history(self, run_id: str) -> list[Attempt]:
        """Every delivery of every step of the run, oldest first; ``[]`` while in the inbox."""
        found = self._find(run_id)
        return attempts_of(found) if isinstance(found, Run) else []

    def dead(self, limit: int | None = 100) -> list[DeadLetter]:
        """Runs whose step was dead-lettered (``failed`` with ``dead``), newest first.

        Live and archived ones, by ``finished_at``; ``limit`` caps the list (``None``: all).
        """
        live = [dead_letter(r) for r in self.refresh().runs.values() if r.dead]
        rows = self._archive.call("runs", "failed", None, limit, True) or []
        return merge_dead(live, [r.dead_letter() for r in rows], limit)

    # ------------------------------------------------------------- writing

    def submit(self, input: Any = b"", headers: dict[str, str] | None = None,
               run_id: str | None = None, *, priority: int = 0, max_attempts: int = 0,
               step_timeout: float | timedelta | None = 0.0, runner: str | None = None,
               resources: dict[str, float] | None = None, key: str | None = None) -> str:
        """Queue a run; returns its id once the request is durable in the inbox.

        ``input`` is bytes, or a msgspec Struct / dict / list... (encoded as
        msgpack, for a runner that decodes it with ``step.input(T)``).
        ``runner`` names the runner serving it (None: the supervisor's
        default); one the supervisor does not serve raises ``UnknownRunner``.

        Re-submitting an id with the same input and headers is a no-op; with
        other input it raises ``RunConflict``. Bad types raise ``TypeError`` or
        ``ValueError``, values over the limits ``InputTooLarge``, in each case
        before anything is queued. ``step_timeout`` is seconds or a
        ``timedelta`` (0 or None: the supervisor's limit). ``resources``
        (``{"gpu": 1}``) are held while a step runs, against the supervisor's
        ``--limit``s (more than a limit: ``OverLimit``); ``key`` names a tenant
        for ``--key-concurrency`` and ``--rate`` (keys are served in turn).
        """
        if is_plain(input, headers, run_id, runner, priority, max_attempts, step_timeout,
                    resources, key, self.blobs.threshold):
            # The plain submit (most calls), built as submit_msgs builds it for these
            # arguments without its general checks: each call sleeps until its ack, so
            # every line here runs on cold caches and costs several times its warm price.
            rid = new_run_id()
            tried = False
            if len(input) <= _PLAIN_MAX and self.use_socket:
                conn = getattr(self._local, "conn", None)
                if conn is not None and conn.pid == this_pid():
                    try:  # straight to this thread's connection: durable on return
                        conn.submit_plain(rid, input, time.time())
                        return rid
                    except DoorLost:  # the general path reconnects or uses the inbox
                        self._local.conn = None
                        tried = True
            msg = SubmitMsg(rid, check_bytes("the input", input), time.time())
            # After a try that may have taken, the id is no longer fresh: it is looked up
            # (in the live state, the inbox and the archive) as a caller's own id is.
            return self._post([msg], [rid], tried)[0]
        return self.submit_many([input], headers, [run_id] if run_id is not None else None,
                                priority=priority, max_attempts=max_attempts,
                                step_timeout=step_timeout, runner=runner,
                                resources=resources, key=key)[0]

    def submit_many(self, inputs: Iterable[Any], headers: dict[str, str] | None = None,
                    run_ids: Sequence[str] | None = None, *, priority: int = 0,
                    max_attempts: int = 0, step_timeout: float | timedelta | None = 0.0,
                    runner: str | None = None, resources: dict[str, float] | None = None,
                    key: str | None = None) -> list[str]:
        """Queue many runs with one inbox file and one fsync (a few for huge batches).

        All or nothing up to the inbox: every item is checked (and every
        conflict this client can see raises ``RunConflict``) before any is
        posted. The supervisor then takes each item on its own; see the
        module docstring for a conflict that races another client.
        """
        if runner:
            check_served_runner(self.state_dir, check_runner_name(runner))
        # The supervisor's limits matter only to a run asking for resources (a stat
        # of serving.json each call otherwise, for a check that cannot fail).
        items, ids = submit_msgs(inputs, headers, run_ids, priority, max_attempts, step_timeout,
                                 self.blobs, runner, resources=resources, key=key,
                                 limits=served_limits(self.state_dir) if resources else None)
        return self._post(items, ids, run_ids is not None)

    def _post(self, items: list[SubmitMsg], ids: list[str], given: bool) -> list[str]:
        """Checked submissions to the supervisor: over the socket, else into the inbox.

        ``given``: the caller chose the ids (a re-submit is possible: looked up).
        """
        if items and fits_a_frame(items):
            # Durable in the journal on return. A broken connection falls through
            # to the inbox with the same ids: a no-op if the first try took.
            served, _ = self._door_call(fresh_submit(items, not given))
            if served:
                return ids
        fresh = items
        if given:
            state = self.refresh()
            waiting = self._pending()
            fresh = []
            for m in items:
                old = state.runs.get(m.run_id) or waiting.get(m.run_id)
                if old is not None:
                    if not same_submission((old.input, old.headers, old.runner), m.input,
                                           m.headers, m.runner):
                        raise RunConflict(m.run_id)
                    continue
                fresh.append(m)
            # Across history: ids the journal no longer has, in one archive query.
            known = self._archive.call("identities", [m.run_id for m in fresh]) or {}
            if known:
                kept = []
                for m in fresh:
                    seen = known.get(m.run_id)
                    if seen is None:
                        kept.append(m)
                    elif seen != (content_sha256(m.input), m.headers, m.runner):
                        raise RunConflict(m.run_id)
                fresh = kept
        for msg in _batches(fresh):
            post(self.state_dir, msg)
        for m in items:
            self._mine[m.run_id] = _digest(m.input, m.headers)
        while len(self._mine) > _MINE_MAX:  # a long-lived client forgets its oldest
            del self._mine[next(iter(self._mine))]
        return ids

    def cancel(self, run_id: str, reason: str = "cancelled") -> RunOutcome:
        """Ask for the run to be cancelled; returns its status as seen now.

        A terminal status in the answer means the cancel lost the race.
        """
        check_run_id(run_id)
        served, was = self._door_call(
            lambda i: Cancel(i, CancelMsg(run_id, reason, time.time())), run_id=run_id)
        if served:
            return self.blobs.resolve_outcome(was)
        out = self.status(run_id)
        if not out.status.terminal:
            post(self.state_dir, CancelMsg(run_id, reason, time.time()))
        return out

    def signal(self, run_id: str, key: str, data: bytes = b"") -> None:
        """Send ``data`` to the run's ``ContinueOnSignal(key=...)``; buffered until it waits.

        Raises ``ValueError`` for an empty key, ``InputTooLarge`` for data over
        the limit, ``RunNotFound`` for an unknown run and ``RunNotLive`` for a
        finished one.
        """
        check_run_id(run_id)
        check_signal_key(key)
        raw = check_bytes("the signal data", data)
        served, _ = self._door_call(
            lambda i: Signal(i, SignalMsg(run_id, key, raw, time.time())), run_id=run_id)
        if served:
            return
        out = self.status(run_id)
        if out.status.terminal:
            raise RunNotLive(run_id, out.status.value)
        post(self.state_dir, SignalMsg(run_id, key, raw, time.time()))

    # Operator calls (ops_client.OpsCalls): through the inbox, read from the journal.

    def _send_ops(self, msg: Any) -> None:
        """Over the socket (answered once journaled, with its error), else one inbox file."""
        served, _ = self._door_call(lambda i: Ops(i, msg))
        if not served:
            post(self.state_dir, msg)  # durable when this returns; acted on at the next read

    def _ops_state(self) -> State:
        return self.refresh()

    def _ops_run(self, run_id: str) -> Run | None:
        try:
            found = self._find(run_id)
        except RunNotFound:
            return None
        if not isinstance(found, Run):
            raise ValueError(f"run {run_id} has not started yet (it waits in the inbox)")
        return found

    def retry(self, run_id: str) -> None:
        """Redrive a dead-lettered run's step as a new attempt series.

        Raises ``RunNotDead`` for a run with no dead-lettered step.
        """
        check_run_id(run_id)
        try:
            served, _ = self._door_call(lambda i: Retry(i, RedriveMsg(run_id, time.time())),
                                        run_id=run_id)
        finally:
            conn = getattr(self._local, "conn", None)
            if conn is not None:  # an end pushed before (read by now) is no longer its end
                conn.pushed_end(run_id)
        if served:
            return
        found = self._find(run_id)
        if not isinstance(found, Run) or not found.dead:
            status = found.status if isinstance(found, Run) else RunStatus.PENDING.value
            raise RunNotDead(run_id, str(status))
        post(self.state_dir, RedriveMsg(run_id, time.time()))
