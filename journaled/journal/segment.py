"""Segments: names, headers, whole-file installs, and the scan replay and verify share."""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from journaled.durable import fsync_dir
from journaled.errors import JournalCorrupt

from .frame import HEADER_SIZE, FrameReader

__all__ = [
    "MAGIC", "FORMAT_VERSION", "FLAG_BASE", "segment_header", "TornTail", "list_segments",
    "segment_name", "segment_num",
]

MAGIC = b"JOURNALD"
FORMAT_VERSION = 1
FLAG_BASE = 0x1
_KNOWN_FLAGS = FLAG_BASE

_HEADER = struct.Struct("<8sII")
SEGMENT_RE = re.compile(r"^(\d{8})\.log$")


def segment_header(flags: int = 0) -> bytes:
    """The 16-byte header that opens every segment; ``flags`` is 0 or ``FLAG_BASE``."""
    if flags & ~_KNOWN_FLAGS:
        raise ValueError(f"flags must be 0 or FLAG_BASE ({FLAG_BASE}), got {flags:#x}")
    return _HEADER.pack(MAGIC, FORMAT_VERSION, ((flags ^ 0xFFFF) << 16) | flags)


def check_header(data: bytes, segment: str, is_last: bool) -> int | None:
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


@dataclass(frozen=True)
class TornTail:
    """A torn tail found by replay: the newest segment is cut back to ``offset``."""

    segment: str
    offset: int
    dropped_bytes: int
    reason: str


def segment_name(num: int) -> str:
    return f"{num:08d}.log"


def segment_num(path: Path) -> int:
    return int(path.name[:8])


def list_segments(journal_dir: Path | str) -> list[Path]:
    """Segment files of ``journal_dir`` in order; dot-files and backups are skipped."""
    try:
        names = os.listdir(journal_dir)
    except FileNotFoundError:
        return []
    return [Path(journal_dir) / name for name in sorted(n for n in names if SEGMENT_RE.match(n))]


def read_head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(HEADER_SIZE)


def write_file(path: Path, data: bytes | bytearray, sync: bool) -> None:
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


def install_segment(journal_dir: Path, num: int, data: bytes, sync: bool) -> Path:
    """Create segment ``num`` whole: temp dot-file, fsync, rename, fsync directory.

    A crash before the rename leaves only a dot-file that replay ignores; after
    it, the segment exists with its full header, never half of one.
    """
    path = journal_dir / segment_name(num)
    tmp = journal_dir / f".{path.name}.tmp"
    tmp.unlink(missing_ok=True)
    write_file(tmp, data, sync)
    os.rename(tmp, path)
    if sync:
        fsync_dir(journal_dir)
    return path


@dataclass
class Scan:
    """What a pass over the journal found, filled in as it goes."""

    live: list[Path] = field(default_factory=list)  # replay start .. newest
    torn: TornTail | None = None
    end_offset: int = 0  # last good offset of the newest segment
    done: bool = False


def replay_start(segments: list[Path]) -> int:
    """Index in ``segments`` of the newest BASE segment (0 if none is BASE)."""
    for i in range(len(segments) - 1, -1, -1):
        try:
            head = check_header(read_head(segments[i]), segments[i].name, i == len(segments) - 1)
        except JournalCorrupt:
            continue  # reported by the forward pass, after the records before it
        if head is not None and head & FLAG_BASE:
            return i
    return 0


def scan(journal_dir: Path, out: Scan) -> Iterator[tuple[str, int, bytes]]:
    """Yield every whole record from the newest BASE segment on; see the package docstring."""
    segments = list_segments(journal_dir)
    if not segments:
        out.done = True
        return
    live = out.live = segments[replay_start(segments):]
    for i, path in enumerate(live):
        is_last = i == len(live) - 1
        name = path.name
        if i and segment_num(path) != segment_num(live[i - 1]) + 1:
            missing = segment_name(segment_num(live[i - 1]) + 1)
            raise JournalCorrupt(
                name, 0, f"segment {missing} is missing between {live[i - 1].name} and {name}"
            )
        data = path.read_bytes()
        if check_header(data, name, is_last) is None:
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
