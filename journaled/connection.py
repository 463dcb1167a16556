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
import socket
import time
from pathlib import Path
from typing import Any

import msgspec

from .protocol import (
    HEADER,
    MAX_FRAME,
    SOCKET_NAME,
    VERSION,
    Err,
    Hello,
    Ok,
    Outcome,
    Welcome,
    frame,
    frame_size,
    raise_err,
    reply_decoder,
)
from .unixaddr import short_path


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
        self._early: dict[int, Any] = {}  # answers that came before their turn was asked
        # Read into one buffer: recv(1 MiB) allocated (and shrank) a 1 MiB object per read.
        self._rbuf = bytearray(64 << 10)
        self._rview = memoryview(self._rbuf)
        self._timed = True  # a timeout may be set on the socket (open's)

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], timeout: float = 5.0
             ) -> DoorConnection | None:
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
            conn._send(Hello(VERSION, os.getpid()))
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
            self._early[getattr(msg, "id", 0)] = msg
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

    def _recv(self, deadline: float | None) -> Any:
        buf = self._buf
        while True:
            if len(buf) >= HEADER:
                size = frame_size(buf)
                if size > MAX_FRAME:
                    raise ValueError(f"the supervisor sent a {size:,}-byte frame")
                if len(buf) >= HEADER + size:
                    body = bytes(buf[HEADER:HEADER + size])
                    del buf[:HEADER + size]
                    return reply_decoder.decode(body)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the supervisor did not answer in time")
                self.sock.settimeout(left)
                self._timed = True
            elif self._timed:  # a syscall each: only when a timed read came before
                self.sock.settimeout(None)
                self._timed = False
            try:
                got = self.sock.recv_into(self._rview)
            except TimeoutError:
                raise TimeoutError("the supervisor did not answer in time") from None
            if not got:
                raise EOFError("the supervisor closed the connection")
            buf += self._rview[:got]
