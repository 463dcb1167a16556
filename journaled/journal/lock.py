"""The single-writer lock on ``STATE/lock``, and a probe that never takes it.

The lock is an ``flock`` (what every version has relied on) plus an
open-file-description write lock (``F_OFD_SETLK``) on the same file taken
right after the pid is written. The OFD lock exists so other processes can
ask "is it held, right now?" with ``F_OFD_GETLK``, which tests without
taking anything: the old probe took the flock for an instant, and a
supervisor starting in that instant failed. Both locks go when the holder's
file is closed, which the kernel does when the process dies, so a held lock
means a live process (hung or not) and a free one means none.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

from journaled.durable import make_dirs
from journaled.errors import StateLocked

__all__ = ["StateLock"]

# struct flock {short l_type; short l_whence; off_t l_start; off_t l_len; pid_t l_pid;}
_FLOCK = struct.Struct("hhqqi")
_FLOCK_SIZE = 32  # with the C struct's trailing padding
_OFD = hasattr(fcntl, "F_OFD_GETLK")


def _flock_arg(kind: int) -> bytes:
    return _FLOCK.pack(kind, os.SEEK_SET, 0, 0, 0).ljust(_FLOCK_SIZE, b"\0")


def _read_pid(fd: int) -> int:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else 0


class StateLock:
    """The single-writer lock: an ``flock`` on ``STATE/lock`` holding the owner's pid."""

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)
        self._fd = -1

    @property
    def path(self) -> Path:
        return self.state_dir / "lock"

    def acquire(self) -> None:
        """Take the lock without waiting; creates the state directory (0700) if missing.

        A new state directory's parent is fsynced (``durable.make_dirs``), so
        the directory survives a power cut together with what goes into it.

        Raises:
            StateLocked: another process (or another handle) holds it.
        """
        if self._fd >= 0:
            return
        make_dirs(self.state_dir)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise StateLocked(str(self.state_dir), holder) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            # After the pid is written: a prober that sees the lock held can read who.
            if _OFD:
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock_arg(fcntl.F_WRLCK))
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise StateLocked(str(self.state_dir), "") from None
            raise
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (closing the file releases both locks)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @staticmethod
    def holder(state_dir: Path | str) -> int | None:
        """The pid of the live process holding the lock, or None; never takes the lock.

        0 means held by a process whose pid could not be read. A hung
        supervisor still holds it (the kernel drops it only when the process
        is gone), so this tells a hung supervisor from a dead one.
        """
        try:
            fd = os.open(Path(state_dir) / "lock", os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            if _OFD:
                got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock_arg(fcntl.F_RDLCK))
                if _FLOCK.unpack_from(got)[0] == fcntl.F_UNLCK:
                    return None
                return _read_pid(fd)
            # No OFD locks (not Linux): fall back to the pid being alive.
            pid = _read_pid(fd)
        finally:
            os.close(fd)
        if pid <= 0:
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    @staticmethod
    def is_locked(state_dir: Path | str) -> bool:
        """Whether some live process holds the lock now (a probe; takes nothing)."""
        return StateLock.holder(state_dir) is not None
