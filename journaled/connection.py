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
import time
from pathlib import Path
from typing import Any

import msgspec

from .api import RunOutcome
from .protocol import (
    HEADER,
    MAX_FRAME,
    PUSHED,
    SOCKET_NAME,
    VERSION,
    Err,
    Hello,
    Ok,
    Outcome,
    Revoke,
    Welcome,
    frame,
    frame_size,
    raise_err,
    reply_decoder,
)
from .unixaddr import short_path

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
        self._buf = bytearray()
        self._at = 0  # where the next frame starts in _buf
        self._early: dict[int, Any] = {}  # answers that came before their turn was asked
        self._ends: dict[str, Outcome] = {}  # ends pushed unasked, by run id (Hello.ends)
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
    def open(cls, state_dir: str | os.PathLike[str], timeout: float = 5.0, ends: bool = False
             ) -> DoorConnection | None:
        """Connect and say hello; ``ends``: ask for the ends of the runs submitted here
        unasked (``pushed_end`` reads them)."""
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
            conn._send(Hello(VERSION, os.getpid(), ends))
            welcome = conn._recv(time.monotonic() + timeout)
        except (OSError, EOFError, msgspec.DecodeError, ValueError):
            sock.close()
            return None  # refused, stale, wrong version, or going away: use the inbox
        if type(welcome) is not Welcome:
            sock.close()
            return None
        conn.server_pid = welcome.pid
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
        rid = self.next_id()
        try:
            self._send(make(rid))
        except OSError as e:
            self.close()
            raise DoorLost(f"the supervisor's socket broke while sending: {e}") from None
        return self.answer(rid, timeout)

    def send(self, req: Any) -> None:
        """Send without waiting (pipelined calls); ``DoorLost`` if the socket broke."""
        try:
            self._send(req)
        except OSError as e:
            self.close()
            raise DoorLost(f"the supervisor's socket broke while sending: {e}") from None

    def answer(self, rid: int, timeout: float | None = None) -> Any:
        """Block for the answer to request ``rid`` (answers to others are kept)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while rid not in self._early:
            try:
                msg = self._recv(deadline)
            except TimeoutError:
                self.close()
                raise
            except (OSError, EOFError, msgspec.DecodeError, ValueError) as e:
                self.close()
                raise DoorLost(f"the supervisor's socket closed before answering: "
                               f"{e or 'end of stream'}") from None
            self._keep(msg)
        msg = self._early.pop(rid)
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

    def _keep(self, msg: Any) -> None:
        t = type(msg)
        if t is Outcome and msg.id == PUSHED:
            ends = self._ends
            ends[msg.outcome.run_id] = msg
            if len(ends) > ENDS_MAX:
                del ends[next(iter(ends))]
        elif t is Revoke:  # redriven since: what we hold is no longer their end
            for rid in msg.run_ids:
                self._ends.pop(rid, None)
        else:
            self._early[getattr(msg, "id", 0)] = msg

    def pushed_end(self, run_id: str) -> RunOutcome | None:
        """The run's end if the supervisor pushed it; reads what the socket holds, never blocks.

        A pushed end is durable, as a ``Wait`` answer is. What the socket holds is
        read first, even when the end is here already: another client's retry may
        have redriven the run, and the supervisor sends its ``Revoke`` here before
        that retry is answered (or closes this connection if it cannot), so a wait
        that starts after the retry's answer never reads the old end.
        """
        try:
            self._drain()
        except (OSError, EOFError, msgspec.DecodeError, ValueError):
            return None  # the next call meets the broken stream and says so
        out = self._ends.pop(run_id, None)
        return None if out is None else out.value()

    def _drain(self) -> None:
        """Keep every whole frame the socket holds now; never blocks (one poll when empty)."""
        while True:
            msg = self._next()
            if msg is not None:
                self._keep(msg)
            elif not self._poll.poll(0) or not self._read(None, False):
                return

    def _next(self) -> Any:
        """The next whole frame already read, decoded; None if it has not all come yet."""
        buf, at = self._buf, self._at
        n = len(buf) - at
        if n < HEADER:
            return None
        size = frame_size(buf, at)
        if size > MAX_FRAME:
            raise ValueError(f"the supervisor sent a {size:,}-byte frame")
        if n < HEADER + size:
            return None
        end = at + HEADER + size
        msg = reply_decoder.decode(buf[at + HEADER:end])
        if end == len(buf):
            buf.clear()
            self._at = 0
        else:
            self._at = end  # several frames came in one read: cut on, no copy per frame
        return msg

    def _read(self, deadline: float | None, wait: bool = True) -> bool:
        """Append what the socket holds; without ``wait``, False when it holds nothing.

        With ``wait``, poll first: an answer is rarely there already (it waits
        for a sync), so a first try would mostly cost a syscall for ``EAGAIN``.
        """
        if wait:
            if deadline is None:
                self._poll.poll()
            else:
                left = deadline - time.monotonic()
                if left <= 0 or not self._poll.poll(max(1, int(left * 1000 + 0.999))):
                    if deadline - time.monotonic() <= 0:
                        raise TimeoutError("the supervisor did not answer in time")
        try:
            got = self.sock.recv_into(self._rview, 0, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return wait  # woken for nothing (wait): poll again
        if not got:
            raise EOFError("the supervisor closed the connection")
        if self._at:
            del self._buf[:self._at]
            self._at = 0
        self._buf += self._rview[:got]
        return True

    def _recv(self, deadline: float | None) -> Any:
        while True:
            msg = self._next()
            if msg is not None:
                return msg
            self._read(deadline)
