"""verify and repair, driven like etcd's repair_test: one helper, one corruption per case."""

from __future__ import annotations

import os
import stat
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from journaled.errors import JournalCorrupt, StateLocked
from journaled.journal import (
    HEADER_SIZE,
    FrameReader,
    Journal,
    StateLock,
    list_segments,
    repair,
    verify,
)

# The journal every case starts from: 12 records in three segments of 5, 5 and 2.
BODIES = [f"record-{i:05d}-".encode() + b"x" * (i % 7) for i in range(12)]
SEGMENT_BYTES = 120
LAYOUT = [5, 5, 2]


def _build(jdir: Path) -> None:
    j = Journal(jdir, segment_bytes=SEGMENT_BYTES, unsafe_no_fsync=True)
    list(j.replay())
    j.open_for_append()
    for body in BODIES:
        j.append(body)
        j.commit()
    j.close()
    counts = [len(list(FrameReader(p.read_bytes(), p.name))) for p in list_segments(jdir)]
    assert counts == LAYOUT, "the fixture journal's layout changed; update the cases"


def _frame_starts(path: Path) -> list[int]:
    return [off for off, _ in FrameReader(path.read_bytes(), path.name)]


def _check_repair(
    corrupt: Callable[[Path, int], None], survivors: int, *, damaged: bool = False
) -> None:
    """Corrupt the fixture journal, then check verify, repair, replay and append.

    ``corrupt`` gets the newest segment's path and its size (the end offset);
    ``survivors`` is how many records must remain; ``damaged`` says whether
    start-up must refuse (damage) rather than cut a torn tail itself.
    """
    with tempfile.TemporaryDirectory() as tmp:
        jdir = Path(tmp) / "state" / "journal"
        _build(jdir)
        newest = list_segments(jdir)[-1]
        corrupt(newest, newest.stat().st_size)
        before = {p.name: p.read_bytes() for p in list_segments(jdir)}

        report = verify(jdir)
        assert report.records == survivors
        assert not report.ok
        if damaged:
            assert report.damage is not None and report.torn is None
            with pytest.raises(JournalCorrupt):
                list(Journal(jdir).replay())
        else:
            assert report.damage is None and report.torn is not None
            j = Journal(jdir)
            assert [b for _, _, b in j.replay()] == BODIES[:survivors]
            assert j.torn == report.torn
        assert {p.name: p.read_bytes() for p in list_segments(jdir)} == before, (
            "verify and replay must not change anything"
        )

        result = repair(jdir)
        assert result.segment is not None and result.backup is not None
        assert result.backup.exists() and result.backup.name.startswith(result.segment + ".broken")
        assert stat.S_IMODE(result.backup.stat().st_mode) == 0o600
        if result.segment in {p.name for p in list_segments(jdir)}:
            assert result.backup.read_bytes() == before[result.segment], "backup before the cut"
        for name in result.moved_aside:
            assert (jdir / (name + ".broken")).read_bytes() == before[name]
        remaining = sum(len(d) for d in before.values()) - result.dropped_bytes
        assert sum(p.stat().st_size for p in list_segments(jdir)) == remaining

        after = verify(jdir)
        assert after.ok and after.records == survivors, f"after repair: {after}"
        assert repair(jdir).segment is None, "a second repair has nothing to do"

        j = Journal(jdir)
        assert [b for _, _, b in j.replay()] == BODIES[:survivors]
        assert j.torn is None
        j.open_for_append()
        j.extend([b"new-1", b"new-2"])
        j.commit()
        j.close()
        j = Journal(jdir)
        assert [b for _, _, b in j.replay()] == BODIES[:survivors] + [b"new-1", b"new-2"]


def _flip(path: Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


@pytest.mark.timeout(10)
def test_repair_cut_mid_frame():
    def corrupt(path: Path, end: int) -> None:
        os.truncate(path, end - 5)

    _check_repair(corrupt, 11)


@pytest.mark.timeout(10)
def test_repair_cut_inside_the_header_of_the_newest_segment():
    def corrupt(path: Path, end: int) -> None:
        os.truncate(path, 9)

    _check_repair(corrupt, 10)


@pytest.mark.timeout(10)
def test_repair_zeroed_tail():
    # The last frame's end zeroed inside a sector that also holds its start:
    # no sector write was lost, so it is damage (sector rule), cut by repair.
    def corrupt(path: Path, end: int) -> None:
        with open(path, "r+b") as f:
            f.seek(end - 10)
            f.write(b"\0" * 10)

    _check_repair(corrupt, 11, damaged=True)


@pytest.mark.timeout(10)
def test_zeros_to_the_end_are_a_clean_end_with_nothing_to_repair():
    # Zeros from a frame's start to the end of the newest segment: the writer's
    # space ahead of its data (PREALLOC), or a last write that never reached
    # the disk (never synced, never acknowledged). Either way the clean end.
    def zero_last_frame(path: Path, end: int) -> None:
        start = _frame_starts(path)[-1]
        with open(path, "r+b") as f:
            f.seek(start)
            f.write(b"\0" * (end - start))

    def zeros_after(path: Path, end: int) -> None:
        with open(path, "ab") as f:
            f.write(b"\0" * 512)

    for corrupt, survivors in ((zero_last_frame, 11), (zeros_after, 12)):
        with tempfile.TemporaryDirectory() as tmp:
            jdir = Path(tmp) / "state" / "journal"
            _build(jdir)
            newest = list_segments(jdir)[-1]
            corrupt(newest, newest.stat().st_size)
            report = verify(jdir)
            assert report.ok and report.records == survivors and report.torn is None
            assert repair(jdir).segment is None
            j = Journal(jdir)
            assert [b for _, _, b in j.replay()] == BODIES[:survivors] and j.torn is None
            j.close()


@pytest.mark.timeout(10)
def test_repair_length_past_end_of_file():
    def corrupt(path: Path, end: int) -> None:
        # Made with struct.pack("<II", 1000, 0xDEADBEEF) + b"partial": a frame header
        # promising a 1000-byte body of which 7 bytes were written.
        literal = b"\xe8\x03\x00\x00\xef\xbe\xad\xdepartial"
        assert literal == struct.pack("<II", 1000, 0xDEADBEEF) + b"partial"
        with open(path, "ab") as f:
            f.write(literal)

    _check_repair(corrupt, 12)


@pytest.mark.timeout(10)
def test_repair_bad_frame_followed_by_a_valid_one_in_the_newest_segment():
    def corrupt(path: Path, end: int) -> None:
        _flip(path, _frame_starts(path)[0] + 8)  # first body byte of its first record

    _check_repair(corrupt, 10, damaged=True)


@pytest.mark.timeout(10)
def test_repair_flipped_byte_in_an_earlier_segment_moves_later_segments_aside():
    def corrupt(path: Path, end: int) -> None:
        first = path.parent / "00000001.log"
        _flip(first, _frame_starts(first)[1] + 12)  # inside record 1's body

    _check_repair(corrupt, 1, damaged=True)


@pytest.mark.timeout(10)
def test_repair_bad_header_in_a_middle_segment():
    def corrupt(path: Path, end: int) -> None:
        _flip(path.parent / "00000002.log", 3)  # inside the magic

    _check_repair(corrupt, 5, damaged=True)


@pytest.mark.timeout(10)
def test_repair_missing_middle_segment_moves_the_later_ones_aside():
    def corrupt(path: Path, end: int) -> None:
        (path.parent / "00000002.log").unlink()

    _check_repair(corrupt, 5, damaged=True)


@pytest.mark.timeout(10)
def test_verify_reports_a_clean_journal(tmp_path):
    jdir = tmp_path / "journal"
    _build(jdir)
    report = verify(jdir)
    assert report.ok and report.records == 12 and report.segments == 3
    assert report.bytes == sum(p.stat().st_size for p in list_segments(jdir))
    assert repair(jdir).segment is None
    empty = verify(tmp_path / "nothing-here")
    assert empty.ok and empty.records == 0 and empty.segments == 0


@pytest.mark.timeout(10)
def test_verify_reports_damage_instead_of_raising(tmp_path):
    jdir = tmp_path / "journal"
    _build(jdir)
    first = jdir / "00000001.log"
    _flip(first, HEADER_SIZE + 9)
    report = verify(jdir)
    assert report.records == 0 and report.torn is None
    assert (report.damage.segment, report.damage.offset) == ("00000001.log", HEADER_SIZE)


@pytest.mark.timeout(10)
def test_repair_refuses_while_a_supervisor_holds_the_lock(tmp_path):
    jdir = tmp_path / "state" / "journal"
    _build(jdir)
    newest = list_segments(jdir)[-1]
    os.truncate(newest, newest.stat().st_size - 3)
    before = newest.read_bytes()
    with StateLock(tmp_path / "state"):
        with pytest.raises(StateLocked):
            repair(jdir)
    assert newest.read_bytes() == before
    assert not list(jdir.glob("*.broken*"))
    assert repair(jdir).segment == newest.name


@pytest.mark.timeout(10)
def test_second_backup_of_the_same_segment_gets_a_numeric_suffix(tmp_path):
    jdir = tmp_path / "state" / "journal"
    _build(jdir)
    newest = list_segments(jdir)[-1]
    os.truncate(newest, newest.stat().st_size - 3)
    first = repair(jdir)
    os.truncate(newest, newest.stat().st_size - 3)
    second = repair(jdir)
    assert first.backup.name == newest.name + ".broken"
    assert second.backup.name == newest.name + ".broken.1"
    assert verify(jdir).records == 10
