"""The supervisor's socket: epoll (``sockpoll``) and non-blocking Unix sockets, served inline.

Inline (``inline=True``, how the supervisor runs it): no thread of its own.
The server's epoll fd (``fileno``) sits in the supervisor loop's own wait
set, and the loop runs one pass (``serve_now``) whenever it is readable or a
wait's timer is due (``next_timer``), so a request goes from the client's
socket into the turn that folds it with no hand-off between threads; the
loop never blocks here (every socket is non-blocking). Threaded (the
default): the same passes on a thread of its own, which hands requests to
the loop through ``deliver``.

The passes only move bytes. They accept connections on
``STATE/supervisor.sock`` (mode 0600; a peer with another uid is refused by
``SO_PEERCRED``), cut frames, decode requests and hand them to the
supervisor loop in batches (``deliver``, once per pass), then write the
answers queued back (``reply``, from any thread: that writing half is
``replies.DoorReplies``). An answer whose connection has nothing queued is
written by the replying thread itself when no pass runs (a non-blocking
``send`` under the pass lock, never waiting for it), else by the pass as it
ends; what does not fit is left for a later pass. A pass never
touches the state or the journal and never blocks, so a slow client stalls
only itself: its answers wait in a bounded buffer, and a client whose
buffer passes the bound is dropped with a log line.

What a peer can get wrong and what it gets back: a body that is not a
request is answered with a ``ProtocolError`` (the length prefix keeps the
stream in step, so the connection stays); a frame over ``MAX_FRAME``, a
first frame that is not ``Hello`` or a version we do not speak closes the
connection after an ``Err``. A request whose connection dropped is still
applied if it reached the loop; its answer is dropped (the client resends
through the inbox, which is idempotent by run id).
"""

from __future__ import annotations

import heapq
import logging
import os
import resource
import socket
import struct
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import msgspec

from .api import RunOutcome
from .protocol import (
    HEADER,
    MAX_FRAME,
    PROTOCOL_ERROR,
    VERSION,
    Err,
    Hello,
    Put,
    Submit,
    Wait,
    Welcome,
    guess_id,
    request_decoder,
)
from .replies import (  # noqa: F401 - OUT_LIMIT: re-exported (read from here)
    MAX_IN_FLIGHT,
    OUT_LIMIT,
    DoorReplies,
    _Conn,
)
from .sockpoll import READ, Poller
from .unixaddr import short_path

log = logging.getLogger("journaled.server")

_UCRED = struct.Struct("3i")  # pid, uid, gid
_LEN = struct.Struct(">I")  # a frame's length prefix
_READ = 256 << 10
# One receive buffer for the thread: ``recv(_READ)`` allocated (mmap'd, past
# malloc's threshold) and shrank a 256 KiB bytes object per read.
_RECV_BUF = bytearray(_READ)
_RECV_VIEW = memoryview(_RECV_BUF)


def raise_nofile(want: int) -> None:
    """Lift the soft open-files limit towards ``want`` (never past the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-files limit to %d: %s", target, e)


class DoorServer(DoorReplies):
    """Serve ``path`` for a supervisor.

    Args:
        path: the socket file (a stale one is removed; unlinked on ``close``).
        deliver: ``deliver(batch)`` with ``[(conn_id, request), ...]``, called on
            this thread; it must only queue them and wake the loop.
        forget: ``forget([(conn_id, request_id, run_id), ...])``: waits nobody
            listens for any more (timed out, or their connection closed).
        status: ``status(run_id)`` for the message of a timed-out wait.
        inline: no thread; the owner calls ``serve_now`` when ``fileno()`` is
            readable or ``next_timer()`` is due (``deliver`` then runs on its
            thread and need not wake anyone).
    """

    def __init__(self, path: Path, deliver: Callable[[list[tuple[int, Any]]], None],
                 forget: Callable[[list[tuple[int, int, str]]], None],
                 status: Callable[[str], RunOutcome | None], *, inline: bool = False) -> None:
        self.path = Path(path)
        self.inline = inline
        self._deliver = deliver
        self._forget = forget
        self._status = status
        self._sel = Poller()
        self._conns: dict[int, _Conn] = {}
        self._next_cid = 1
        self._replies: deque[tuple[int, Any]] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._woken = False
        self._stop = False
        # Held by this thread for each pass; ``reply`` only ever tries it.
        self._lock = threading.Lock()
        self._dirty: set[int] = set()  # connections a direct reply left work for
        # (deadline, conn, request id, the wait's timeout): waits that may time out.
        self._timers: list[tuple[float, int, int, float]] = []
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._uid = os.getuid()
        self.refused = 0  # connections refused for their uid (tests read it)

    # ---------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Listen; raises ``OSError`` if the socket cannot be made (the caller logs it)."""
        raise_nofile(8192)
        try:
            os.unlink(self.path)  # a stale socket of a supervisor that died
        except FileNotFoundError:
            pass
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        addr, fd = short_path(self.path)
        old = os.umask(0o177)  # the socket file is born 0600: no window with a wider mode
        try:
            lst.bind(addr)
        except OSError:
            lst.close()
            raise
        finally:
            os.umask(old)
            if fd >= 0:
                os.close(fd)
        os.chmod(self.path, 0o600)
        lst.listen(4096)
        lst.setblocking(False)
        self._listener = lst
        self._sel.register(lst, READ, lst)
        self._sel.register(self._wake_r, READ, self._wake_r)
        if not self.inline:
            self._thread = threading.Thread(target=self._serve, name="journaled-socket",
                                            daemon=True)
            self._thread.start()
        log.info("listening on %s", self.path)

    def close(self) -> None:
        """Stop serving: unlink the socket first (new clients use the inbox), then close all."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._stop = True
        self._poke()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._lock.acquire()
        try:
            self._send_replies()  # answers queued since the last pass still go out
        finally:
            self._unlock()
        for c in list(self._conns.values()):
            self._drop(c, None)
        for s in (self._listener, self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._listener = None
        self._sel.close()

    # ------------------------------------------------------ other threads

    def wants_ends(self, cid: int) -> bool:
        """The connection asked for its runs' ends unasked (``Hello.ends``)."""
        c = self._conns.get(cid)
        return c is not None and c.ends

    # ------------------------------------------------------------- inline

    def fileno(self) -> int:
        """The server's epoll fd: readable whenever a pass has something to do."""
        return self._sel.fileno()

    def next_timer(self) -> float | None:
        """When (monotonic) the next wait may time out: a pass is due then."""
        return self._timers[0][0] if self._timers else None

    def serve_now(self) -> None:
        """One pass on the caller's thread, never waiting (inline mode)."""
        ready = self._sel.poll(0)
        batch: list[tuple[int, Any]] = []
        self._lock.acquire()
        try:
            self._pass(ready, batch)
        finally:
            self._unlock()

    # --------------------------------------------------------------- loop

    def _serve(self) -> None:
        sel = self._sel
        while not self._stop:
            timeout = None
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            batch: list[tuple[int, Any]] = []
            ready = sel.poll(timeout)
            self._lock.acquire()
            try:
                self._pass(ready, batch)
            finally:
                self._unlock()

    def _pass(self, ready: list[Any], batch: list[tuple[int, Any]]) -> None:
        """What ``select`` reported, then the queued answers and timers (the pass lock held)."""
        for obj, readable, writable in ready:
            if obj is self._listener:
                self._accept()
            elif obj is self._wake_r:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
            else:
                c: _Conn = obj
                if writable and c.cid in self._conns:
                    self._flush(c)
                if readable and c.cid in self._conns:
                    self._read(c, batch)
        if batch:
            self._deliver(batch)
        self._woken = False
        self._send_replies()
        if self._timers:
            self._expire(time.monotonic())

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(256):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: keep serving the others
                log.warning("cannot accept a connection on %s: %s", self.path, e)
                return
            try:
                pid, uid, _gid = _UCRED.unpack(
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            except OSError:
                sock.close()
                continue
            if uid != self._uid:
                self.refused += 1
                log.warning("refused a connection from pid %d: uid %d is not this supervisor's "
                            "uid %d", pid, uid, self._uid)
                sock.close()
                continue
            sock.setblocking(False)
            c = _Conn(sock, self._next_cid, pid)
            self._next_cid += 1
            self._conns[c.cid] = c
            self._sel.register(sock, READ, c)

    def _read(self, c: _Conn, batch: list[tuple[int, Any]]) -> None:
        try:
            got = c.sock.recv_into(_RECV_VIEW)  # only the server thread reads
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            got = 0
        if not got:
            self._drop(c, None)
            return
        buf = c.inbuf
        if buf:  # the head of a frame came before: join it (rare)
            buf += _RECV_VIEW[:got]
            data = memoryview(buf)
            n = len(buf)
        else:  # frames cut straight from the read buffer, no copy
            data = _RECV_VIEW
            n = got
        at = 0
        decode, size_at = request_decoder.decode, _LEN.unpack_from
        pending = c.pending
        try:
            while n - at >= HEADER:
                size = size_at(data, at)[0]  # protocol.frame_size, inlined
                if size > MAX_FRAME:
                    self._refuse(c, 0, f"a frame of {size:,} bytes is over the {MAX_FRAME:,}-"
                                       "byte limit (send big inputs through the inbox or as blobs)")
                    return
                end = at + HEADER + size
                if end > n:
                    break
                body = data[at + HEADER:end]
                at = end
                try:
                    req = decode(body)
                except (msgspec.DecodeError, msgspec.ValidationError) as e:
                    rid = guess_id(body)
                    body.release()
                    if not c.hello:
                        self._refuse(c, rid, f"not a journaled request: {e}")
                        return
                    log.warning("bad request from pid %d: %s", c.pid, e)
                    self._queue(c, Err(rid, PROTOCOL_ERROR, f"not a journaled request: {e}"))
                    continue
                body.release()
                t = type(req)
                if (t is Put or t is Submit) and c.hello:  # the commonest, in a straight line
                    pending[req.id] = None
                    batch.append((c.cid, req))
                elif not self._request(c, req, batch):
                    return
        finally:
            if data is not _RECV_VIEW:
                data.release()
        if buf:
            del buf[:at]
        elif at < n:
            buf += _RECV_VIEW[at:n]
        if len(c.pending) >= MAX_IN_FLIGHT and c.reading:
            c.reading = False  # stop reading until answers drain: bounded work per client
            self._rearm(c)

    def _request(self, c: _Conn, req: Any, batch: list[tuple[int, Any]]) -> bool:
        if type(req) is Hello:
            if c.hello:
                self._queue(c, Err(0, PROTOCOL_ERROR, "a second hello on one connection"))
                return True
            if req.version != VERSION:
                self._refuse(c, 0, f"protocol version {req.version} is not spoken here; "
                                   f"this supervisor speaks {VERSION}")
                return False
            c.hello = True
            c.ends = req.ends
            c.lean = req.lean
            self._queue(c, Welcome(VERSION, os.getpid(), True))
            return True
        if not c.hello:
            self._refuse(c, req.id, "the first frame must be a hello")
            return False
        c.pending[req.id] = req.run_id if type(req) is Wait else None
        if type(req) is Wait:
            if req.timeout is not None:
                heapq.heappush(self._timers, (time.monotonic() + max(0.0, req.timeout), c.cid,
                                              req.id, req.timeout))
        batch.append((c.cid, req))
        return True

    def _refuse(self, c: _Conn, rid: int, why: str) -> None:
        log.warning("closing the connection of pid %d: %s", c.pid, why)
        self._queue(c, Err(rid, PROTOCOL_ERROR, why))
        c.closing = True
        if c.reading:
            c.reading = False
            self._rearm(c)
        self._flush(c)


    def _expire(self, mono: float) -> None:
        gone: list[tuple[int, int, str]] = []
        while self._timers and self._timers[0][0] <= mono:
            _, cid, rid, limit = heapq.heappop(self._timers)
            c = self._conns.get(cid)
            if c is None or c.pending.get(rid) is None:
                continue
            run_id = c.pending.pop(rid)
            assert run_id is not None
            gone.append((cid, rid, run_id))
            try:
                out = self._status(run_id)
            except Exception:  # noqa: BLE001 - the status is only for the message
                out = None
            what = out.status.value if out is not None else "unknown"
            self._queue(c, Err(rid, "TimeoutError",
                               f"run {run_id!r} is still {what} after {limit:g} s"))
        if gone:
            self._forget(gone)

    # ----------------------------------------------------------- writing




    def _drop(self, c: _Conn, why: str | None) -> None:
        if self._conns.pop(c.cid, None) is None:
            return
        if why:
            log.warning("closing the connection of pid %d: %s", c.pid, why)
        elif c.inbuf and not c.closing and not self._stop:
            log.warning("the connection of pid %d closed in the middle of a request (%d bytes "
                        "of a frame); nothing of it was applied", c.pid, len(c.inbuf))
        elif c.pending and not self._stop:
            log.info("the connection of pid %d closed with %d requests unanswered (applied "
                     "if they reached the loop)", c.pid, len(c.pending))
        try:
            self._sel.unregister(c.sock)
        except (KeyError, ValueError, OSError):
            pass
        c.sock.close()
        waits = [(c.cid, rid, run_id) for rid, run_id in c.pending.items() if run_id is not None]
        c.pending.clear()
        if waits:
            self._forget(waits)
