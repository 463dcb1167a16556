"""The socket's side of the supervisor loop (a mixin): fold requests, answer once durable.

The server (``server.DoorServer``, inline: its epoll fd is in the loop's
wait set) reads and decodes requests on the loop's own thread, right
before the turn folds them (``_serve_door``): no hand-off from a server
thread. Each turn folds every waiting one into the state next to the
commands and the inbox files, so requests from all connections share the turn's one
write and sync. Every answer goes through an ``intake.Future`` resolved by
the commit path once the turn's records are durable (whoever owns that
path), and the Future's callback queues it to the server thread: nothing
acknowledged over the socket can be undone by a crash. A refusal (a
conflict, a bad item, an unknown run) is answered the same way, at the end
of the same turn.

``wait`` is a subscription: answered at once if the run's end is already
durable (``outcomes``), else when the commit that makes its ``Terminated``
durable runs ``_door_terminated``. A run the live state does not know is
answered by ``_unknown_run``: the one place that decides what such a run
reads as (today ``RunNotFound``, which makes the client look for it in the
inbox and, once the archive lands, there).

A connection that asked for ends (``Hello.ends``, as ``Client`` does) gets
each run it submitted pushed as an ``Outcome`` with id ``PUSHED`` once its
end is durable (``_door_ends``, taken by ``_door_terminated``), so the wait
that follows reads it locally; the server holds each push for the
connection's next answer (one wake-up, one send). A redrive takes a pushed
end back: once a ``Redriven`` is durable, ``_door_redriven`` sends the
connection that was pushed the old end a ``Revoke`` before the turn's answers
(the retry's among them) go out, so no wait that starts after that answer
reads the old end (``_door_pushed`` remembers whom, ``PUSHED_MAX`` ends back).

A finished run soon leaves the live state for the archive, so the wait a
client sends right after its submits mostly finds it gone; the last
``RECENT_MAX`` ends (small results only) are kept in memory for those,
sparing an SQLite lookup on the loop per wait (``_door_recent``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any, Callable, Iterable

from . import quotas
from .api import RunOutcome
from .app import RunnerTable
from .archive import Identity
from .archiving import check_archived
from .blobs import value_size
from .errors import JournaledError, RunConflict, RunNotDead, RunNotFound
from .inbox import SubmitMsg, check_message, check_run_id, check_value
from .intake import Future
from .limits import check_size
from .protocol import (
    SOCKET_NAME,
    Cancel,
    Err,
    Ok,
    Ops,
    Outcome,
    Put,
    Retry,
    Revoke,
    Signal,
    Status,
    Submit,
    Wait,
    err_of,
    outcome_reply,
)
from .pushes import EVERY
from .records import Record
from .run import same_submission
from .server import DoorServer
from .state import State, outcome_of

log = logging.getLogger("journaled.supervisor")

RECENT_MAX = 16384  # ends kept for waits that come after the run left the live state
RECENT_RESULT_MAX = 4096  # bytes: a bigger result is read from the archive
# Pushed ends remembered with their connection, so a redrive takes back the one
# that may hold it; past this a redrive of an older run tells every connection.
PUSHED_MAX = 65536


def check_submit(m: SubmitMsg) -> None:
    """``check_message`` of one submission; a plain one (bytes, every option at its
    default, which always passes) in its two checks that can fail: ~4 us, not ~19."""
    if (type(m.input) is bytes and not m.headers and not m.resources and not m.runner
            and not m.key and m.priority == 0 and m.max_attempts == 0
            and m.step_timeout == 0.0):
        check_run_id(m.run_id)
        check_value("the input", m.input)
    else:
        check_message(m)


class DoorAnswers(Future):
    """Every socket answer of one turn, sent when the commit path sets it (durable).

    One per turn, queued with the turn's Futures, instead of a Future, a
    partial and a callback per request; all sent under one take of the
    server's lock. Set with an error (the supervisor stopped first), each
    request gets that error instead.
    """

    __slots__ = ("owner", "answers")

    def __init__(self, owner: DoorIntake) -> None:
        super().__init__()
        self.owner = owner
        self.answers: list[tuple[int, Any]] = []

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        if self.done():
            return
        super().set(value, error)
        door = self.owner._door
        if door is None:
            return
        if error is not None:
            door.reply_many([(cid, err_of(getattr(msg, "id", 0), error))
                             for cid, msg in self.answers])
        else:
            door.reply_many(self.answers)


class DoorIntake:
    """Mixed into the supervisor: the socket server's lifecycle and its requests."""

    state: State
    state_dir: Path
    outcomes: set[str]
    _recs: list[Record]
    _futures: list[tuple[Future, Any]]
    wake: Callable[[], None]
    _signal_cancel: Callable[[str], None]
    status: Callable[[str], RunOutcome | None]
    _archived_outcome: Callable[[str], RunOutcome | None]
    runner_table: RunnerTable
    _ops_message: Callable[[Any, float], list[Record]]
    retention: float

    def _init_door(self, serve: bool) -> None:
        self._door_serve = serve
        self._door: DoorServer | None = None
        self._door_in: deque[tuple[int, Any]] = deque()
        self._door_forgotten: deque[tuple[int, int, str]] = deque()
        # run id -> {(conn, request id)}: waits answered when its end is durable.
        self._door_waits: dict[str, set[tuple[int, int]]] = {}
        # run id -> the connection that submitted it and asked for ends (Hello.ends):
        # its Outcome is pushed once durable, unasked (popped by the commit path, or by
        # the wait that answers it instead).
        self._door_ends: dict[str, int] = {}
        # run id -> the connection its end was last pushed to (PUSHED_MAX, oldest first):
        # the one a redrive of it tells (written and read on the commit path).
        self._door_pushed: OrderedDict[str, int] = OrderedDict()
        # Taken by the loop to look-and-subscribe and by the commit path to
        # publish an end, so a wait never falls between the two.
        self._door_lock = threading.Lock()
        # run id -> its durable end, newest last (RECENT_MAX); read under the state lock.
        # An OrderedDict: a plain dict's oldest-first deletes leave holes that every
        # next(iter()) walks again (that alone was ~2 us a run at 4,096 entries).
        self._door_recent: OrderedDict[str, RunOutcome] = OrderedDict()

    def _start_door(self) -> None:
        if not self._door_serve:
            return
        server = DoorServer(self.state_dir / SOCKET_NAME, self._door_in.extend,
                            self._door_forget, self.status, inline=True)
        try:
            server.start()
        except OSError as e:  # clients fall back to the inbox: slower, never wrong
            log.warning("cannot serve %s (%s); clients use the inbox", server.path, e)
            server.close()
            return
        self._door = server

    def _close_door(self) -> None:
        if self._door is not None:
            self._door.close()
            self._door = None

    # --------------------------------------------------- server thread side

    def _door_forget(self, gone: list[tuple[int, int, str]]) -> None:
        self._door_forgotten.extend(gone)  # dropped at the next turn; no hurry

    # ------------------------------------------------------------ loop side

    def _door_pending(self) -> bool:
        return bool(self._door_in)

    def _door_fd(self) -> int:
        """The server's fd for the loop's wait set (-1: not serving)."""
        return self._door.fileno() if self._door is not None else -1

    def _door_timer(self) -> float | None:
        return self._door.next_timer() if self._door is not None else None

    def _door_timer_due(self) -> bool:
        t = self._door_timer()
        return t is not None and t <= time.monotonic()

    def _serve_door(self, mono: float) -> None:
        """One server pass on the loop (its fd was ready or a wait's timer is due)."""
        if self._door is not None:
            self._door.serve_now()

    def _run_door_requests(self, now: float) -> None:
        """Fold every request the server handed over into this turn's records."""
        if self._door_forgotten:
            with self._door_lock:
                while self._door_forgotten:
                    cid, rid, run_id = self._door_forgotten.popleft()
                    subs = self._door_waits.get(run_id)
                    if subs is not None:
                        subs.discard((cid, rid))
                        if not subs:
                            del self._door_waits[run_id]
        q = self._door_in
        # One archive query for every submitted id the live state does not know
        # (a re-submit of a run finished long ago is checked against history).
        runs = self.state.runs
        # Ids the client made for this very request (``fresh``) cannot be archived.
        known = self._archived_identities([
            m.run_id for _, req in list(q) if type(req) is Submit and not req.fresh
            for m in req.items if m.run_id not in runs])
        answers = DoorAnswers(self) if q else None
        while q:
            cid, req = q.popleft()
            t = type(req)
            if t is Wait:
                self._door_wait(cid, req)
                continue
            try:
                if t is Put:
                    reply: Any = self._door_put(req, cid)
                elif t is Submit:
                    reply = self._door_submit(req, now, known, cid)
                elif t is Cancel:
                    reply = self._door_cancel(req, now)
                elif t is Signal:
                    check_message(req.msg)
                    self._recs += self.state.signal(req.msg.run_id, req.msg.key, req.msg.data,
                                                    now)
                    reply = Ok(req.id)
                elif t is Retry:
                    reply = self._door_retry(req, now)
                elif t is Ops:  # schedules, pause/resume, fork (operating.py)
                    self._recs += self._ops_message(req.msg, now)
                    reply = Ok(req.id)
                elif t is Status:
                    out = self.status(req.run_id)
                    reply = outcome_reply(req.id, out) if out is not None else \
                        self._gone_run(req.id, req.run_id)
                else:
                    reply = Err(getattr(req, "id", 0), "ProtocolError",
                                f"unexpected request {t.__name__}")
            except (JournaledError, TypeError, ValueError) as e:
                reply = err_of(req.id, e)
            assert answers is not None
            answers.answers.append((cid, reply))
        if answers is not None and answers.answers:
            # Answered by the commit path once this turn's records are durable.
            self._futures.append((answers, None))

    def _door_submit(self, req: Submit, now: float,
                     known: dict[str, Identity], cid: int = 0) -> Ok:
        # All or nothing, as Runtime.submit_many: every item is checked (types,
        # sizes, conflicts with the state, the archive and inside the batch)
        # before any applies.
        state = self.state
        seen: dict[str, tuple[Any, dict[str, str], str]] = {}
        archived: set[str] = set()
        for m in req.items:
            check_submit(m)
            self.runner_table.check(m.runner)
            old = state.runs.get(m.run_id)
            prev = (old.input, old.headers, old.runner) if old is not None \
                else seen.get(m.run_id)
            if prev is not None and not same_submission(prev, m.input, m.headers, m.runner):
                raise RunConflict(m.run_id)
            if old is None and check_archived(known, m.run_id, m.input, m.headers, m.runner):
                archived.add(m.run_id)  # finished long ago with this input: a no-op
            seen[m.run_id] = (m.input, m.headers, m.runner)
            quotas.check_fits(m.run_id, m.resources, state.quotas.limits)  # none or all
        for m in req.items:
            if m.run_id in archived:
                continue
            # The client's clock, as from the inbox: submitted_at is when it was asked.
            self._recs += state.submit(m.run_id, m.input, m.at, m.headers, m.priority,
                                       m.max_attempts, m.step_timeout, runner=m.runner,
                                       resources=m.resources, key=m.key)
        self._want_ends(cid, [m.run_id for m in req.items])
        return Ok(req.id, len(req.items))

    def _door_put(self, req: Put, cid: int) -> Ok:
        """``_door_submit`` of one plain, fresh item in a straight line: the checks that
        can fail for it (the id, the size; a duplicate or a conflict in ``State.submit``)."""
        run_id = req.run_id
        check_run_id(run_id)
        check_size("the input", req.input)
        # The client's clock, as from the inbox: submitted_at is when it was asked.
        self._recs += self.state.submit(run_id, req.input, req.at)
        self._want_ends(cid, (run_id,))
        return Ok(req.id)

    def _want_ends(self, cid: int, run_ids: Iterable[str]) -> None:
        """A connection that asked for ends (``Hello.ends``) gets these runs' pushed once
        durable (``_door_terminated``); a re-submit's connection is the last to ask."""
        door = self._door
        if door is not None and door.wants_ends(cid):
            runs, ends = self.state.runs, self._door_ends
            for rid in run_ids:
                run = runs.get(rid)
                if run is not None and not run.terminal:
                    ends[rid] = cid

    def _door_cancel(self, req: Cancel, now: float) -> Any:
        msg = req.msg
        check_message(msg)
        was = self.status(msg.run_id)  # what the request found, as Client reports it
        if was is None:
            return self._unknown_run(req.id, msg.run_id)
        self._recs += self.state.cancel(msg.run_id, msg.reason, now)
        self._signal_cancel(msg.run_id)
        return outcome_reply(req.id, was)

    def _door_retry(self, req: Retry, now: float) -> Any:
        check_message(req.msg)
        run_id = req.msg.run_id
        run = self.state.runs.get(run_id)
        out = self.status(run_id)
        if run is None or out is None:
            return self._unknown_run(req.id, run_id)
        if not run.dead or run_id not in self.outcomes:
            raise RunNotDead(run_id, out.status.value)
        self._recs += self.state.redrive(run_id, now)
        return Ok(req.id)

    def _unknown_run(self, req_id: int, run_id: str) -> Err:
        """The answer for a run the live state does not hold (the one place to wire the archive).

        ``RunNotFound`` sends the client to its own reads (inbox, rejections,
        archive), which give the same answer the inbox door would.
        """
        return err_of(req_id, RunNotFound(run_id))

    def recent_end(self, run_id: str) -> RunOutcome | None:
        """The durable end of a run that left the live state lately (``RECENT_MAX``), if
        still within retention (past it, what the archive says wins); state lock held."""
        out = self._door_recent.get(run_id)
        if out is not None and (out.finished_at is None
                                or time.time() - out.finished_at >= self.retention):
            return None
        return out

    def _gone_run(self, req_id: int, run_id: str) -> Outcome | Err:
        """A status or wait for a run the live state does not hold: its archived outcome.

        A finished run leaves the live state soon after its end is durable,
        so most waits on a run submitted a moment ago find it archived; read
        here (one indexed SQLite lookup) rather than sending the client to
        fold the journal and list the inbox for an answer the archive holds.
        Not archived either: ``_unknown_run`` (it may wait in the inbox).
        """
        out = self.recent_end(run_id)
        if out is None:
            out = self._archived_outcome(run_id)
        if out is not None:
            return outcome_reply(req_id, out)
        return self._unknown_run(req_id, run_id)

    def _door_wait(self, cid: int, req: Wait) -> None:
        door = self._door
        if door is None:
            return
        rid = req.run_id
        run = self.state.runs.get(rid)
        if run is None:
            door.reply(cid, self._gone_run(req.id, rid))
            return
        with self._door_lock:
            if self._door_ends.get(rid) == cid:  # this wait's answer says it: no push as well
                self._door_ends.pop(rid, None)  # (unless the commit path pushed it meanwhile)
            if rid not in self.outcomes:
                self._door_waits.setdefault(rid, set()).add((cid, req.id))
                return
        door.reply(cid, outcome_reply(req.id, outcome_of(run)))

    def _door_terminated(self, run_ids: list[str]) -> None:
        """Called by the commit path once these runs' ``Terminated`` are durable."""
        door = self._door
        if door is None:
            return
        recent = self._door_recent
        runs = self.state.runs
        pop_end = self._door_ends.pop
        pushed = self._door_pushed
        pushes: list[tuple[int, RunOutcome]] = []
        for rid in run_ids:
            run = runs.get(rid)
            if run is not None and run.terminal:
                out = outcome_of(run)
                r = out.result
                if r is None or (len(r) if type(r) is bytes else value_size(r)) \
                        <= RECENT_RESULT_MAX:
                    recent.pop(rid, None)  # a redriven run's new end goes to the back
                    recent[rid] = out
                cid = pop_end(rid, None)  # a wait racing it may pop it too: both answer
                if cid is not None:
                    pushes.append((cid, out))  # a RunOutcome to reply_many: a push
                    pushed[rid] = cid
        while len(recent) > RECENT_MAX:
            recent.popitem(last=False)
        if pushes:
            while len(pushed) > PUSHED_MAX:
                pushed.popitem(last=False)
            door.reply_many(pushes)
        if not self._door_waits:
            return
        with self._door_lock:
            got = [(rid, self._door_waits.pop(rid)) for rid in run_ids if rid in self._door_waits]
        for rid, subs in got:
            run = self.state.runs.get(rid)
            for cid, req_id in subs:
                # A run already gone from the live state (archived) reads as the client's
                # own reads say.
                door.reply(cid, outcome_reply(req_id, outcome_of(run)) if run is not None else
                           self._gone_run(req_id, rid))

    def _door_redriven(self, run_ids: list[str]) -> None:
        """Called by the commit path once these runs' ``Redriven`` are durable, before the
        turn's answers: take back the ends pushed of them (``Revoke``), so a connection
        that holds one waits for the new end."""
        door = self._door
        if door is None:
            return
        pushed = self._door_pushed
        by: dict[int, list[str]] = {}
        for rid in run_ids:
            # Not remembered (pushed too long ago, or never): any connection may hold it.
            by.setdefault(pushed.pop(rid, EVERY), []).append(rid)
        door.reply_many([(cid, Revoke(ids)) for cid, ids in by.items()])
