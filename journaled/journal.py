"""The journal: an fsync'd, append-only log of opaque records, in numbered segments.

On-disk format (version 1)
--------------------------

The journal of a state directory lives in ``STATE/journal/``. It is a run of
segment files named ``NNNNNNNN.log``: eight decimal digits, starting at
``00000001.log`` and counting up by one, with no gaps from the replay start
to the newest segment. Other names in the directory are ignored: dot-files
are temp files of an unfinished create (deleted on the next open) and
``*.log.broken*`` are backups left by ``repair``.

Every segment starts with a 16-byte header, little-endian::

    offset 0   8 bytes  magic b"JOURNALD"
    offset 8   u32      format version, 1
    offset 12  u32      flags: the low 16 bits are flag bits, the high 16 bits
                        hold their bitwise complement (so one flipped bit cannot
                        silently turn a segment into a BASE segment)

The only flag bit is bit 0, BASE: the segment begins with a snapshot of the
whole state. Replay starts at the newest BASE segment (or at the first
segment if none is BASE); segments older than it are leftovers of a
compaction that crashed before deleting them, never read and deleted on the
next open. A segment is created whole: header written to a dot-named temp
file, fsynced, renamed into place, directory fsynced.

After the header come frames, back to back, little-endian::

    u32 length | u32 crc | body (length bytes)

``crc`` is ``zlib.crc32(body)``. The body is the msgpack encoding of one
record (``journaled.records``), but this module treats it as opaque bytes.
A body is 1 to ``MAX_BODY`` (64 MiB) bytes; a length of 0 or above
``MAX_BODY`` is never valid, and a length is checked against the bytes left
in the file before the body is read.

Recovery rule: a bad or short frame at the end of the newest segment with
nothing valid after it is a torn tail (a crash mid-write) and is cut back to
the end of the last whole record, logged once. Anything else (a bad frame in
an older segment, or followed by a valid one, a bad header, a missing
segment) is damage: replay stops with ``JournalCorrupt(segment, offset,
reason)``; ``verify`` reports it and ``repair`` cuts it off, keeping a backup.

One writer at a time: ``StateLock`` takes an ``flock`` on ``STATE/lock``.
Readers in other processes use ``JournalTailer``, which never locks.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from journaled import failpoints
from journaled.errors import JournalCorrupt, StateLocked, StorageFailure

__all__ = [
    "MAGIC", "FORMAT_VERSION", "HEADER_SIZE", "FLAG_BASE", "MAX_BODY",
    "encode_frame", "segment_header", "FrameReader", "TornTail", "list_segments",
    "Journal", "StateLock", "JournalTailer", "VerifyReport", "verify", "RepairReport", "repair",
]

_log = logging.getLogger("journaled.journal")

MAGIC = b"JOURNALD"
FORMAT_VERSION = 1
HEADER_SIZE = 16
FLAG_BASE = 0x1
_KNOWN_FLAGS = FLAG_BASE
MAX_BODY = 64 << 20
SLOW_SYNC_SECONDS = 1.0

_HEADER = struct.Struct("<8sII")
_FRAME = struct.Struct("<II")
_SEGMENT_RE = re.compile(r"^(\d{8})\.log$")


# --- frames -------------------------------------------------------------------------------


def encode_frame(body: bytes) -> bytes:
    """Frame one record body: ``u32 length | u32 crc32(body) | body``."""
    n = len(body)
    if not 0 < n <= MAX_BODY:
        raise ValueError(f"record body must be 1 to {MAX_BODY} bytes, got {n}")
    return _FRAME.pack(n, zlib.crc32(body)) + bytes(body)


def segment_header(flags: int = 0) -> bytes:
    """The 16-byte header that opens every segment; ``flags`` is 0 or ``FLAG_BASE``."""
    if flags & ~_KNOWN_FLAGS:
        raise ValueError(f"flags must be 0 or FLAG_BASE ({FLAG_BASE}), got {flags:#x}")
    return _HEADER.pack(MAGIC, FORMAT_VERSION, ((flags ^ 0xFFFF) << 16) | flags)


def _check_header(data: bytes, segment: str, is_last: bool) -> int | None:
    """Return the segment's flag bits, or None if the newest segment's header is cut short.

    Segments are created whole (temp file, fsync, rename), so a short header
    only counts as torn when it is a prefix of a real header (or zeros) in
    the newest segment; any other header problem is damage.
    """
    n = len(data)
    if n < HEADER_SIZE:
        head = bytes(data[:n])
        if is_last and (
            not any(head)
            or head == segment_header(0)[:n]
            or head == segment_header(FLAG_BASE)[:n]
        ):
            return None
        raise JournalCorrupt(segment, 0, f"segment header cut short ({n} of {HEADER_SIZE} bytes)")
    magic, version, flags = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise JournalCorrupt(segment, 0, f"bad segment header: magic {magic!r} != {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise JournalCorrupt(segment, 8, f"unsupported format version {version}")
    low, high = flags & 0xFFFF, flags >> 16
    if high != low ^ 0xFFFF:
        raise JournalCorrupt(
            segment, 12, f"bad segment flags {flags:08x}: high half is not the complement of low"
        )
    if low & ~_KNOWN_FLAGS:
        raise JournalCorrupt(segment, 12, f"unknown segment flags {low:#06x}")
    return low


def _zero_tail_start(data: bytes | memoryview, offset: int) -> int:
    """The index where the run of zero bytes ending the file begins (at least ``offset``)."""
    return offset + len(bytes(data[offset:]).rstrip(b"\0"))


def _valid_frame_at(data: bytes | memoryview, p: int) -> bool:
    n = len(data)
    if n - p < 9:
        return False
    length, crc = _FRAME.unpack_from(data, p)
    end = p + 8 + length
    return 0 < length <= MAX_BODY and end <= n and zlib.crc32(data[p + 8:end]) == crc


def _length_took_a_flipped_bit(data: bytes | memoryview, offset: int, declared_len: int) -> bool:
    """Whether the bad frame is a whole record whose length field has one flipped bit.

    Tried with each one-bit correction of the length: the frame's own crc
    matching, or a valid frame starting right after it, proves the log went on
    past this point. Cheap (at most 32 tries), unlike scanning every offset.
    """
    n = len(data)
    stored = _FRAME.unpack_from(data, offset)[1]
    for bit in range(32):
        length = declared_len ^ (1 << bit)
        end = offset + 8 + length
        if not 0 < length <= MAX_BODY or end > n:
            continue
        if zlib.crc32(data[offset + 8:end]) == stored or _valid_frame_at(data, end):
            return True
    return False


def _is_torn_tail(data: bytes | memoryview, offset: int, declared_len: int | None) -> bool:
    """Whether a bad frame at ``offset`` of the newest segment is a write cut short by a crash.

    Only the newest segment can have a torn tail (the caller checks). The frame
    is torn when it could not have been finished inside the file: fewer than
    8 bytes remain, or its declared end reaches or passes end of file, or the
    file is zeros from the frame's start or from inside it to the end (the
    file grew but its last pages were never written, as after a power cut).
    One exception keeps acknowledged records from being cut as a "tail": if
    correcting one bit of the length makes it a whole record (or puts a valid
    frame right after it), the length was damaged and records follow it.
    """
    n = len(data)
    if declared_len is None or n - offset < 8:
        return True  # not even a frame header left, so nothing can follow
    if _zero_tail_start(data, offset) > offset + 8 + declared_len:
        return False  # the frame ends inside the file and non-zero bytes follow it
    return not _length_took_a_flipped_bit(data, offset, declared_len)


class FrameReader:
    """Iterate ``(offset, body)`` over the frames of one segment's bytes.

    After a full iteration, ``last_good_offset`` is the byte just past the last
    whole record and ``end`` says how the segment ended: ``"clean"`` or
    ``"torn"`` (with ``torn_reason``). Damage raises ``JournalCorrupt``. Each
    body is a slice of ``data`` (bytes for bytes, memoryview for memoryview).

    Args:
        data: the segment's bytes (or a part of them starting at a frame).
        segment: file name used in errors.
        start: offset of the first frame in ``data``.
        is_last: whether this is the newest segment, the only one that may be torn.
    """

    def __init__(
        self, data: bytes | memoryview, segment: str, start: int = HEADER_SIZE, is_last: bool = True
    ) -> None:
        self.data = data
        self.segment = segment
        self.start = start
        self.is_last = is_last
        self.last_good_offset = start
        self.end = ""
        self.torn_reason = ""

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        data = self.data
        n = len(data)
        off = self.start
        unpack = _FRAME.unpack_from
        crc32 = zlib.crc32
        limit = n - 8
        # The hot loop of replay: keep it to an unpack, a slice and a crc per frame.
        while off <= limit:
            length, crc = unpack(data, off)
            end = off + 8 + length
            if end > n or not 0 < length <= MAX_BODY:
                break
            body = data[off + 8:end]
            if crc32(body) != crc:
                break
            yield off, body
            off = end
        self.last_good_offset = off
        if off == n:
            self.end = "clean"
            return
        self._bad_frame(off)

    def _bad_frame(self, off: int) -> None:
        data = self.data
        n = len(data)
        declared: int | None = None
        if n - off < 8:
            reason = f"frame header cut short ({n - off} of 8 bytes)"
        else:
            declared, stored = _FRAME.unpack_from(data, off)
            left = n - off - 8
            if _zero_tail_start(data, off) == off:
                reason = f"{n - off} zero bytes to end of file"
            elif declared > left:
                reason = f"length {declared} runs past end of file ({left} bytes left)"
            elif declared == 0:
                reason = "length 0 (a body is never empty)"
            elif declared > MAX_BODY:
                reason = f"length {declared} exceeds the maximum {MAX_BODY}"
            else:
                computed = zlib.crc32(data[off + 8:off + 8 + declared])
                reason = f"crc mismatch (stored {stored:08x}, computed {computed:08x})"
        if self.is_last and _is_torn_tail(data, off, declared):
            self.end = "torn"
            self.torn_reason = reason
            return
        raise JournalCorrupt(self.segment, off, reason)


# --- segments -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TornTail:
    """A torn tail found by replay: the newest segment is cut back to ``offset``."""

    segment: str
    offset: int
    dropped_bytes: int
    reason: str


def _segment_name(num: int) -> str:
    return f"{num:08d}.log"


def _segment_num(path: Path) -> int:
    return int(path.name[:8])


def list_segments(journal_dir: Path) -> list[Path]:
    """Segment files of ``journal_dir`` in order; temp dot-files and backups are skipped."""
    try:
        names = os.listdir(journal_dir)
    except FileNotFoundError:
        return []
    return [Path(journal_dir) / name for name in sorted(n for n in names if _SEGMENT_RE.match(n))]


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(HEADER_SIZE)


def fsync_dir(path: Path) -> None:
    """Make a create, rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes | bytearray, sync: bool) -> None:
    """Create ``path`` (mode 0600, must not exist) holding ``data``, fsynced unless told not to."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _install_segment(journal_dir: Path, num: int, data: bytes, sync: bool) -> Path:
    """Create segment ``num`` whole: temp dot-file, fsync, rename, fsync directory.

    A crash before the rename leaves only a dot-file that replay ignores; after
    it, the segment exists with its full header, never half of one.
    """
    path = journal_dir / _segment_name(num)
    tmp = journal_dir / f".{path.name}.tmp"
    tmp.unlink(missing_ok=True)
    _write_file(tmp, data, sync)
    os.rename(tmp, path)
    if sync:
        fsync_dir(journal_dir)
    return path


@dataclass
class _Scan:
    """What a pass over the journal found, filled in as it goes."""

    live: list[Path] = field(default_factory=list)  # replay start .. newest
    torn: TornTail | None = None
    end_offset: int = 0  # last good offset of the newest segment
    done: bool = False


def _scan(journal_dir: Path, out: _Scan) -> Iterator[tuple[str, int, bytes]]:
    """Yield every whole record from the newest BASE segment on; see the module docstring."""
    segments = list_segments(journal_dir)
    if not segments:
        out.done = True
        return
    start = 0
    for i in range(len(segments) - 1, -1, -1):
        try:
            head = _check_header(_read_head(segments[i]), segments[i].name, i == len(segments) - 1)
        except JournalCorrupt:
            continue  # reported by the forward pass below, after the records before it
        if head is not None and head & FLAG_BASE:
            start = i
            break
    live = out.live = segments[start:]
    for i, path in enumerate(live):
        is_last = i == len(live) - 1
        name = path.name
        if i and _segment_num(path) != _segment_num(live[i - 1]) + 1:
            missing = _segment_name(_segment_num(live[i - 1]) + 1)
            raise JournalCorrupt(
                name, 0, f"segment {missing} is missing between {live[i - 1].name} and {name}"
            )
        data = path.read_bytes()
        if _check_header(data, name, is_last) is None:
            reason = f"segment header cut short ({len(data)} of {HEADER_SIZE} bytes)"
            out.torn = TornTail(name, 0, len(data), reason)
            out.end_offset = 0
            break
        reader = FrameReader(data, name, HEADER_SIZE, is_last)
        for off, body in reader:
            yield name, off, body
        out.end_offset = reader.last_good_offset
        if reader.end == "torn":
            good = reader.last_good_offset
            out.torn = TornTail(name, good, len(data) - good, reader.torn_reason)
    out.done = True


# --- the writer -----------------------------------------------------------------------------


class Journal:
    """The single writer's handle: replay, then append with group commit.

    Use: ``for seg, off, body in j.replay(): ...``, then ``j.open_for_append()``,
    then ``append``/``extend`` a turn's records and ``commit()`` them with one
    write and one fdatasync. Hold a ``StateLock`` while using it.

    Args:
        journal_dir: ``STATE/journal``; created (mode 0700) if missing.
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
        self.bytes_written = 0
        self._scan: _Scan | None = None
        self._nums: list[int] = []  # live segment numbers, oldest first
        self._fd = -1
        self._path: Path | None = None
        self._size = 0  # bytes of the open segment, held ones included
        self._buf = bytearray()
        self._pending = 0  # records in _buf
        self._held = bytearray()  # power-loss mode: written, not yet handed to the kernel
        self._failure: tuple[str, str, OSError] | None = None
        self.journal_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.journal_dir.mkdir(mode=0o700, exist_ok=True)

    # replay and open

    def replay(self) -> Iterator[tuple[str, int, bytes]]:
        """Yield ``(segment, offset, body)`` for every whole record, oldest first.

        A torn tail of the newest segment is not an error: it ends the
        iteration and sets ``self.torn``; ``open_for_append`` cuts it off.

        Raises:
            JournalCorrupt: damage anywhere else; nothing is changed on disk.
        """
        self.torn = None
        scan = self._scan = _Scan()
        yield from _scan(self.journal_dir, scan)
        self.torn = scan.torn
        self._nums = [_segment_num(p) for p in scan.live]

    def open_for_append(self) -> None:
        """Cut a torn tail, finish an interrupted compaction, open the newest segment.

        Raises:
            RuntimeError: ``replay()`` was not run to its end first.
            StorageFailure: the disk refused the truncation or a create.
        """
        if self._scan is None or not self._scan.done:
            raise RuntimeError("run replay() to its end before open_for_append()")
        if self._fd >= 0:
            raise RuntimeError("the journal is already open for append")
        sync = not self.unsafe_no_fsync
        scan = self._scan
        path = self.journal_dir
        try:
            self._remove_leftovers()
            if not self._nums:
                path = _install_segment(self.journal_dir, 1, segment_header(), sync)
                self._nums = [1]
                end = HEADER_SIZE
            else:
                path = self.journal_dir / _segment_name(self._nums[-1])
                end = scan.end_offset
                if self.torn is not None:
                    self._cut_torn_tail(path, self.torn)
                    end = max(self.torn.offset, HEADER_SIZE)
            self._open(path, end)
        except OSError as err:
            raise self._fail("open", path, err) from err

    def _cut_torn_tail(self, path: Path, torn: TornTail) -> None:
        sync = not self.unsafe_no_fsync
        if torn.offset < HEADER_SIZE:
            # Not even a whole header: make the segment anew, whole, as rotation would.
            path.unlink()
            _install_segment(self.journal_dir, _segment_num(path), segment_header(), sync)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, torn.offset)
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        _log.warning(
            "journal torn tail: cut %s back to byte %d, dropping %d bytes (%s); "
            "the last write before a crash never completed, nothing acknowledged is lost",
            torn.segment, torn.offset, torn.dropped_bytes, torn.reason,
        )

    def _remove_leftovers(self) -> None:
        """Delete temp dot-files and segments older than the replay start."""
        first = self._nums[0] if self._nums else None
        removed = False
        for name in os.listdir(self.journal_dir):
            m = _SEGMENT_RE.match(name)
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
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._path = path
        self._size = size
        self._held.clear()

    # appending

    def append(self, body: bytes) -> None:
        """Frame one record into the commit buffer; nothing reaches the file yet."""
        if self._failure is not None:
            raise StorageFailure(*self._failure)
        n = len(body)
        if not 0 < n <= MAX_BODY:
            raise ValueError(f"record body must be 1 to {MAX_BODY} bytes, got {n}")
        buf = self._buf
        buf += _FRAME.pack(n, zlib.crc32(body))
        buf += body
        self._pending += 1

    def extend(self, bodies: Iterable[bytes]) -> None:
        """Frame many records into the commit buffer."""
        for body in bodies:
            self.append(body)

    def commit(self) -> None:
        """Make every appended record durable: one write and one fdatasync (group commit).

        Raises:
            StorageFailure: the write or sync failed or was short. The journal is
                then failed for good (a failed fsync leaves the page cache
                untrustworthy, so nothing is retried); restart and replay.
        """
        if self._failure is not None:
            raise StorageFailure(*self._failure)
        if not self._buf:
            return
        if self._fd < 0 or self._path is None:
            raise RuntimeError("call open_for_append() before commit()")
        buf, self._buf = self._buf, bytearray()
        records, self._pending = self._pending, 0
        path = self._path
        op = "write"
        synced = False
        try:
            action = failpoints.hit("journal.before_write") if failpoints.ENABLED else None
            if action == "short-write":
                half = len(buf) // 2
                self._write(buf[:half])
                raise OSError(errno.EIO, f"short write: {half} of {len(buf)} bytes (failpoint)")
            self._write(buf)
            op = "fdatasync"
            action = None
            if failpoints.ENABLED:
                failpoints.hit("journal.before_sync")
                action = failpoints.hit("journal.fdatasync")
            if action != "skip":
                if self._held:
                    # Power-loss mode: the bytes reach the kernel only now, right
                    # before the sync, so a kill before this point loses them.
                    op = "write"
                    held, self._held = self._held, bytearray()
                    self._write_fd(held)
                    op = "fdatasync"
                if not self.unsafe_no_fsync:
                    self._sync(path)
                    synced = True
            if failpoints.ENABLED:
                failpoints.hit("journal.after_sync")
        except OSError as err:
            raise self._fail(op, path, err) from err
        self.records_written += records
        self.bytes_written += len(buf)
        self.syncs += synced
        # A segment is only left once nothing is held for it (power-loss mode).
        if self._size >= self.segment_bytes and not self._held:
            try:
                self._rotate()
            except OSError as err:
                raise self._fail("rotate", self.journal_dir, err) from err

    def _write(self, data: bytes | bytearray) -> None:
        if self.simulate_power_loss:
            self._held += data
        else:
            self._write_fd(data)
        self._size += len(data)

    def _write_fd(self, data: bytes | bytearray) -> None:
        written = os.write(self._fd, data)
        if written != len(data):
            # Never retried: the rest may land anywhere after a partial write.
            raise OSError(errno.EIO, f"short write: {written} of {len(data)} bytes")

    def _sync(self, path: Path) -> None:
        start = time.monotonic()
        os.fdatasync(self._fd)
        took = time.monotonic() - start
        if took > SLOW_SYNC_SECONDS:
            _log.warning("slow fdatasync: %d ms on %s", took * 1000, path.name)

    def _rotate(self) -> None:
        if failpoints.ENABLED:
            failpoints.hit("journal.before_rotate")
        # A crash before the new segment is installed leaves a full segment and
        # no next one: the next open just appends to the full one.
        num = self._nums[-1] + 1
        path = _install_segment(
            self.journal_dir, num, segment_header(), not self.unsafe_no_fsync
        )
        os.close(self._fd)
        self._fd = -1
        self._nums.append(num)
        self._open(path, HEADER_SIZE)

    def _fail(self, op: str, path: Path | str, err: OSError) -> StorageFailure:
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
            StorageFailure: the disk failed. Before the rename the old journal
                stays in use; after it the journal is failed like a bad commit.
        """
        self.commit()
        if self._fd < 0:
            raise RuntimeError("call open_for_append() before compact()")
        sync = not self.unsafe_no_fsync
        num = self._nums[-1] + 1
        path = self.journal_dir / _segment_name(num)
        tmp = self.journal_dir / f".{path.name}.tmp"
        data = bytearray(segment_header(FLAG_BASE))
        for body in bodies:
            data += encode_frame(body)
        try:
            # 1. The snapshot goes to a dot-named temp file, fsynced. A crash
            # here leaves a dot-file that replay ignores and the next open
            # deletes: the old segments are still the whole truth.
            tmp.unlink(missing_ok=True)
            _write_file(tmp, data, sync)
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
            if failpoints.ENABLED:
                failpoints.hit("compact.before_delete")
            # 5. Delete the old segments, then fsync the directory. A crash
            # midway leaves some of them: older than the BASE segment, so never
            # read, and the next open deletes them.
            for n in old:
                (self.journal_dir / _segment_name(n)).unlink(missing_ok=True)
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
            try:
                total += (self.journal_dir / _segment_name(n)).stat().st_size
            except FileNotFoundError:
                pass
        return total

    def close(self) -> None:
        """Close the segment. Appends not yet committed are dropped: nothing acted on them."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._buf = bytearray()
        self._pending = 0
        self._held.clear()


# --- the lock -----------------------------------------------------------------------------


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

        Raises:
            StateLocked: another process (or another handle) holds it.
        """
        if self._fd >= 0:
            return
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
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
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (closing the file releases the flock)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @staticmethod
    def is_locked(state_dir: Path | str) -> bool:
        """Whether some process holds the lock now (try it, then let go)."""
        try:
            fd = os.open(Path(state_dir) / "lock", os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also unlocks if we got it
        return False


# --- readers in other processes -----------------------------------------------------------


class JournalTailer:
    """Follow a journal written by another process, reading only what is new.

    Never locks. A frame still being written at the end of the newest segment
    is left for the next poll. When compaction replaces the segment being read
    (it vanished, or a newer BASE segment appeared), the tailer starts again
    from the newest BASE segment and says so with ``reset=True``.
    """

    def __init__(self, journal_dir: Path | str) -> None:
        self.journal_dir = Path(journal_dir)
        self._seg: int | None = None  # segment being read
        self._off = 0  # next byte to read in it; 0 means the header is still unread
        self._base: int | None = None
        self._flags: dict[int, int] = {}  # header flags of segments seen whole

    def poll(self) -> tuple[bool, list[bytes]]:
        """Return ``(reset, bodies)``: records appended since the last poll.

        ``reset`` True means the journal was compacted (or repaired) under us:
        forget what earlier polls returned, ``bodies`` holds all records from
        the newest BASE segment on.

        Raises:
            JournalCorrupt: damage before the newest segment's end.
        """
        reset = False
        out: list[bytes] = []
        while True:
            nums = [_segment_num(p) for p in list_segments(self.journal_dir)]
            if not nums:
                if self._seg is not None:
                    self._seg, self._off, self._base = None, 0, None
                    return True, []
                return False, []
            try:
                base = self._newest_base(nums)
                if self._seg is None:
                    self._seg, self._off, self._base = base, 0, base
                elif self._seg not in nums or base != self._base:
                    self._seg, self._off, self._base = base, 0, base
                    out.clear()
                    reset = True
                self._read_forward(nums, out)
            except FileNotFoundError:
                continue  # compaction deleted a segment under us: list again
            return reset, out

    def _newest_base(self, nums: list[int]) -> int:
        self._flags = {n: f for n, f in self._flags.items() if n in nums}
        for i in range(len(nums) - 1, -1, -1):
            num = nums[i]
            flags = self._flags.get(num)
            if flags is None:
                name = _segment_name(num)
                flags = _check_header(
                    _read_head(self.journal_dir / name), name, i == len(nums) - 1
                )
                if flags is None:
                    continue
                self._flags[num] = flags
            if flags & FLAG_BASE:
                return num
        return nums[0]

    def _read_forward(self, nums: list[int], out: list[bytes]) -> None:
        i = nums.index(self._seg)
        while True:
            seg = nums[i]
            is_last = i == len(nums) - 1
            name = _segment_name(seg)
            # Listing before reading matters: a segment seen with a successor
            # was complete before the successor was created.
            with open(self.journal_dir / name, "rb") as f:
                f.seek(self._off)
                data = f.read()
            start = 0
            if self._off == 0:
                if _check_header(data, name, is_last) is None:
                    return  # being created; next poll
                start = HEADER_SIZE
            reader = FrameReader(data, name, start, is_last)
            try:
                out.extend(body for _, body in reader)
            except JournalCorrupt as err:
                raise JournalCorrupt(name, self._off + err.offset, err.what) from None
            self._off += reader.last_good_offset
            if is_last or reader.end == "torn":
                return
            nxt = nums[i + 1]
            if nxt != seg + 1:
                raise JournalCorrupt(
                    _segment_name(nxt), 0,
                    f"segment {_segment_name(seg + 1)} is missing between {name} and "
                    f"{_segment_name(nxt)}",
                )
            i += 1
            self._seg, self._off = nxt, 0


# --- verify and repair --------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found; it reports damage instead of raising it."""

    segments: int  # live segments, replay start to newest
    records: int  # whole records before any damage or torn tail
    bytes: int  # size of the live segments
    torn: TornTail | None
    damage: JournalCorrupt | None

    @property
    def ok(self) -> bool:
        """True when a supervisor would start without cutting anything."""
        return self.torn is None and self.damage is None


def verify(journal_dir: Path | str) -> VerifyReport:
    """Read the whole journal and report; changes nothing, takes no lock."""
    scan = _Scan()
    records = 0
    damage: JournalCorrupt | None = None
    try:
        for _ in _scan(Path(journal_dir), scan):
            records += 1
    except JournalCorrupt as err:
        damage = err
    size = 0
    for path in scan.live:
        try:
            size += path.stat().st_size
        except FileNotFoundError:
            pass
    return VerifyReport(len(scan.live), records, size, scan.torn, damage)


@dataclass(frozen=True)
class RepairReport:
    """What ``repair`` did; ``segment`` None means there was nothing to cut."""

    segment: str | None
    offset: int = 0  # the segment now ends here
    dropped_bytes: int = 0  # cut from it plus the size of segments moved aside
    backup: Path | None = None
    moved_aside: list[str] = field(default_factory=list)  # later segments, now *.broken
    reason: str = ""


def _backup_path(path: Path) -> Path:
    candidate = path.with_name(path.name + ".broken")
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.broken.{n}")
        n += 1
    return candidate


def _move_aside(path: Path) -> Path:
    dst = _backup_path(path)
    os.rename(path, dst)
    os.chmod(dst, 0o600)
    return dst


def repair(journal_dir: Path | str) -> RepairReport:
    """Cut the journal back to its last good record, keeping a backup of what is cut.

    For a torn tail or damage at byte X of segment S: S is copied to
    ``S.broken`` (mode 0600, numbered if that exists) and truncated at X (a
    segment whose header is bad is moved aside whole), and every later segment
    is moved aside too, since it cannot be trusted to follow. Takes the state
    lock, so it refuses to run under a live supervisor.

    Raises:
        StateLocked: a supervisor holds the state directory.
    """
    journal_dir = Path(journal_dir)
    with StateLock(journal_dir.parent):
        report = verify(journal_dir)
        if report.damage is not None:
            seg, off, reason = report.damage.segment, report.damage.offset, report.damage.what
        elif report.torn is not None:
            seg, off, reason = report.torn.segment, report.torn.offset, report.torn.reason
        else:
            return RepairReport(None)
        path = journal_dir / seg
        size = path.stat().st_size
        if off < HEADER_SIZE:
            backup = _move_aside(path)
            off, dropped = 0, size
        else:
            backup = _backup_path(path)
            _write_file(backup, path.read_bytes(), sync=True)
            os.chmod(backup, 0o600)
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, off)
                os.fsync(fd)
            finally:
                os.close(fd)
            dropped = size - off
        moved = []
        for later in list_segments(journal_dir):
            if _segment_num(later) > _segment_num(path):
                dropped += later.stat().st_size
                _move_aside(later)
                moved.append(later.name)
        fsync_dir(journal_dir)
        _log.warning(
            "journal repaired: cut %s at byte %d (%s), dropped %d bytes, backup %s%s",
            seg, off, reason, dropped, backup.name,
            f", moved aside {', '.join(moved)}" if moved else "",
        )
        return RepairReport(seg, off, dropped, backup, moved, reason)
