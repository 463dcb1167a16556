"""The socket server's writing half (a mixin of ``server.DoorServer``): answers out.

Each connection (``_Conn``) has a bounded queue of answer bytes. ``reply``
and ``reply_many`` may be called from any thread: an answer to a connection
with nothing queued is written by the calling thread itself when no pass
runs (a non-blocking ``send`` under the pass lock, which it only ever tries);
the rest is queued for the server's next pass (``_send_replies``), which
its fd is made readable for (``_poke``). A connection whose queue passes
``OUT_LIMIT`` is dropped with a log line, so a client that reads nothing
stalls only itself.
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
                 "reading", "closing", "pid", "ends", "held", "pushed", "lean")

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
        """``reply`` for each ``(conn id, answer)``, in order, under one take of the lock."""
        queued = 0
        if not self._replies and self._lock.acquire(blocking=False):
            try:
                for cid, msg in answers:
                    if not self._reply_now(cid, msg):
                        break  # this one and the rest in order, on the server's pass
                    queued += 1
            finally:
                self._lock.release()
        if queued == len(answers):
            return
        self._replies.extend(answers[queued:])
        if not self._woken:
            self._woken = True
            self._poke()

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
