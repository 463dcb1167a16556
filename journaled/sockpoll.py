"""A lean epoll for the socket server: ``(data, events)`` pairs, no key objects.

``selectors.EpollSelector`` builds a ``SelectorKey`` lookup and a tuple per
ready fd and translates the event bits in Python on every pass; the server
runs one pass per handful of requests, so that was a per-request cost. This
keeps the parts the server uses (register, modify, unregister, poll, fileno)
with the same errors: ``KeyError`` for an fd not registered, ``ValueError``
for a closed socket, and ``FileExistsError`` (``OSError``) for one
registered twice.
"""

from __future__ import annotations

import select
from typing import Any

READ = select.EPOLLIN
WRITE = select.EPOLLOUT
# A hang-up or an error reads as both: the read or the write that follows says which.
_READABLE = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR | select.EPOLLRDHUP
_WRITABLE = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR


def _fd(sock: Any) -> int:
    fd = sock.fileno()
    if fd < 0:  # closed: as selectors says it
        raise ValueError(f"Invalid file descriptor: {fd}")
    return int(fd)


class Poller:
    """An epoll set whose ready list maps each fd back to the data it was registered with."""

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._data: dict[int, Any] = {}

    def fileno(self) -> int:
        return self._ep.fileno()

    def register(self, sock: Any, events: int, data: Any) -> None:
        fd = _fd(sock)
        self._ep.register(fd, events)
        self._data[fd] = data

    def modify(self, sock: Any, events: int, data: Any) -> None:
        fd = _fd(sock)
        if fd not in self._data:
            raise KeyError(fd)
        self._ep.modify(fd, events)
        self._data[fd] = data

    def unregister(self, sock: Any) -> None:
        fd = _fd(sock)
        del self._data[fd]
        self._ep.unregister(fd)

    def poll(self, timeout: float | None) -> list[tuple[Any, bool, bool]]:
        """``(data, readable, writable)`` for each ready fd (``timeout`` None: block)."""
        data = self._data
        return [(data[fd], bool(ev & _READABLE), bool(ev & _WRITABLE))
                for fd, ev in self._ep.poll(-1 if timeout is None else timeout)
                if fd in data]

    def close(self) -> None:
        self._ep.close()
        self._data.clear()
