"""The single writer: replay, append with group commit, rotate, compact; publish the synced mark."""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Callable

from journaled import failpoints
from journaled.durable import fsync_dir, make_dirs
from journaled.errors import StorageFailure

from .frame import _FRAME, HEADER_SIZE, MAX_BODY, check_body_size
from .mark import MarkWriter
from .segment import (
    FLAG_BASE,
    SEGMENT_RE,
    Scan,
    TornTail,
    install_segment,
    scan,
    segment_header,
    segment_name,
    segment_num,
    write_file,
)

__all__ = ["Journal", "SLOW_SYNC_SECONDS"]

_log = logging.getLogger("journaled.journal")

SLOW_SYNC_SECONDS = 1.0

# The open segment is kept this many bytes ahead of its data, zero-filled
# (``posix_fallocate``): appends then overwrite space the file already has,
# so an fdatasync flushes data blocks only, not the inode's size and extents
# too (ext4 here: 85 -> 55 us and 3 -> 2 context switches per sync). Replay
# reads zeros to the end of the newest segment as its clean end; the segment
# is cut to its data before the next one starts, and on close.
PREALLOC = 1 << 20


class Journal:
    """The single writer's handle: replay, then append with group commit.

    Use: ``for seg, off, body in j.replay(): ...``, then ``j.open_for_append()``,
    then ``append``/``extend`` a turn's records and ``commit()`` them with one
    write and one fdatasync. Hold a ``StateLock`` while using it: readers in
    other processes trust the synced mark only while its writer holds the lock.

    Pipelined use (the supervisor): ``write()`` a turn's records and get a
    ticket; another thread (``Flusher``) calls ``sync()``, which makes every
    write made before it durable and returns the last ticket it covers,
    while the next turns go on writing. Only ``write`` and ``sync`` may run at
    the same time (one thread each); ``commit``, ``rotate_if_full``,
    ``compact`` and ``close`` need the syncing thread idle.

    Args:
        journal_dir: ``STATE/journal``; created (mode 0700, parents fsynced) if missing.
        segment_bytes: start a new segment once the current one reaches this size.
        unsafe_no_fsync: skip every fsync; for tests only, never a CLI flag.
        simulate_power_loss: hold written bytes in memory until the fdatasync
            that makes them durable, so a kill loses what a power cut would.
            None reads ``JOURNALED_SIMULATE_POWER_LOSS == "1"``.
    """

    def __init__(
        self,
        journal_dir: Path | str,
        *,
        segment_bytes: int = 64 << 20,
        unsafe_no_fsync: bool = False,
        simulate_power_loss: bool | None = None,
    ) -> None:
        if segment_bytes < HEADER_SIZE + 9:
            raise ValueError(f"segment_bytes must be >= {HEADER_SIZE + 9}, got {segment_bytes}")
        self.journal_dir = Path(journal_dir)
        self.segment_bytes = segment_bytes
        self.unsafe_no_fsync = unsafe_no_fsync
        if simulate_power_loss is None:
            simulate_power_loss = os.environ.get("JOURNALED_SIMULATE_POWER_LOSS") == "1"
        self.simulate_power_loss = simulate_power_loss
        self.torn: TornTail | None = None
        self.records_written = 0
        self.syncs = 0
        # Called with each fdatasync's seconds, on the syncing thread (metrics).
        self.on_sync: Callable[[float], None] | None = None
        self.bytes_written = 0
        self._scan: Scan | None = None
        self._nums: list[int] = []  # live segment numbers, oldest first
        self._fd = -1
        self._path: Path | None = None
        self._size = 0  # bytes of the open segment, held ones included
        self._buf = bytearray()
        self._pending = 0  # records in _buf
        self._held = bytearray()  # power-loss mode: written, not yet handed to the kernel
        self._alloc = 0  # bytes the open segment's file holds (data, then zeros)
        self._disk_end = 0  # end of the bytes handed to the kernel (the zeros start here)
        self._prealloc = True  # off once posix_fallocate is refused here
        self._failure: tuple[str, str, OSError] | None = None
        # write() (the loop) and sync() (the flusher) share the tail's bookkeeping:
        # _held, _size and the tickets change together under this lock.
        self._lock = threading.Lock()
        self.written = 0  # ticket of the last write: writes so far
        self.synced = 0  # ticket of the last write a sync made durable
        self._mark = MarkWriter(self.journal_dir)
        # STATE/ and STATE/journal/ survive a power cut once their parents are synced.
        make_dirs(self.journal_dir, sync=not unsafe_no_fsync)

    # replay and open

    def replay(self) -> Iterator[tuple[str, int, bytes]]:
        """Yield ``(segment, offset, body)`` for every whole record, oldest first.

        A torn tail of the newest segment is not an error: it ends the
        iteration and sets ``self.torn``; ``open_for_append`` cuts it off.
        ``journaled.replay.records(journal)`` decodes them.

        Raises:
            JournalCorrupt: damage anywhere else; nothing is changed on disk.
        """
        self.torn = None
        out = self._scan = Scan()
        yield from scan(self.journal_dir, out)
        self.torn = out.torn
        self._nums = [segment_num(p) for p in out.live]

    def open_for_append(self) -> None:
        """Cut a torn tail, finish an interrupted compaction, sync, publish the mark, open.

        Raises:
            RuntimeError: ``replay()`` was not run to its end first.
            StorageFailure: the disk refused the truncation, a create or the sync.
        """
        if self._scan is None or not self._scan.done:
            raise RuntimeError("run replay() to its end before open_for_append()")
        if self._fd >= 0:
            raise RuntimeError("the journal is already open for append")
        sync = not self.unsafe_no_fsync
        path = self.journal_dir
        try:
            # Readers must stop trusting an old mark before anything below it can
            # change (a torn-tail cut); they make what they read durable
            # themselves until the new mark is published.
            self._mark.invalidate()
            self._remove_leftovers()
            if not self._nums:
                path = install_segment(self.journal_dir, 1, segment_header(), sync)
                self._nums = [1]
                end = HEADER_SIZE
            else:
                path = self.journal_dir / segment_name(self._nums[-1])
                end = self._scan.end_offset
                if self.torn is not None:
                    self._cut_torn_tail(path, self.torn)
                    end = max(self.torn.offset, HEADER_SIZE)
            self._open(path, end)
            # What the last writer wrote but never synced (it was killed) is
            # replayed now, so it must be durable before the mark says so.
            if sync:
                os.fdatasync(self._fd)
            self._mark.publish(self._nums[-1], end)
        except OSError as err:
            raise self._fail("open", path, err) from err

    def _cut_torn_tail(self, path: Path, torn: TornTail) -> None:
        sync = not self.unsafe_no_fsync
        if torn.offset < HEADER_SIZE:
            # Not even a whole header: make the segment anew, whole, as rotation would.
            path.unlink()
            install_segment(self.journal_dir, segment_num(path), segment_header(), sync)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, torn.offset)
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        # True under the sector rule: a torn frame is cut short or has a sector
        # that never reached the disk, so it was never synced, so never acted on.
        _log.warning(
            "journal torn tail: cut %s back to byte %d, dropping %d bytes (%s); "
            "that write never reached the disk, so it was never acknowledged and nothing "
            "acknowledged is lost",
            torn.segment, torn.offset, torn.dropped_bytes, torn.reason,
        )

    def _remove_leftovers(self) -> None:
        """Delete temp dot-files and segments older than the replay start."""
        first = self._nums[0] if self._nums else None
        removed = False
        for name in os.listdir(self.journal_dir):
            m = SEGMENT_RE.match(name)
            if (name.startswith(".") and name.endswith(".tmp")) or (
                m and first is not None and int(m.group(1)) < first
            ):
                if m:
                    _log.info("removing %s, left over from an interrupted compaction", name)
                os.unlink(self.journal_dir / name)
                removed = True
        if removed and not self.unsafe_no_fsync:
            fsync_dir(self.journal_dir)

    def _open(self, path: Path, size: int) -> None:
        # Not O_APPEND: the file may run on past its data (zeros, PREALLOC), so
        # every write is a pwrite at the end of the data (_size).
        self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        self._path = path
        self._size = self._disk_end = size
        self._alloc = os.fstat(self._fd).st_size
        self._held.clear()

    def _trim(self, sync: bool) -> None:
        """Cut the open segment's zeros past its data (before leaving it for the next).

        Only the newest segment may end in zeros (replay reads them as its
        clean end; in an older one they would be damage), so the cut is made
        durable before the next segment is installed.
        """
        end = self._disk_end
        if self._alloc > end:
            os.ftruncate(self._fd, end)
            if sync:
                os.fsync(self._fd)
            self._alloc = end

    # appending

    def append(self, body: bytes) -> None:
        """Frame one record into the commit buffer; nothing reaches the file yet.

        Raises:
            RecordTooLarge: the body is empty or over ``MAX_BODY``; nothing was buffered.
        """
        if self._failure is not None:
            raise StorageFailure(*self._failure)
        n = len(body)
        check_body_size(n)
        buf = self._buf
        buf += _FRAME.pack(n, zlib.crc32(body))
        buf += body
        self._pending += 1

    def extend(self, bodies: Iterable[bytes]) -> None:
        """Frame many records into the commit buffer (``append`` each, one call for all:
        the loop frames three records a run)."""
        if self._failure is not None:
            raise StorageFailure(*self._failure)
        buf, pack, crc = self._buf, _FRAME.pack, zlib.crc32
        for body in bodies:
            n = len(body)
            if not 0 < n <= MAX_BODY:
                check_body_size(n)  # raises: the bodies before it stay buffered, as by append
            buf += pack(n, crc(body))
            buf += body
            self._pending += 1

    def commit(self) -> None:
        """Make every appended record durable: one write and one fdatasync (group commit).

        Then publish the synced mark, so readers in other processes may see them,
        and start the next segment if this one is full. Also makes durable what
        an earlier ``write()`` left unsynced (the caller's flusher must be idle).

        Raises:
            StorageFailure: the write or sync failed or was short. The journal is
                then failed for good (a failed fsync leaves the page cache
                untrustworthy, so nothing is retried); restart and replay.
        """
        self.write()
        self.sync()
        self.rotate_if_full()

    def write(self) -> int:
        """Write the appended records (one write, no sync); returns their ticket.

        The records are durable once ``sync()`` has returned a ticket at least
        this one (``synced``). Nothing buffered: returns the last ticket.

        Raises:
            StorageFailure: the write failed or was short; the journal is failed.
        """
        if self._failure is not None:
            raise StorageFailure(*self._failure)
        if not self._buf:
            return self.written
        if self._fd < 0 or self._path is None:
            raise RuntimeError("call open_for_append() before commit()")
        buf, self._buf = self._buf, bytearray()
        records, self._pending = self._pending, 0
        try:
            action = failpoints.hit("journal.before_write") if failpoints.ENABLED else None
            if action == "short-write":
                half = len(buf) // 2
                self._write(buf[:half])
                raise OSError(errno.EIO, f"short write: {half} of {len(buf)} bytes (failpoint)")
            # Crash window: from here until sync() returns, the records are in the
            # page cache (or held in memory, power-loss mode) and not durable.
            # Nothing may act on them yet; a kill may keep them or lose them,
            # and either replays to a state nobody was told about.
            self._write(buf)
        except OSError as err:
            raise self._fail("write", self._path, err) from err
        self.records_written += records
        self.bytes_written += len(buf)
        return self.written

    def sync(self) -> int:
        """fdatasync everything written so far, publish the synced mark; returns its ticket.

        Safe on another thread than ``write()``: what is written after this
        call started is left for the next one (group commit across turns).

        Raises:
            StorageFailure: the sync (or the write of held bytes) failed; the
                journal is failed for good, as for ``commit``.
        """
        if self._failure is not None:
            raise StorageFailure(*self._failure)
        with self._lock:
            ticket = self.written
            if ticket == self.synced:
                return ticket
            held: bytes | bytearray = self._held  # taken only if non-empty: no new buffer
            if held:
                self._held = bytearray()
            else:
                held = b""  # not the live buffer: a write after this goes to the next sync
            end = self._size  # every byte below is in the file, or in `held`
            seg = self._nums[-1]
        path = self._path
        assert path is not None
        op = "fdatasync"
        synced = False
        try:
            action = None
            if failpoints.ENABLED:
                failpoints.hit("journal.before_sync")
                action = failpoints.hit("journal.fdatasync")
            if action != "skip":
                if held:
                    # Power-loss mode: the bytes reach the kernel only now, right
                    # before the sync, so a kill before this point loses them.
                    op = "write"
                    self._write_fd(held, end - len(held))
                    op = "fdatasync"
                if not self.unsafe_no_fsync:
                    self._sync(path)
                    synced = True
            elif held:
                with self._lock:  # skipped: still never handed to the kernel
                    self._held[:0] = held
                end -= len(held)
            if failpoints.ENABLED:
                failpoints.hit("journal.after_sync")
            # Only now may other processes read these records (a crash before
            # this store leaves the mark behind: readers see less, never more).
            op = "publish the synced mark"
            self._mark.publish(seg, end)
        except OSError as err:
            raise self._fail(op, path, err) from err
        self.syncs += synced
        self.synced = ticket
        return ticket

    def rotate_due(self) -> bool:
        """The open segment is full: ``rotate_if_full`` would start the next one."""
        return self._size >= self.segment_bytes and not self._held

    def rotate_if_full(self) -> None:
        """Start the next segment if this one is full (everything written must be synced).

        A segment is only left once nothing is held for it (power-loss mode).
        """
        if not self.rotate_due():
            return
        if self.synced != self.written:
            raise RuntimeError("sync what was written before rotating the segment")
        try:
            self._rotate()
        except OSError as err:
            raise self._fail("rotate", self.journal_dir, err) from err

    def _write(self, data: bytes | bytearray) -> None:
        if self.simulate_power_loss:
            with self._lock:
                self._held += data
                self._size += len(data)
                self.written += 1
        else:
            self._write_fd(data, self._size)  # only this thread moves _size (write())
            with self._lock:
                self._size += len(data)
                self.written += 1

    def _write_fd(self, data: bytes | bytearray, offset: int) -> None:
        """Write ``data`` at ``offset`` (the end of the data), growing the zeros ahead first."""
        need = offset + len(data)
        if need > self._alloc:
            self._grow(need)
        written = os.pwrite(self._fd, data, offset)
        self._disk_end = offset + written
        if written != len(data):
            # Never retried: the rest may land anywhere after a partial write.
            raise OSError(errno.EIO, f"short write: {written} of {len(data)} bytes")

    def _grow(self, need: int) -> None:
        """Allocate (zero-filled) up to PREALLOC bytes past ``need``: one slower sync per MiB.

        Where the file system refuses (or the disk is full) the write extends
        the file itself, as an append would.
        """
        if not self._prealloc:
            return
        try:
            os.posix_fallocate(self._fd, self._alloc, need + PREALLOC - self._alloc)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                self._prealloc = False  # not supported here: plain appends from now on
            return
        self._alloc = need + PREALLOC

    def _sync(self, path: Path) -> None:
        start = time.monotonic()
        os.fdatasync(self._fd)
        took = time.monotonic() - start
        if self.on_sync is not None:
            self.on_sync(took)
        if took > SLOW_SYNC_SECONDS:
            _log.warning("slow fdatasync: %d ms on %s", took * 1000, path.name)

    def _rotate(self) -> None:
        if failpoints.ENABLED:
            failpoints.hit("journal.before_rotate")
        # A crash before the new segment is installed leaves a full segment and
        # no next one: the next open just appends to the full one. Its zeros
        # past the data are cut (durably) first: only the newest may have them.
        self._trim(not self.unsafe_no_fsync)
        num = self._nums[-1] + 1
        path = install_segment(
            self.journal_dir, num, segment_header(), not self.unsafe_no_fsync
        )
        os.close(self._fd)
        self._fd = -1
        self._nums.append(num)
        self._open(path, HEADER_SIZE)
        # The old segment was synced whole and the new one is installed whole.
        self._mark.publish(num, HEADER_SIZE)

    def _fail(self, op: str, path: Path | str, err: OSError) -> StorageFailure:
        if self._fd >= 0:
            try:
                # The file ends where the bytes handed over end, as an append's
                # would: half a batch is then a torn tail, not half a frame in zeros.
                self._trim(False)
            except OSError:
                pass
        self._failure = (op, str(path), err)
        self._buf = bytearray()
        self._pending = 0
        return StorageFailure(op, str(path), err)

    # compaction

    def compact(self, bodies: list[bytes]) -> None:
        """Replace the journal by a new BASE segment holding ``bodies`` (a snapshot).

        Commits anything pending first. Every crash point leaves a journal that
        replays either to the old records or to the snapshot, never a mix.

        Raises:
            RecordTooLarge: a body does not fit one frame. Nothing was written;
                the old journal stays in use and appends go on.
            StorageFailure: the disk failed. Before the rename the old journal
                stays in use; after it the journal is failed like a bad commit.
        """
        self.commit()
        if self._fd < 0:
            raise RuntimeError("call open_for_append() before compact()")
        sync = not self.unsafe_no_fsync
        num = self._nums[-1] + 1
        path = self.journal_dir / segment_name(num)
        tmp = self.journal_dir / f".{path.name}.tmp"
        # 0. Frame everything in memory first: a body too large stops here,
        # before any file is touched (RecordTooLarge, the journal unharmed).
        data = bytearray(segment_header(FLAG_BASE))
        for body in bodies:
            check_body_size(len(body))
            data += _FRAME.pack(len(body), zlib.crc32(body))
            data += body
        try:
            # 1. The snapshot goes to a dot-named temp file, fsynced. A crash
            # here leaves a dot-file that replay ignores and the next open
            # deletes: the old segments are still the whole truth.
            tmp.unlink(missing_ok=True)
            write_file(tmp, data, sync)
            if failpoints.ENABLED:
                failpoints.hit("compact.before_rename")
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise StorageFailure("compact", str(tmp), err) from err
        old = self._nums
        try:
            # 2. Rename into place, atomically. A crash before the directory
            # fsync may keep either name; both replay to the same state (old
            # records, or the snapshot of exactly them).
            os.rename(tmp, path)
            # 3. fsync the directory: the BASE segment now survives a power
            # cut. From here on replay starts at it and ignores older segments.
            if sync:
                fsync_dir(self.journal_dir)
            if failpoints.ENABLED:
                failpoints.hit("compact.after_rename")
            # 4. Switch appends to the new segment. Bytes still held for the old
            # one (power-loss mode, skipped sync) are superseded by the snapshot.
            os.close(self._fd)
            self._fd = -1
            self._nums = [*old, num]
            self._open(path, len(data))
            # Readers move to the snapshot now; until this store they keep
            # reading the old segments, which are still there.
            self._mark.publish(num, len(data))
            if failpoints.ENABLED:
                failpoints.hit("compact.before_delete")
            # 5. Delete the old segments, then fsync the directory. A crash
            # midway leaves some of them: older than the BASE segment, so never
            # read, and the next open deletes them.
            for n in old:
                (self.journal_dir / segment_name(n)).unlink(missing_ok=True)
            self._nums = [num]
            if sync:
                fsync_dir(self.journal_dir)
        except OSError as err:
            raise self._fail("compact", path, err) from err

    @property
    def size_bytes(self) -> int:
        """Bytes in the live segments (replay start to newest), held bytes included."""
        total = len(self._held)
        for n in self._nums:
            if n == self._nums[-1] and self._fd >= 0:
                total += self._size - len(self._held)  # its data, not the zeros ahead
                continue
            try:
                total += (self.journal_dir / segment_name(n)).stat().st_size
            except FileNotFoundError:
                pass
        return total

    def close(self) -> None:
        """Close the segment. Appends not yet committed are dropped: nothing acted on them."""
        if self._fd >= 0:
            if self._failure is None:
                try:
                    self._trim(False)  # left uncut (a crash), replay reads the zeros as the end
                except OSError:
                    pass
            os.close(self._fd)
            self._fd = -1
        self._mark.close()
        self._buf = bytearray()
        self._pending = 0
        self._held.clear()
