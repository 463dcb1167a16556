"""Frames: ``u32 length | u32 crc32(body) | body``, and the rule that tells torn from damaged.

The torn-tail rule (see the package docstring) is decided here and only
here, from the bytes of one segment: a bad frame is *torn* only when it is
the last thing in the newest segment, nothing valid starts after it, and
either its declared end is past end of file or one of its 512-byte
sectors (aligned to the file) reads as zeros. Every other bad frame is
damage: a full-length frame whose CRC fails is bit rot in a record that
may have been acknowledged, never a crash mid-write.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

from journaled.errors import JournalCorrupt, RecordTooLarge

__all__ = ["HEADER_SIZE", "MAX_BODY", "SECTOR", "encode_frame", "FrameReader"]

HEADER_SIZE = 16  # every segment opens with this many header bytes (see segment.py)
MAX_BODY = 64 << 20  # one record body; journaled.limits says it again (a test checks)
SECTOR = 512  # the unit a disk writes whole, or not at all

_FRAME = struct.Struct("<II")
_ZEROS = bytes(SECTOR)


def check_body_size(n: int) -> None:
    """Raise ``RecordTooLarge`` unless a body of ``n`` bytes fits one frame."""
    if not 0 < n <= MAX_BODY:
        raise RecordTooLarge(n, MAX_BODY)


def encode_frame(body: bytes) -> bytes:
    """Frame one record body: ``u32 length | u32 crc32(body) | body``.

    Raises:
        RecordTooLarge: the body is empty or over ``MAX_BODY`` (also a ValueError).
    """
    check_body_size(len(body))
    return _FRAME.pack(len(body), zlib.crc32(body)) + bytes(body)


def _valid_frame_at(data: bytes | memoryview, p: int) -> bool:
    n = len(data)
    if n - p < 9:
        return False
    length, crc = _FRAME.unpack_from(data, p)
    end = p + 8 + length
    return 0 < length <= MAX_BODY and end <= n and zlib.crc32(data[p + 8:end]) == crc


def _length_took_a_flipped_bit(data: bytes | memoryview, offset: int, declared_len: int) -> bool:
    """Whether a frame whose length runs past end of file is a whole record with a bad length.

    Tried with each one-bit correction of the length: the frame's own crc
    matching, or a valid frame starting right after it, proves the record was
    written whole and the log went on; that is damage, not a torn write.
    Cheap (at most 32 tries), unlike scanning every offset.
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


def _zero_sector(data: bytes | memoryview, lo: int, hi: int, base: int) -> int | None:
    """The data index of a sector of ``[lo, hi)`` that reads as zeros, or None.

    Sectors are aligned to the file (``base`` is the file offset of
    ``data[0]``). A sector counts when it is zero from where the frame
    enters it to the sector's end (or end of file): a lost sector write
    leaves the whole sector as it was, so zeros confined to part of a
    sector whose other part holds this frame's bytes are not a lost write.
    """
    n = len(data)
    s = ((base + lo) // SECTOR) * SECTOR - base
    while s < hi:
        a, b = max(lo, s), min(s + SECTOR, n)
        if a < b and data[a:b] == _ZEROS[: b - a]:
            return a
        s += SECTOR
    return None


class FrameReader:
    """Iterate ``(offset, body)`` over the frames of one segment's bytes.

    After a full iteration, ``last_good_offset`` is the byte just past the last
    whole record and ``end`` says how the segment ended: ``"clean"`` or
    ``"torn"`` (with ``torn_reason``). Damage raises ``JournalCorrupt``. Each
    body is a slice of ``data`` (bytes for bytes, memoryview for memoryview).
    Offsets (yielded, ``last_good_offset`` and in errors) are file offsets:
    ``base`` plus the index into ``data``.

    Args:
        data: the segment's bytes (or a part of them starting at a frame).
        segment: file name used in errors.
        start: index in ``data`` of the first frame.
        is_last: whether ``data`` ends the newest segment, the only place a tail may be torn.
        base: file offset of ``data[0]`` (a tailer reads from the middle of a file).
    """

    def __init__(
        self, data: bytes | memoryview, segment: str, start: int = HEADER_SIZE,
        is_last: bool = True, base: int = 0,
    ) -> None:
        self.data = data
        self.segment = segment
        self.start = start
        self.is_last = is_last
        self.base = base
        self.last_good_offset = base + start
        self.end = ""
        self.torn_reason = ""

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        data = self.data
        n = len(data)
        off = self.start
        base = self.base
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
            yield base + off, body
            off = end
        self.last_good_offset = base + off
        if off == n or (self.is_last and data[off:] == bytes(n - off)):
            # Zeros from a frame's start to the end of the newest segment are
            # space the writer allocated ahead of its data (writer.PREALLOC):
            # its clean end. (A lost last write reads the same: never synced,
            # so never acknowledged, dropped either way.)
            self.end = "clean"
            return
        self._bad_frame(off)

    def _bad_frame(self, off: int) -> None:
        torn, reason = _judge(self.data, off, self.base)
        if self.is_last and torn:
            self.end = "torn"
            self.torn_reason = reason
            return
        raise JournalCorrupt(self.segment, self.base + off, reason)


def _judge(data: bytes | memoryview, off: int, base: int) -> tuple[bool, str]:
    """Whether the bad frame at ``off`` may be torn (if it ends the newest segment), and why."""
    n = len(data)
    left = n - off
    if left < 8:
        return True, f"frame header cut short ({left} of 8 bytes)"
    length, stored = _FRAME.unpack_from(data, off)
    all_zero = data[off:] == bytes(left)
    zeros = f"{left} zero bytes to end of file"
    if off + 8 + length > n:
        # Its declared end is past end of file: a write cut short, unless the
        # record is in fact whole and only its length field took a hit.
        why = zeros if all_zero else (
            f"length {length} runs past end of file ({left - 8} bytes left)")
        return not _length_took_a_flipped_bit(data, off, length), why
    if length == 0:
        why, end = "length 0 (a body is never empty)", off + 8
    elif length > MAX_BODY:
        why, end = f"length {length} exceeds the maximum {MAX_BODY}", off + 8
    else:
        end = off + 8 + length
        computed = zlib.crc32(data[off + 8:end])
        why = f"crc mismatch (stored {stored:08x}, computed {computed:08x})"
    if all_zero:
        return True, zeros
    zero_at = _zero_sector(data, off, end, base)
    if zero_at is None:
        return False, why  # full length, no lost sector: damage, even at the very end
    if _valid_frame_at(data, end):
        return False, why + "; a valid frame follows it"
    return True, f"{why}; the sector at byte {base + zero_at} is all zeros (never written)"
