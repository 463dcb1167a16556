"""``verify`` (report, change nothing) and ``repair`` (cut at the first bad record, backup kept)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from journaled.durable import fsync_dir
from journaled.errors import JournalCorrupt

from .frame import HEADER_SIZE
from .lock import StateLock
from .mark import MarkWriter, data_bytes
from .segment import Scan, TornTail, list_segments, scan, segment_num, write_file

__all__ = ["VerifyReport", "verify", "RepairReport", "repair"]

_log = logging.getLogger("journaled.journal")

Decode = Callable[[bytes], object]


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found; it reports damage instead of raising it."""

    segments: int  # live segments, replay start to newest
    records: int  # whole records before any damage or torn tail
    bytes: int  # data in the live segments (not the zeros allocated ahead)
    torn: TornTail | None
    damage: JournalCorrupt | None

    @property
    def ok(self) -> bool:
        """True when a supervisor would start without cutting anything."""
        return self.torn is None and self.damage is None


def verify(journal_dir: Path | str, decode: Decode | None = None) -> VerifyReport:
    """Read the whole journal and report; changes nothing, takes no lock.

    With ``decode`` (``journaled.records.decode``), a body whose CRC passes
    but which does not decode is damage at its segment and offset, as it is
    for every reader.
    """
    out = Scan()
    records = 0
    damage: JournalCorrupt | None = None
    try:
        for seg, off, body in scan(Path(journal_dir), out):
            if decode is not None:
                try:
                    decode(body)
                except Exception as e:  # noqa: BLE001 - any decode failure is damage
                    raise JournalCorrupt(seg, off, f"undecodable record ({e})") from None
            records += 1
    except JournalCorrupt as err:
        damage = err
    # The data, not the zeros the writer allocates ahead of it (left by a kill).
    return VerifyReport(len(out.live), records, data_bytes(journal_dir, out.live), out.torn,
                        damage)


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


def repair(journal_dir: Path | str, decode: Decode | None = None) -> RepairReport:
    """Cut the journal back to its last good record, keeping a backup of what is cut.

    For a torn tail or damage at byte X of segment S (with ``decode``, an
    undecodable record is damage too): S is copied to ``S.broken`` (mode
    0600, numbered if that exists), the directory is fsynced so the backup
    survives, and only then is S truncated at X (a segment whose header is
    bad is moved aside whole); every later segment is moved aside too,
    since it cannot be trusted to follow. Takes the state lock, so it
    refuses to run under a live supervisor.

    Raises:
        StateLocked: a supervisor holds the state directory.
    """
    journal_dir = Path(journal_dir)
    with StateLock(journal_dir.parent):
        report = verify(journal_dir, decode)
        if report.damage is not None:
            seg, off, reason = report.damage.segment, report.damage.offset, report.damage.what
        elif report.torn is not None:
            seg, off, reason = report.torn.segment, report.torn.offset, report.torn.reason
        else:
            return RepairReport(None)
        # Readers must not trust a mark pointing past the cut.
        mark = MarkWriter(journal_dir)
        mark.invalidate()
        mark.close()
        path = journal_dir / seg
        size = path.stat().st_size
        if off < HEADER_SIZE:
            backup = _move_aside(path)
            off, dropped = 0, size
        else:
            backup = _backup_path(path)
            write_file(backup, path.read_bytes(), sync=True)
            os.chmod(backup, 0o600)
            # Crash window: the backup's name must be durable before the cut,
            # or a power cut could keep the truncation and lose the backup.
            fsync_dir(journal_dir)
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, off)
                os.fsync(fd)
            finally:
                os.close(fd)
            dropped = size - off
        moved = []
        for later in list_segments(journal_dir):
            if segment_num(later) > segment_num(path):
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
