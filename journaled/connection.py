"""The client's end of the supervisor socket: a blocking connection with request ids.

``DoorConnection.open(state_dir)`` connects and says hello, or returns None
when nothing listens (no socket file, a stale one, a supervisor speaking
another version): the caller then uses the inbox. ``call(request)`` sends
one request and blocks for its answer, returning the value or raising
the error the supervisor raised (same class, same message). A connection
that breaks before the answer raises ``DoorLost``: the request may or may
not have been applied, and the caller decides (``Client`` resends through
the inbox, which is idempotent by run id).
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import struct
import time
from pathlib import Path
from typing import Any

import msgspec

from .api import RunOutcome
from .inbox import SubmitMsg
from .protocol import (
    HEADER,
    MAX_FRAME,
    PUSHED,
    SOCKET_NAME,
    VERSION,
    End,
    Err,
    Hello,
    Ok,
    Outcome,
    Put,
    Revoke,
    Submit,
    Welcome,
    frame,
    raise_err,
    reply_decoder,
)
from .unixaddr import short_path

_LEN = struct.Struct(">I")  # a frame's length prefix (protocol.frame_size, inlined)
_encode = msgspec.msgpack.Encoder().encode

_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def this_pid() -> int:
    """This process's pid without a syscall per call (a forked child updates it)."""
    return _pid[0]


# Pushed ends kept until asked for (``Hello.ends``); past this the oldest are
# forgotten (a wait for one asks the supervisor instead).
ENDS_MAX = 16384


class DoorLost(ConnectionError):
    """The connection broke before the answer; the request may or may not have taken effect."""


def socket_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / SOCKET_NAME


class DoorConnection:
    """One blocking connection; not for concurrent use (``Client`` keeps one per thread)."""

    def __init__(self, sock: socket.socket, server_pid: int) -> None:
        self.sock = sock
        self.server_pid = server_pid
        self.pid = os.getpid()  # a forked child must not share its parent's stream
        self._ids = itertools.count(1)
        self._buf = bytearray()  # a frame cut by a read: its head, until the rest comes
        self._early: dict[int, Any] = {}  # answers that came before their turn was asked
        # Ends pushed unasked, by run id (Hello.ends): End, or Outcome for a blob result.
        self._ends: dict[str, End | Outcome] = {}
        self.lean = False  # the server takes Put (Welcome.lean)
        # Read into one buffer: recv(1 MiB) allocated (and shrank) a 1 MiB object per read.
        self._rbuf = bytearray(64 << 10)
        self._rview = memoryview(self._rbuf)
        # Waits for an answer in poll(POLLIN), never blocked in recv: a reader
        # blocked in a Unix socket's recv is also woken when the supervisor
        # reads our request (write space), one wasted context switch per call;
        # poll's wait filters that wake-up out. The socket itself stays
        # blocking with no timeout, so a send is one syscall (no poll, no ioctl).
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], timeout: float = 5.0, ends: bool = False,
             lean: bool = True) -> DoorConnection | None:
        """Connect and say hello; ``ends``: ask for the ends of the runs submitted here
        unasked (``pushed_end`` reads them). ``lean`` (``Hello.lean``): False speaks as
        a client from before it (tests)."""
        path = socket_path(state_dir)
        try:
            os.stat(path)
        except OSError:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            addr, fd = short_path(path)
            try:
                sock.connect(addr)
            finally:
                if fd >= 0:
                    os.close(fd)
            conn = cls(sock, 0)
            conn._send(Hello(VERSION, os.getpid(), ends, lean))
            welcome = conn._first(time.monotonic() + timeout)
        except (OSError, EOFError, msgspec.DecodeError, ValueError):
            sock.close()
            return None  # refused, stale, wrong version, or going away: use the inbox
        if type(welcome) is not Welcome:
            sock.close()
            return None
        conn.server_pid = welcome.pid
        conn.lean = lean and welcome.lean
        sock.settimeout(None)
        return conn

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def next_id(self) -> int:
        return next(self._ids)

    # -------------------------------------------------------------- calls

    def call(self, make: Any, timeout: float | None = None) -> Any:
        """Send ``make(request_id)`` and return its answer's value; raise its error.

        ``timeout`` bounds the wait for the answer (``TimeoutError``, and the
        connection is closed: its stream is no longer in step).
        """
        rid = next(self._ids)
        self._post(frame(make(rid)))
        return self.answer(rid, timeout)

    def submit_plain(self, run_id: str, data: bytes, at: float) -> None:
        """``Submit`` one plain, checked submission made here (``fresh``); durable on return.

        ``call`` in a straight line for the commonest request (the frame, the send,
        the wait for its answer, no calls between): each one sleeps until its ack, so
        it runs on cold caches, where every call and object costs several times its
        warm price.
        """
        rid = next(self._ids)
        body = _encode(Put(rid, run_id, data, at) if self.lean else
                       Submit(rid, [SubmitMsg(run_id, data, at)], True))
        if len(body) > MAX_FRAME:
            raise ValueError(f"a frame of {len(body):,} bytes is over the {MAX_FRAME:,}-byte "
                             "limit")
        try:
            self.sock.sendall(_LEN.pack(len(body)) + body)
        except OSError as e:
            self.close()
            raise DoorLost(f"the supervisor's socket broke while sending: {e}") from None
        early = self._early
        msg = early.pop(rid, None)
        while msg is None:
            try:
                self._fill(None)
            except (OSError, EOFError, msgspec.DecodeError, ValueError) as e:
                self.close()
                raise DoorLost(f"the supervisor's socket closed before answering: "
                               f"{e or 'end of stream'}") from None
            msg = early.pop(rid, None)
        if type(msg) is not Ok:
            if type(msg) is Err:
                raise_err(msg)
            raise DoorLost(f"unexpected answer {msg!r}")

    def send(self, req: Any) -> None:
        """Send without waiting (pipelined calls); ``DoorLost`` if the socket broke."""
        self._post(frame(req))

    def _post(self, data: bytes) -> None:
        """Send one frame; a broken socket closes this connection and raises ``DoorLost``."""
        try:
            self.sock.sendall(data)
        except OSError as e:
            self.close()
            raise DoorLost(f"the supervisor's socket broke while sending: {e}") from None

    def answer(self, rid: int, timeout: float | None = None) -> Any:
        """Block for the answer to request ``rid`` (answers to others are kept)."""
        early = self._early
        msg = early.pop(rid, None)
        if msg is None:
            deadline = None if timeout is None else time.monotonic() + timeout
            while msg is None:
                try:
                    self._fill(deadline)
                except TimeoutError:
                    self.close()
                    raise
                except (OSError, EOFError, msgspec.DecodeError, ValueError) as e:
                    self.close()
                    raise DoorLost(f"the supervisor's socket closed before answering: "
                                   f"{e or 'end of stream'}") from None
                msg = early.pop(rid, None)
        t = type(msg)
        if t is Ok:
            return msg.value
        if t is Outcome:
            return msg.value()
        if t is Err:
            raise_err(msg)
        raise DoorLost(f"unexpected answer {msg!r}")

    # ------------------------------------------------------------- frames

    def _send(self, msg: Any) -> None:
        self.sock.sendall(frame(msg))

    def _first(self, deadline: float) -> Any:
        """The answer to the hello (``Welcome``, or the ``Err`` refusing it)."""
        while 0 not in self._early:
            self._fill(deadline)
        return self._early.pop(0)

    def pushed_end(self, run_id: str) -> RunOutcome | None:
        """The run's end if the supervisor pushed it; reads what the socket holds, never blocks.

        A pushed end is durable, as a ``Wait`` answer is. What the socket holds is
        read first, even when the end is here already: another client's retry may
        have redriven the run, and the supervisor sends its ``Revoke`` here before
        that retry is answered (or closes this connection if it cannot), so a wait
        that starts after the retry's answer never reads the old end.
        """
        try:
            while self._fill(None, False):
                pass
        except (OSError, EOFError, msgspec.DecodeError, ValueError):
            return None  # the next call meets the broken stream and says so
        out = self._ends.pop(run_id, None)
        return None if out is None else out.value()

    def _fill(self, deadline: float | None, wait: bool = True) -> bool:
        """Read what the socket holds and keep each whole frame in it (answers by id,
        pushed ends by run); without ``wait``, False when it holds nothing.

        With ``wait``, poll first: an answer is rarely there already (it waits
        for a sync), so a first try would mostly cost a syscall for ``EAGAIN``;
        without, poll(0): an empty socket costs no exception.
        """
        if wait:
            if deadline is None:
                self._poll.poll()
            else:
                left = deadline - time.monotonic()
                if left <= 0 or not self._poll.poll(max(1, int(left * 1000 + 0.999))):
                    if deadline - time.monotonic() <= 0:
                        raise TimeoutError("the supervisor did not answer in time")
        elif not self._poll.poll(0):
            return False
        try:
            got = self.sock.recv_into(self._rview, 0, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return wait  # woken for nothing (wait): poll again
        if not got:
            raise EOFError("the supervisor closed the connection")
        buf = self._buf
        if buf:  # the head of a frame came before: join it (rare)
            buf += self._rview[:got]
            data: bytearray | memoryview = buf
        else:  # frames cut straight from the read buffer, no copy
            data = self._rview
        n = len(buf) if buf else got
        at = 0
        early, ends = self._early, self._ends
        decode, size_at = reply_decoder.decode, _LEN.unpack_from
        while n - at >= HEADER:
            size = size_at(data, at)[0]
            if size > MAX_FRAME:
                raise ValueError(f"the supervisor sent a {size:,}-byte frame")
            end = at + HEADER + size
            if end > n:
                break
            msg = decode(data[at + HEADER:end])
            at = end
            t = type(msg)
            if t is End or (t is Outcome and msg.id == PUSHED):
                ends[msg.run_id if t is End else msg.outcome.run_id] = msg
                if len(ends) > ENDS_MAX:
                    del ends[next(iter(ends))]
            elif t is Revoke:  # redriven since: what we hold is no longer their end
                for r in msg.run_ids:
                    ends.pop(r, None)
            else:
                early[getattr(msg, "id", 0)] = msg
        if buf:
            del buf[:at]
        elif at < n:
            buf += self._rview[at:n]
        return True
