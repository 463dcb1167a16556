"""Block until files change in a directory: inotify directly, else watchfiles.

Watching starts when the watcher is built, so a caller can build it, look
at the files, and then wait without missing a change made in between.

On Linux the watcher is one inotify descriptor the waiting thread blocks
on in ``poll`` (with the GIL released): an idle watcher costs nothing, and
a change wakes it at once. watchfiles' ``RustNotify.watch`` instead sleeps
in 1 ms steps and takes the GIL at every step to check for signals and its
stop event: a thousand wake-ups a second, each a GIL hand-off the
supervisor's threads paid for (2 voluntary context switches per serial
run). It stays as the fallback where inotify is not available.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("journaled.notify")

# inotify(7) event bits.
_IN_MODIFY = 0x002
_IN_ATTRIB = 0x004
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_FROM = 0x040
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
# Any change to what the directory holds or to a file in it (journal appends,
# the synced mark's pwrite, compaction's renames and deletions).
ANY_CHANGE = (_IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO
              | _IN_CREATE | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF)
# A file landed (renamed in, or written in place): the inbox's only news.
# Its own deletions (acks) and writers' temp files stay quiet.
ARRIVALS = _IN_MOVED_TO | _IN_CLOSE_WRITE | _IN_DELETE_SELF | _IN_MOVE_SELF

_libc: Any = None  # ctypes' libc, loaded on first use (False: no inotify here)


def _inotify() -> Any:
    """libc with ``inotify_init1``/``inotify_add_watch``, or None where there are none."""
    global _libc
    if _libc is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.inotify_init1.argtypes = [ctypes.c_int]
            libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            _libc = libc
        except (OSError, AttributeError, ImportError) as e:
            log.debug("inotify unavailable (%s); using watchfiles", e)
            _libc = False
    return _libc or None


class DirWatcher:
    """``wait(timeout)`` returns True on a change, False on timeout.

    ``mask``: which inotify events count (``ANY_CHANGE``; the inbox uses
    ``ARRIVALS``). ``interrupt()`` (any thread) ends a ``wait`` early.
    """

    def __init__(self, *paths: Path, recursive: bool = False, mask: int = ANY_CHANGE) -> None:
        self._fd = -1
        self._poll: select.poll | None = None
        self._notify: Any = None
        self._wake_r, self._wake_w = -1, -1
        libc = None if recursive else _inotify()
        if libc is not None:
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                for p in paths:
                    if libc.inotify_add_watch(fd, os.fsencode(p), mask) < 0:
                        log.debug("cannot watch %s (errno %d)", p, _errno())
                self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                self._poll = select.poll()
                self._poll.register(fd, select.POLLIN)
                self._poll.register(self._wake_r, select.POLLIN)
                return
        try:
            from watchfiles._rust_notify import RustNotify

            self._notify = RustNotify([str(p) for p in paths], False, False, 300, recursive,
                                      False)
        except Exception as e:  # noqa: BLE001 - fall back to short sleeps
            log.debug("file notification unavailable (%s); polling", e)

    def wait(self, timeout: float | None, stop: threading.Event | None = None) -> bool:
        if self._poll is not None:
            if stop is not None and stop.is_set():
                return False
            # poll releases the GIL; a signal's handler (Ctrl-C) raises out of it.
            ready = self._poll.poll(None if timeout is None else max(1, int(timeout * 1000)))
            changed = False
            for fd, _ev in ready:
                if fd == self._fd:
                    changed = True
                _drain(fd)  # every event queued so far: one wake for a burst
            return changed
        if self._notify is None:
            time.sleep(min(0.05, timeout if timeout is not None else 0.05))
            return True
        ms = 3_600_000 if timeout is None else max(1, int(timeout * 1000))
        got = self._notify.watch(5, 1, ms, stop)
        if got == "signal":
            # RustNotify ran the SIGINT handler itself and swallowed its
            # KeyboardInterrupt; re-raise it, or Ctrl-C never stops a waiter.
            raise KeyboardInterrupt
        return isinstance(got, set)

    def interrupt(self) -> None:
        """End a ``wait`` running on another thread now (it returns False)."""
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    def close(self) -> None:
        for fd in (self._fd, self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._fd = self._wake_r = self._wake_w = -1
        self._poll = None
        if self._notify is not None:
            self._notify.close()
            self._notify = None

    def __enter__(self) -> "DirWatcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drain(fd: int) -> None:
    try:
        while len(os.read(fd, 65536)) == 65536:
            pass
    except (BlockingIOError, OSError):
        pass


def _errno() -> int:
    import ctypes

    return ctypes.get_errno()
