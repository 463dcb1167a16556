"""The journal: an fsync'd, append-only log of opaque records, in numbered segments.

On-disk format (version 1)
--------------------------

The journal of a state directory lives in ``STATE/journal/``. It is a run of
segment files named ``NNNNNNNN.log``: eight decimal digits, starting at
``00000001.log`` and counting up by one, with no gaps from the replay start
to the newest segment. Other names in the directory are ignored by replay:
``.*.tmp`` are temp files of an unfinished create (deleted on the next
open), ``synced.mark`` is the synced mark (below) and ``*.log.broken*`` are
backups left by ``repair``.

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
record (``journaled.records``); the writer and tailer treat it as opaque
bytes, ``journaled.replay`` decodes it. A body is 1 to ``MAX_BODY``
(64 MiB) bytes; a length of 0 or above ``MAX_BODY`` is never valid, and a
length is checked against the bytes left in the file before the body is
read.

Recovery rule (``frame.py``): a bad frame is a *torn tail* only when it is
at the end of the newest segment, no valid frame starts where it claims to
end, and either its declared end is past end of file or one of its 512-byte
sectors (aligned to the file) is all zeros from where the frame enters it
to the sector's end: a write that never reached the disk, so never synced,
so never acknowledged. It is cut back to the end of the last whole record
and logged once. Everything else is damage: a full-length frame whose CRC
fails (even the very last one: bit rot in an acknowledged record), a bad
frame in an older segment or followed by a valid one, a length that one
flipped bit makes run past end of file although the record is whole, a bad
header, a missing segment, and a frame whose CRC passes but whose body does
not decode. Replay stops with ``JournalCorrupt(segment, offset, reason)``;
``verify`` reports it and ``repair`` cuts it off, keeping a backup.

The newest segment may run on past its last frame in zeros: space the
writer allocates ahead of its data (``writer.PREALLOC``), so that an
fdatasync flushes data blocks only, not the file's size and extents too.
Zeros from the end of a whole frame to the end of the newest segment are
its clean end, neither torn nor damage (a last write that never reached the
disk reads the same: never synced, so never acknowledged). A segment is cut
to its data, durably, before the next one is created (and on close), so
zeros after the data of an older segment are damage.

The synced mark (``mark.py``): after each fdatasync the writer stores
"durable up to (segment, offset)" into ``synced.mark`` (32 bytes with a crc).
Readers in other processes (``JournalTailer``, so ``Client``, the CLI and
``watch``) never hand out a frame past it while its writer holds the lock;
with no live writer they read whole frames and fdatasync them before
handing them out (``tailer.py``).

One writer at a time: ``StateLock`` takes an ``flock`` on ``STATE/lock``
(plus an OFD lock that ``StateLock.holder`` can test without taking it).

Modules: ``frame`` (framing and the torn rule), ``segment`` (names,
headers, installs, the scan), ``mark`` (the synced mark), ``lock``
(``StateLock``), ``writer`` (``Journal``), ``flusher``
(``Flusher``, the sync thread), ``tailer`` (``JournalTailer``),
``repair`` (``verify``, ``repair``).
"""

from __future__ import annotations

from journaled.durable import fsync_dir

from .flusher import Flusher, Parker
from .frame import HEADER_SIZE, MAX_BODY, SECTOR, FrameReader, encode_frame
from .lock import StateLock
from .mark import MARK_NAME, SyncedMark, read_mark
from .repair import RepairReport, VerifyReport, repair, verify
from .segment import FLAG_BASE, FORMAT_VERSION, MAGIC, TornTail, list_segments, segment_header
from .tailer import JournalTailer
from .writer import SLOW_SYNC_SECONDS, Journal

__all__ = [
    "MAGIC", "FORMAT_VERSION", "HEADER_SIZE", "FLAG_BASE", "MAX_BODY", "SECTOR",
    "encode_frame", "segment_header", "FrameReader", "TornTail", "list_segments",
    "Journal", "Flusher", "Parker", "StateLock", "JournalTailer", "VerifyReport", "verify",
    "RepairReport", "repair",
    "MARK_NAME", "SyncedMark", "read_mark", "SLOW_SYNC_SECONDS", "fsync_dir",
]
