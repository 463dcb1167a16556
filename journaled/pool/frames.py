"""Reading ``Connection``-framed messages from a socket in as few reads as possible.

``multiprocessing.connection.Connection.recv_bytes`` reads a message with
two system calls (its length, then its body), however many messages wait.
Both ends of a worker's pipe read through a ``FrameBuffer`` instead: one
``recv_into`` takes everything waiting, the whole messages in it are
decoded straight from the buffer, and a partial one stays for the next
read. The frames are the ones ``nowait.header`` writes (a signed
big-endian 4-byte length; -1 then an 8-byte length for 2 GiB or more).
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Callable

_I = struct.Struct("!i")
_Q = struct.Struct("!Q")
CHUNK = 64 << 10  # bytes one recv_into takes at most


class FrameBuffer:
    """Bytes read from one socket, not yet decoded as whole messages."""

    __slots__ = ("buf", "_chunk")

    def __init__(self) -> None:
        self.buf = bytearray()
        self._chunk = memoryview(bytearray(CHUNK))

    def fill(self, sock: socket.socket, flags: int = 0) -> int:
        """One ``recv_into``; the bytes read (0: the peer closed). Blocking unless
        ``flags`` say otherwise (``BlockingIOError`` then when nothing waits)."""
        n = sock.recv_into(self._chunk, CHUNK, flags)
        if n:
            self.buf += self._chunk[:n]
        return n

    def drain(self, sock: socket.socket) -> bool:
        """Read what waits without blocking; False once the peer has closed (or reset)."""
        while True:
            try:
                n = self.fill(sock, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False  # reset by a dying peer: as good as closed
            if n == 0:
                return False
            if n < CHUNK:
                return True  # drained for now: a full read may have left more

    def messages(self, decode: Callable[[Any], Any]) -> list[Any]:
        """Every whole message in the buffer, decoded and taken out of it."""
        buf = self.buf
        end = len(buf)
        if end < 4:
            return []
        out: list[Any] = []
        pos = 0
        view = memoryview(buf)
        try:
            while end - pos >= 4:
                size = _I.unpack_from(buf, pos)[0]
                head = 4
                if size == -1:
                    if end - pos < 12:
                        break
                    size = _Q.unpack_from(buf, pos + 4)[0]
                    head = 12
                start = pos + head
                if end - start < size:
                    break
                out.append(decode(view[start:start + size]))  # decoding copies what it keeps
                pos = start + size
        finally:
            view.release()  # before the buffer shrinks: it may not while viewed
        if pos:
            del buf[:pos]
        return out
