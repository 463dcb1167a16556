"""The socket server's writing half (a mixin of ``server.DoorServer``): answers out.

Each connection (``_Conn``) has a bounded queue of answer bytes. ``reply``
and ``reply_many`` may be called from any thread and never wait: an answer
to a connection with nothing queued is written by the calling thread itself
(a non-blocking ``send`` under the pass lock, which it only ever tries);
when another thread holds that lock, the answers are queued and that thread
sends them as it lets go (``_unlock``: no wake-up spent); what a connection
cannot take now waits in its queue for a pass (its socket registered for
writing, or the server's fd made readable, ``_poke``). A connection whose
queue passes ``OUT_LIMIT`` is dropped with a log line, so a client that
reads nothing stalls only itself.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import deque
from typing import Any, Sequence

from .api import RunOutcome
from .protocol import MAX_FRAME, Err, Revoke, frame
from .pushes import PushedEnds
from .sockpoll import READ, WRITE, Poller

log = logging.getLogger("journaled.server")

# Per connection: answers not yet taken by the client, and requests in flight.
OUT_LIMIT = 2 * MAX_FRAME + (1 << 20)
MAX_IN_FLIGHT = 4096


class _Conn:
    __slots__ = ("sock", "cid", "inbuf", "out", "out_size", "hello", "pending",
                 "reading", "closing", "pid", "ends", "held", "pushed", "lean", "events")

    def __init__(self, sock: socket.socket, cid: int, pid: int) -> None:
        self.sock = sock
        self.cid = cid
        self.pid = pid
        self.inbuf = bytearray()
        self.out: deque[memoryview] = deque()
        self.out_size = 0
        self.hello = False
        # Requests not answered yet: id -> run id for a wait, None for the others.
        self.pending: dict[int, str | None] = {}
        self.reading = True
        self.closing = False  # send what is queued, then close
        self.ends = False  # push the ends of its runs (Hello.ends)
        # Pushed ends not sent yet: they ride along with the next answer (one send,
        # one wake-up); a client that asks for nothing gets none.
        self.held: list[RunOutcome] = []
        self.pushed = False  # a push went out: a redrive may have to take it back
        self.lean = False  # it reads End and Revoke (Hello.lean)
        self.events = READ  # what its socket is registered for (registered on accept)


class DoorReplies(PushedEnds):
    """Answers to connections (a mixin): what it needs of the server is declared here."""

    _conns: dict[int, _Conn]
    _replies: deque[tuple[int, Any]]
    _lock: threading.Lock
    _dirty: set[int]
    _woken: bool
    _wake_w: socket.socket
    _sel: Poller
    _drop: Any

    def reply(self, cid: int, msg: Any) -> None:
        """Send an answer (any thread, never blocks): now if it can, else on the server thread.

        A ``RunOutcome`` is an end pushed unasked (``Hello.ends``): held to go with
        the connection's next answer, as ``End`` or as ``Outcome`` with id ``PUSHED``
        (sent alone, it could wake a client waiting for that answer for nothing, or
        fill the buffers of one that reads nothing).
        """
        self.reply_many(((cid, msg),))

    def reply_many(self, answers: Sequence[tuple[int, Any]]) -> None:
        """``reply`` for each ``(conn id, answer)``, in order, under one take of the lock.

        When another thread holds the pass lock, the answers are queued for it: it
        sends them as it lets go (``_unlock``), so no wake-up of the server's fd (a
        socketpair write, a pass and a read on the loop) is spent on them.
        """
        q = self._replies
        if q or not self._lock.acquire(blocking=False):
            q.extend(answers)  # behind those queued, in order; or for the lock's holder
            # The holder may have let go between the two: then nobody else sends them.
            if self._lock.acquire(blocking=False):
                try:
                    self._send_replies()
                finally:
                    self._unlock()
            return
        try:
            for i, (cid, msg) in enumerate(answers):
                if not self._reply_now(cid, msg):
                    q.extend(answers[i:])  # this one and the rest in order, queued
                    self._send_replies()
                    break
        finally:
            self._unlock()

    def _unlock(self) -> None:
        """Release the pass lock; answers another thread queued meanwhile (it could not
        take the lock and left them to the holder) are sent first."""
        while True:
            self._lock.release()
            if not self._replies or not self._lock.acquire(blocking=False):
                return  # none, or a new holder sends them as it lets go
            self._send_replies()

    def _reply_now(self, cid: int, msg: Any) -> bool:
        """Write one answer straight to an idle connection (the pass lock held); False: queue it."""
        t = type(msg)
        if t is RunOutcome:  # a push: held for the next answer
            c = self._conns.get(cid)
            if c is None or c.out or c.closing:
                return False  # in order behind what is queued for it
            self._hold(c, msg)
            return True
        if t is Revoke:
            self._revoke(cid, msg)
            return True
        c = self._conns.get(cid)
        if c is None or c.out or c.closing:
            return False
        rid = msg.id
        if rid not in c.pending:
            return True  # a wait that timed out meanwhile: its answer went already
        try:
            data = frame(msg)
            if c.held:
                data = self._held_frames(c) + data
        except ValueError:
            return False  # too big: the server thread says so
        try:
            n = c.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            return False  # the server thread sees the failure and drops the connection
        c.pending.pop(rid, None)
        poke = False
        if n < len(data):
            c.out.append(memoryview(data)[n:])
            c.out_size += len(data) - n
            poke = True
        if not c.reading and not c.closing and len(c.pending) < MAX_IN_FLIGHT // 2:
            poke = True  # it may read again
        if poke:
            self._dirty.add(cid)
            if not self._woken:
                self._woken = True
                self._poke()
        return True

    def _poke(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass

    def _send_replies(self) -> None:
        q = self._replies
        touched: dict[int, _Conn] = {}
        while self._dirty:
            cid = self._dirty.pop()
            c = self._conns.get(cid)
            if c is not None:
                touched[cid] = c
        while q:
            cid, msg = q.popleft()
            t = type(msg)
            if t is Revoke:
                self._revoke(cid, msg)
                continue
            c = self._conns.get(cid)
            if c is None:
                continue
            if t is RunOutcome:
                self._hold(c, msg)
                continue
            rid = msg.id
            if rid not in c.pending:
                continue  # a wait that timed out meanwhile: its answer went already
            else:
                del c.pending[rid]
            self._queue(c, msg, flush=False)
            touched[cid] = c
        for c in touched.values():
            if c.cid in self._conns:
                self._flush(c)
                if not c.reading and not c.closing and len(c.pending) < MAX_IN_FLIGHT // 2:
                    c.reading = True
                    self._rearm(c)

    def _queue(self, c: _Conn, msg: Any, flush: bool = True) -> None:
        try:
            data = frame(msg)
        except ValueError as e:  # an answer too big for a frame: say so instead
            data = frame(Err(getattr(msg, "id", 0), "JournaledError",
                             f"the answer does not fit the socket: {e}"))
        if c.held:
            data = self._held_frames(c) + data
        c.out.append(memoryview(data))
        c.out_size += len(data)
        if c.out_size > OUT_LIMIT:
            log.warning("dropping the connection of pid %d: %d bytes of answers unread "
                        "(over %d)", c.pid, c.out_size, OUT_LIMIT)
            self._drop(c, None)
            return
        if flush:
            self._flush(c)

    def _flush(self, c: _Conn) -> None:
        if c.cid not in self._conns:
            return
        out = c.out
        try:
            while out:
                view = out[0]
                n = c.sock.send(view)
                c.out_size -= n
                if n < len(view):
                    out[0] = view[n:]
                    break
                out.popleft()
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._drop(c, None)
            return
        if c.closing and not out:
            self._drop(c, None)
            return
        self._rearm(c)

    def _rearm(self, c: _Conn) -> None:
        events = (READ if c.reading else 0) | (WRITE if c.out else 0)
        if events == c.events:
            return  # as registered: no epoll_ctl (most flushes leave it reading only)
        c.events = events
        try:
            if events:
                self._sel.modify(c.sock, events, c)
            else:
                self._sel.unregister(c.sock)
        except KeyError:
            if events:
                self._sel.register(c.sock, events, c)
        except (ValueError, OSError):
            pass
