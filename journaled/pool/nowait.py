"""Sending a framed message without a thread hand-off when the pipe has room.

A message to or from a worker used to go through a sender thread every
time, so that neither end could block on the other. Handing bytes to a
thread costs a GIL hand-off (tens of microseconds on a loaded machine),
more than the write itself for a small step. When nothing is queued ahead
of it, the message is written here with ``MSG_DONTWAIT``: all of it when
the socket buffer has room (the common case), otherwise what did not fit
goes to the sender thread, ahead of anything later, so order is kept and
the caller still never blocks.

The frames are ``multiprocessing.connection.Connection``'s (a signed
big-endian 4-byte length; -1 then an 8-byte length for frames of 2 GiB
or more), so ``recv_bytes`` on the other end reads them unchanged.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

_I = struct.Struct("!i")
_Q = struct.Struct("!Q")
DIRECT_MAX = 64 << 10  # bigger frames go to the thread whole (no copy to prepend a header)


def header(n: int) -> bytes:
    """The length prefix ``Connection.recv_bytes`` expects for ``n`` bytes."""
    if n > 0x7FFFFFFF:
        return _I.pack(-1) + _Q.pack(n)
    return _I.pack(n)


def socket_of(conn: Any) -> socket.socket:
    """A socket object on a dup of ``conn``'s descriptor (a worker pipe is a socketpair)."""
    return socket.socket(fileno=os.dup(conn.fileno()))


def send_nowait(sock: socket.socket, frame: bytes) -> int:
    """Write what fits of ``frame`` now: the bytes written (0: none fit); OSError: peer gone."""
    try:
        return sock.send(frame, socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return 0
