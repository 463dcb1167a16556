"""The synced mark: "durable up to (segment, offset)", published by the writer after each sync.

Readers in other processes stop at it, so nothing they report can be taken
back by a power cut (SQLite's WAL publishes its ``mxFrame`` the same way,
only after the sync). The mark lives in ``STATE/journal/synced.mark``, which
segment listing ignores: one 32-byte record, rewritten in place (through a
shared mapping, ``MarkWriter``) after each sync, little-endian::

    offset 0   4 bytes  magic b"JSYN"
    offset 4   u32      pid of the writer that published it
    offset 8   u32      generation: random, new each time a writer opens the journal
    offset 12  u32      segment number
    offset 16  u64      offset: every frame before it in that segment (and every
                        older segment) is durable
    offset 24  u32      crc32 of bytes 0-23
    offset 28  4 bytes  zero

A torn or zeroed record fails its crc and counts as no mark. The mark
itself is never fsynced: after a power cut it may be older than the
journal, never newer than what was durable when it was written, and the
next writer republishes it. The writer zeroes it before it changes
anything already written (cutting a torn tail, repair), then republishes.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from .segment import list_segments, segment_num

__all__ = ["MARK_NAME", "SyncedMark", "read_mark", "MarkWriter"]

MARK_NAME = "synced.mark"  # not a dot-file: those are temp files, deleted on open
MARK_MAGIC = b"JSYN"
MARK_SIZE = 32
_MARK = struct.Struct("<4sIIIQ")
_CRC = struct.Struct("<I")


@dataclass(frozen=True)
class SyncedMark:
    """Everything before ``offset`` in segment ``segment`` (and all before it) is durable."""

    pid: int
    generation: int
    segment: int
    offset: int

    def encode(self) -> bytes:
        head = _MARK.pack(MARK_MAGIC, self.pid, self.generation, self.segment, self.offset)
        return (head + _CRC.pack(zlib.crc32(head))).ljust(MARK_SIZE, b"\0")

    @staticmethod
    def decode(data: bytes) -> SyncedMark | None:
        """The mark in ``data``, or None if it is absent, torn or zeroed."""
        if len(data) < MARK_SIZE:
            return None
        head = data[: _MARK.size]
        if _CRC.unpack_from(data, _MARK.size)[0] != zlib.crc32(head):
            return None
        magic, pid, generation, segment, offset = _MARK.unpack(head)
        if magic != MARK_MAGIC:
            return None
        return SyncedMark(pid, generation, segment, offset)


def read_mark(journal_dir: Path | str) -> SyncedMark | None:
    """The published mark of ``journal_dir``, or None if there is none (or it is torn)."""
    try:
        fd = os.open(Path(journal_dir) / MARK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return SyncedMark.decode(os.pread(fd, MARK_SIZE, 0))
    finally:
        os.close(fd)


def data_bytes(journal_dir: Path | str, segments: list[Path] | None = None) -> int:
    """Bytes the journal's segments hold, the newest counted to its synced mark.

    The newest segment runs on in zeros the writer allocated ahead of its data
    (``writer.PREALLOC``), and after a ``kill -9`` they are never cut: a file
    size would count them. Bytes past the mark count as nothing for the same
    reason readers stop there. ``segments``: these only (default: all of them).
    """
    mark = read_mark(journal_dir)
    total = 0
    for path in list_segments(journal_dir) if segments is None else segments:
        try:
            size = path.stat().st_size
        except FileNotFoundError:  # removed by a compaction under us
            continue
        if mark is not None and segment_num(path) == mark.segment:
            size = min(size, mark.offset)
        total += size
    return total


class MarkWriter:
    """The writer's side: the 32-byte file mapped shared, one ``memcpy`` per publish.

    A store into a ``MAP_SHARED`` page is what a ``pwrite`` would have put in
    the page cache, without the syscall (two per serial run): other
    processes' ``pread`` sees it at once, and the kernel writes it back when
    it likes, as it did the ``pwrite``'s page (the mark is never fsynced). A
    reader racing the copy may see a torn record: its crc fails, it counts as
    no mark, and that reader syncs and reads the disk itself (``Tailer``).
    """

    def __init__(self, journal_dir: Path) -> None:
        self.path = journal_dir / MARK_NAME
        self.pid = os.getpid()
        self.generation = int.from_bytes(os.urandom(4), "little")
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._buf = bytearray(MARK_SIZE)  # bytes 28-31 stay zero
        self._head = memoryview(self._buf)[: _MARK.size]

    def _open(self, create: bool) -> bool:
        """Open and map the mark file (made ``MARK_SIZE`` long if new or short).

        False: it does not exist (and ``create`` is off). A file system that
        cannot map it shared keeps the plain fd: ``pwrite`` then, as before.
        """
        if self._fd >= 0:
            return True
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        try:
            fd = os.open(self.path, flags, 0o600)
        except FileNotFoundError:
            return False
        try:
            if os.fstat(fd).st_size < MARK_SIZE:
                os.ftruncate(fd, MARK_SIZE)  # zeros: no mark until the first publish
            try:
                self._map = mmap.mmap(fd, MARK_SIZE, mmap.MAP_SHARED,
                                      mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError:
                self._map = None  # no shared mapping here: one pwrite per publish
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def invalidate(self) -> None:
        """Zero the mark, so readers stop trusting it, before anything written changes."""
        if not self._open(create=False):
            return
        if self._map is not None:
            self._map[:MARK_SIZE] = bytes(MARK_SIZE)
        else:
            os.pwrite(self._fd, bytes(MARK_SIZE), 0)

    def publish(self, segment: int, offset: int) -> None:
        """Say every frame before ``offset`` of ``segment`` is durable (call after the sync).

        Twice per serial run: packed into one reused buffer (the same bytes as
        ``SyncedMark.encode``), then copied into the mapped page in one go.
        """
        m = self._map
        if m is None and self._fd < 0:
            self._open(create=True)
            m = self._map
        buf = self._buf
        _MARK.pack_into(buf, 0, MARK_MAGIC, self.pid, self.generation, segment, offset)
        _CRC.pack_into(buf, _MARK.size, zlib.crc32(self._head))
        if m is not None:
            m[:MARK_SIZE] = buf
        else:
            os.pwrite(self._fd, buf, 0)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
