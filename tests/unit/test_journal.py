"""Journal framing, replay, torn tails, damage, group commit, power loss, compaction, tailing."""

from __future__ import annotations

import logging
import os
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

from journaled import failpoints, journal, records
from journaled.errors import JournalCorrupt, StateLocked, StorageFailure
from journaled.journal import (
    FLAG_BASE,
    HEADER_SIZE,
    FrameReader,
    Journal,
    JournalTailer,
    StateLock,
    encode_frame,
    list_segments,
    segment_header,
)
from journaled.journal.mark import data_bytes

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden.log"


@pytest.fixture(autouse=True)
def _reset_failpoints():
    failpoints.reset()
    yield
    failpoints.reset()


# --- helpers ------------------------------------------------------------------------------


def _bodies(n: int, start: int = 0) -> list[bytes]:
    """Distinct bodies of varying length, so frames do not line up by accident."""
    return [f"record-{i:05d}-".encode() + b"x" * (i % 7) for i in range(start, start + n)]


def _write_journal(
    jdir: Path, bodies: list[bytes], *, segment_bytes: int = 64 << 20, batch: int = 1
) -> None:
    j = Journal(jdir, segment_bytes=segment_bytes, unsafe_no_fsync=True)
    assert list(j.replay()) == []
    j.open_for_append()
    for i in range(0, len(bodies), batch):
        j.extend(bodies[i:i + batch])
        j.commit()
    j.close()


def _replay(jdir: Path, **kw) -> tuple[list[bytes], journal.TornTail | None]:
    j = Journal(jdir, unsafe_no_fsync=True, **kw)
    got = [body for _, _, body in j.replay()]
    return got, j.torn


def _frame_ends(data: bytes) -> list[int]:
    return [off + 8 + len(body) for off, body in FrameReader(data, "x")]


def _run_child(code: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    full_env.setdefault("JOURNALED_FAILPOINTS", "")
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=full_env, capture_output=True, text=True, timeout=30,
    )


# Child: commits each argument as one record; the argument KILL is a kill -9 of itself.
CHILD_APPEND = """
import os, signal, sys
from journaled.journal import Journal
j = Journal(sys.argv[1])
list(j.replay())
j.open_for_append()
for arg in sys.argv[2:]:
    if arg == "KILL":
        os.kill(os.getpid(), signal.SIGKILL)
    j.append(arg.encode())
    j.commit()
"""

# Child: compacts the journal into a snapshot made of the arguments.
CHILD_COMPACT = """
import sys
from journaled.journal import Journal
j = Journal(sys.argv[1], segment_bytes=int(sys.argv[2]))
list(j.replay())
j.open_for_append()
j.compact([a.encode() for a in sys.argv[3:]])
print("compacted")
"""


# --- framing and round trip -------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_frame_layout_is_length_crc_body_little_endian():
    frame = encode_frame(b"hello")
    assert frame == struct.pack("<II", 5, zlib.crc32(b"hello")) + b"hello"
    assert len(segment_header()) == HEADER_SIZE == 16
    with pytest.raises(ValueError, match="1 to"):
        encode_frame(b"")


@pytest.mark.timeout(30)
def test_round_trip_across_rotations(tmp_path):
    jdir = tmp_path / "state" / "journal"
    bodies = _bodies(600)
    j = Journal(jdir, segment_bytes=1024, unsafe_no_fsync=True)
    assert list(j.replay()) == []
    j.open_for_append()
    i = 0
    for n in [1, 5, 17, 3, 40] * 100:
        if i >= len(bodies):
            break
        j.extend(bodies[i:i + n])
        j.commit()
        i += n
    j.commit()  # empty: a no-op
    assert j.records_written == len(bodies)
    assert j.bytes_written == sum(8 + len(b) for b in bodies)
    assert j.syncs == 0, "unsafe_no_fsync must skip every fdatasync"
    segments = list_segments(jdir)
    assert len(segments) > 5
    # The data (older segments are cut to theirs; the open one runs on in zeros).
    size = j.size_bytes
    assert size == sum(p.stat().st_size for p in segments[:-1]) + j._size
    j.close()
    assert size == sum(p.stat().st_size for p in segments)  # close cut the zeros
    got, torn = _replay(jdir)
    assert got == bodies and torn is None
    seen = [(seg, off) for seg, off, _ in Journal(jdir).replay()]
    assert seen[0] == ("00000001.log", HEADER_SIZE)
    assert [p.name for p in segments] == [f"{n:08d}.log" for n in range(1, len(segments) + 1)]


@pytest.mark.timeout(10)
def test_first_open_creates_private_dir_and_segment(tmp_path):
    jdir = tmp_path / "state" / "journal"
    j = Journal(jdir)
    assert stat.S_IMODE(jdir.stat().st_mode) == 0o700
    assert list(j.replay()) == []
    assert list_segments(jdir) == [], "constructing and replaying must not create segments"
    j.open_for_append()
    seg = jdir / "00000001.log"
    assert seg.read_bytes() == segment_header(0)
    assert stat.S_IMODE(seg.stat().st_mode) == 0o600
    j.append(b"one")
    j.commit()
    assert j.syncs == 1
    j.close()
    assert _replay(jdir) == ([b"one"], None)


@pytest.mark.timeout(10)
def test_open_for_append_requires_a_full_replay(tmp_path):
    j = Journal(tmp_path / "journal")
    with pytest.raises(RuntimeError, match="replay"):
        j.open_for_append()


@pytest.mark.timeout(10)
def test_list_segments_ignores_temp_files_and_backups(tmp_path):
    for name in ["00000002.log", "00000001.log", ".00000003.log.tmp", "00000001.log.broken",
                 "00000001.log.broken.1", "lock", "1.log", "000000001.log"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_segments(tmp_path)] == ["00000001.log", "00000002.log"]


# --- the frame reader ---------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_frame_reader_tells_clean_torn_and_damage_apart():
    data = segment_header() + encode_frame(b"a" * 10) + encode_frame(b"b" * 10)
    reader = FrameReader(data, "00000001.log")
    assert [body for _, body in reader] == [b"a" * 10, b"b" * 10]
    assert (reader.end, reader.last_good_offset) == ("clean", len(data))

    reader = FrameReader(data[:-3], "00000001.log")
    assert [body for _, body in reader] == [b"a" * 10]
    assert reader.end == "torn" and reader.last_good_offset == HEADER_SIZE + 18
    assert reader.torn_reason == "length 10 runs past end of file (7 bytes left)"

    bad = bytearray(data)
    bad[HEADER_SIZE + 8] ^= 0xFF  # first body byte
    with pytest.raises(JournalCorrupt) as exc:
        list(FrameReader(bytes(bad), "00000007.log"))
    stored, computed = zlib.crc32(b"a" * 10), zlib.crc32(bytes(bad[24:34]))
    assert exc.value.segment == "00000007.log" and exc.value.offset == HEADER_SIZE
    assert exc.value.what == f"crc mismatch (stored {stored:08x}, computed {computed:08x})"

    # Not the newest segment: the same short frame is damage, not a torn tail.
    with pytest.raises(JournalCorrupt, match="runs past end of file"):
        list(FrameReader(data[:-3], "00000001.log", is_last=False))


@pytest.mark.timeout(10)
def test_bad_header_is_damage_with_a_diagnosis(tmp_path):
    _write_journal(tmp_path, _bodies(3))
    seg = tmp_path / "00000001.log"
    data = seg.read_bytes()
    seg.write_bytes(b"JOURNALX" + data[8:])
    with pytest.raises(JournalCorrupt) as exc:
        _replay(tmp_path)
    assert exc.value.what == "bad segment header: magic b'JOURNALX' != b'JOURNALD'"
    seg.write_bytes(data[:8] + struct.pack("<I", 7) + data[12:])
    with pytest.raises(JournalCorrupt, match="unsupported format version 7"):
        _replay(tmp_path)


# --- torn tails -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_torn_tail_at_every_byte_offset_of_the_newest_segment(tmp_path):
    jdir = tmp_path / "journal"
    bodies = _bodies(12)
    _write_journal(jdir, bodies, segment_bytes=120)
    segments = list_segments(jdir)
    assert len(segments) >= 3
    older = [b for p in segments[:-1] for _, b in FrameReader(p.read_bytes(), p.name)]
    newest = segments[-1]
    original = newest.read_bytes()
    in_newest = [b for _, b in FrameReader(original, newest.name)]
    assert older + in_newest == bodies and len(in_newest) >= 2
    ends = [HEADER_SIZE, *_frame_ends(original)]
    tried = 0
    for cut in range(len(original)):
        newest.write_bytes(original[:cut])
        whole = [e for e in ends if e <= cut]
        expect = older + in_newest[: max(len(whole) - 1, 0)]
        j = Journal(jdir, unsafe_no_fsync=True)
        got = [b for _, _, b in j.replay()]
        assert got == expect, f"cut at {cut}"
        if cut in ends:
            assert j.torn is None, f"cut at frame boundary {cut} is a clean end"
        else:
            good = whole[-1] if whole else 0
            assert j.torn is not None and j.torn.offset == good, f"cut at {cut}"
            assert j.torn.dropped_bytes == cut - good
        j.open_for_append()
        assert newest.stat().st_size == max(whole[-1] if whole else 0, HEADER_SIZE)
        j.append(b"after-cut")
        j.commit()
        j.close()
        assert _replay(jdir) == (expect + [b"after-cut"], None), f"cut at {cut}"
        newest.write_bytes(original)
        tried += 1
    assert tried == len(original) > 50


@pytest.mark.timeout(10)
def test_torn_tail_cut_is_logged_once_with_segment_offset_and_bytes(tmp_path, caplog):
    _write_journal(tmp_path, _bodies(3))
    seg = tmp_path / "00000001.log"
    size = seg.stat().st_size
    with open(seg, "r+b") as f:
        f.truncate(size - 4)
    j = Journal(tmp_path, unsafe_no_fsync=True)
    assert len(list(j.replay())) == 2
    caplog.set_level(logging.WARNING, logger="journaled.journal")
    j.open_for_append()
    warnings = [r for r in caplog.records if r.name == "journaled.journal"]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    good = j.torn.offset
    assert f"00000001.log back to byte {good}" in msg
    assert f"dropping {size - 4 - good} bytes" in msg


@pytest.mark.timeout(10)
def test_zeros_to_the_end_of_the_newest_segment_are_its_clean_end(tmp_path):
    bodies = _bodies(4)
    _write_journal(tmp_path, bodies)
    seg = tmp_path / "00000001.log"
    data = seg.read_bytes()
    last_start = _frame_ends(data)[-2]
    # The last frame's pages never reached the disk: zeros in its place. Never
    # synced, so never acknowledged: the end, as the writer's zeros ahead are.
    seg.write_bytes(data[:last_start] + b"\0" * (len(data) - last_start))
    got, torn = _replay(tmp_path)
    assert got == bodies[:3] and torn is None
    # The file runs on past its data (the writer's PREALLOC): nothing to cut.
    seg.write_bytes(data + b"\0" * 4096)
    got, torn = _replay(tmp_path)
    assert got == bodies and torn is None
    # Only the last bytes of the last frame are zero, inside a sector that also
    # holds the frame's start: no sector was lost (a disk writes a sector whole
    # or not at all), so under the sector rule this is damage, not a torn tail.
    seg.write_bytes(data[:-5] + b"\0" * 5 + b"\0" * 100)
    with pytest.raises(JournalCorrupt) as exc:
        _replay(tmp_path)
    assert exc.value.offset == last_start and "crc mismatch" in exc.value.what


@pytest.mark.timeout(10)
def test_zeros_after_the_data_of_an_older_segment_are_damage(tmp_path):
    bodies = _bodies(40)
    _write_journal(tmp_path, bodies, segment_bytes=256)
    first = tmp_path / "00000001.log"
    data = first.read_bytes()  # cut to its data before the next segment began
    assert data[-1:] != b"\0" and len(list(tmp_path.glob("*.log"))) > 1
    first.write_bytes(data + b"\0" * 512)
    with pytest.raises(JournalCorrupt) as exc:
        _replay(tmp_path)
    assert exc.value.segment == first.name and exc.value.offset == len(data)


@pytest.mark.timeout(10)
def test_the_writer_keeps_zeros_ahead_and_appends_after_them_on_reopen(tmp_path):
    j = Journal(tmp_path, unsafe_no_fsync=True)
    assert list(j.replay()) == []
    j.open_for_append()
    j.extend(_bodies(3))
    j.commit()
    seg = tmp_path / "00000001.log"
    data_end = _frame_ends(seg.read_bytes()[:j.size_bytes])[-1]
    assert j.size_bytes == data_end  # the data, not the zeros ahead of it
    assert seg.stat().st_size >= data_end + journal.writer.PREALLOC
    assert data_bytes(tmp_path) == data_end, "the journal's size gauges count data only"
    assert journal.verify(tmp_path).bytes == data_end, "and so does verify"
    # Left as a kill leaves it (no close): replay ends at the data, no cut,
    # and the next writer goes on right after the last record.
    j2 = Journal(tmp_path, unsafe_no_fsync=True)
    assert [b for _, _, b in j2.replay()] == _bodies(3) and j2.torn is None
    j2.open_for_append()
    j2.extend(_bodies(2, 3))
    j2.commit()
    j2.close()  # a clean close cuts the zeros
    assert seg.stat().st_size == _frame_ends(seg.read_bytes())[-1]
    got, torn = _replay(tmp_path)
    assert got == _bodies(5) and torn is None
    os.close(j._fd)


@pytest.mark.timeout(10)
def test_length_past_end_of_file_is_torn(tmp_path):
    bodies = _bodies(2)
    _write_journal(tmp_path, bodies)
    seg = tmp_path / "00000001.log"
    # struct.pack("<II", 0xFFFFFFFF, 0) + b"abc": a frame header claiming a 4 GiB body.
    seg.write_bytes(seg.read_bytes() + b"\xff\xff\xff\xff\x00\x00\x00\x00abc")
    got, torn = _replay(tmp_path)
    assert got == bodies
    assert torn.reason == "length 4294967295 runs past end of file (3 bytes left)"


@pytest.mark.timeout(10)
def test_bad_frame_followed_by_a_valid_one_is_damage_not_a_torn_tail(tmp_path):
    bodies = _bodies(5)
    _write_journal(tmp_path, bodies)
    seg = tmp_path / "00000001.log"
    data = bytearray(seg.read_bytes())
    second = _frame_ends(bytes(data))[0]
    # A length flipped upward would run past end of file, but whole records follow it.
    data[second + 3] ^= 0x40
    seg.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as exc:
        _replay(tmp_path)
    assert (exc.value.segment, exc.value.offset) == ("00000001.log", second)
    assert "runs past end of file" in exc.value.what
    assert seg.read_bytes() == bytes(data), "replay must never change a damaged journal"


@pytest.mark.timeout(60)
def test_every_single_bit_flip_is_detected(tmp_path):
    bodies = _bodies(6)
    _write_journal(tmp_path, bodies, segment_bytes=90)
    segments = list_segments(tmp_path)
    assert len(segments) >= 2
    originals = {p: p.read_bytes() for p in segments}
    # Index of the first record of each segment, to map a flipped byte to its record.
    first_index, n = {}, 0
    for p in segments:
        first_index[p] = n
        n += len(_frame_ends(originals[p]))
    assert n == len(bodies)
    tried = damage = torn_count = 0
    for p in segments:
        data = originals[p]
        ends = _frame_ends(data)
        for pos in range(len(data)):
            if pos < HEADER_SIZE:
                record = None
            else:
                record = first_index[p] + sum(1 for e in ends if e <= pos)
            for bit in range(8):
                flipped = bytearray(data)
                flipped[pos] ^= 1 << bit
                p.write_bytes(bytes(flipped))
                tried += 1
                try:
                    got, torn = _replay(tmp_path)
                except JournalCorrupt:
                    damage += 1
                    continue
                where = f"{p.name} byte {pos} bit {bit}"
                assert torn is not None, f"flip at {where} went unnoticed"
                assert record is not None and len(got) <= record, f"flip at {where}"
                assert got == bodies[: len(got)], f"flip at {where} misread a record"
                torn_count += 1
        p.write_bytes(data)
    total = sum(len(d) for d in originals.values()) * 8
    assert tried == damage + torn_count == total, (
        f"{tried} flips tried: {damage} damage, {torn_count} torn tails"
    )


@pytest.mark.timeout(10)
def test_flipped_byte_in_an_earlier_segment_stops_and_never_truncates(tmp_path):
    _write_journal(tmp_path, _bodies(10), segment_bytes=100)
    segments = list_segments(tmp_path)
    first = segments[0]
    data = bytearray(first.read_bytes())
    second = _frame_ends(bytes(data))[0]
    data[second + 10] ^= 0x01
    first.write_bytes(bytes(data))
    before = {p: p.read_bytes() for p in segments}
    j = Journal(tmp_path)
    with pytest.raises(JournalCorrupt) as exc:
        list(j.replay())
    assert (exc.value.segment, exc.value.offset) == ("00000001.log", second)
    assert "crc mismatch" in exc.value.what
    assert "journaled verify" in str(exc.value)
    with pytest.raises(RuntimeError):
        j.open_for_append()
    assert {p: p.read_bytes() for p in segments} == before


@pytest.mark.timeout(10)
def test_missing_middle_segment_is_damage(tmp_path):
    _write_journal(tmp_path, _bodies(10), segment_bytes=100)
    segments = list_segments(tmp_path)
    assert len(segments) >= 3
    segments[1].unlink()
    with pytest.raises(JournalCorrupt) as exc:
        _replay(tmp_path)
    assert exc.value.segment == segments[2].name
    assert f"segment {segments[1].name} is missing" in exc.value.what


# --- golden segment -------------------------------------------------------------------------

GOLDEN_RECORDS = [
    records.Submitted(
        run_id="r-0001", input=b"\x00\x01payload", at=1700000000.5,
        headers={"trace": "abc123"}, priority=2, max_attempts=5, step_timeout=30.0,
    ),
    records.Leased(run_id="r-0001", step=0, attempt=1, worker=3, at=1700000001.25),
    records.StepDone(
        run_id="r-0001", step=0, attempt=1, payload=b"step-1-input", at=1700000002.0,
        due_at=1700000062.0,
    ),
    records.Leased(run_id="r-0001", step=1, attempt=1, worker=0, at=1700000062.5),
    records.AttemptFailed(
        run_id="r-0001", step=1, attempt=1, kind="error", error="ValueError: boom",
        at=1700000063.0, retry_at=1700000065.0, traceback="Traceback (most recent call last)",
    ),
    records.CancelRequested(run_id="r-0001", reason="operator asked", at=1700000064.0),
    records.Terminated(
        run_id="r-0001", status="cancelled", at=1700000064.5, step=1, attempt=1,
        error="cancelled: operator asked",
    ),
    records.Terminated(
        run_id="r-0002", status="succeeded", at=1700000070.0, step=4, attempt=2, result=b"42",
    ),
    records.HookDelivered(run_id="r-0001"),
    records.Recovered(at=1700000100.0, pid=4242),
]


@pytest.mark.timeout(10)
def test_golden_segment_pins_the_format():
    built = segment_header(0) + b"".join(encode_frame(records.encode(r)) for r in GOLDEN_RECORDS)
    if os.environ.get("JOURNALED_UPDATE_FIXTURES") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_bytes(built)
    data = GOLDEN.read_bytes()
    assert data[:16] == b"JOURNALD" + b"\x01\x00\x00\x00" + b"\x00\x00\xff\xff"
    assert built == data, (
        "the on-disk format changed; if on purpose, bump FORMAT_VERSION or rerun with "
        "JOURNALED_UPDATE_FIXTURES=1"
    )
    reader = FrameReader(data, "golden.log")
    assert [records.decode(body) for _, body in reader] == GOLDEN_RECORDS
    assert reader.end == "clean"


@pytest.mark.timeout(10)
def test_base_flag_lives_in_bit_0_with_its_complement_above():
    assert segment_header(FLAG_BASE)[12:] == struct.pack("<I", 0xFFFE0001)
    with pytest.raises(ValueError):
        segment_header(4)


# --- power loss and storage failure -----------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("power_loss", ["1", "0"])
def test_kill_before_sync_loses_the_batch_only_under_power_loss(tmp_path, power_loss):
    _write_journal(tmp_path, [b"kept-1", b"kept-2"])
    proc = _run_child(
        CHILD_APPEND, str(tmp_path), "unsynced",
        JOURNALED_FAILPOINTS="journal.before_sync=crash",
        JOURNALED_SIMULATE_POWER_LOSS=power_loss,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    got, torn = _replay(tmp_path)
    if power_loss == "1":
        assert got == [b"kept-1", b"kept-2"], "written but unsynced bytes must die with power"
    else:
        assert got == [b"kept-1", b"kept-2", b"unsynced"], "kill -9 keeps the page cache"
    assert torn is None


@pytest.mark.timeout(60)
def test_skipped_fdatasync_loses_the_batch_at_a_kill_under_power_loss(tmp_path):
    _write_journal(tmp_path, [b"kept"])
    proc = _run_child(
        CHILD_APPEND, str(tmp_path), "never-synced", "KILL",
        JOURNALED_FAILPOINTS="journal.fdatasync=skip@1", JOURNALED_SIMULATE_POWER_LOSS="1",
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _replay(tmp_path) == ([b"kept"], None)
    # A later commit that does sync carries the held bytes with it.
    proc = _run_child(
        CHILD_APPEND, str(tmp_path), "held", "synced", "KILL",
        JOURNALED_FAILPOINTS="journal.fdatasync=skip@1", JOURNALED_SIMULATE_POWER_LOSS="1",
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _replay(tmp_path) == ([b"kept", b"held", b"synced"], None)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "spec, op",
    [
        ("journal.before_write=error", "write"),
        ("journal.before_write=enospc", "write"),
        ("journal.before_write=short-write", "write"),
        ("journal.before_sync=error", "fdatasync"),
        ("journal.fdatasync=error", "fdatasync"),
        ("journal.fdatasync=enospc", "fdatasync"),
    ],
)
@pytest.mark.parametrize("power_loss", [False, True])
def test_storage_failure_is_final_and_leaves_a_consistent_prefix(tmp_path, spec, op, power_loss):
    bodies = _bodies(8)
    j = Journal(tmp_path, simulate_power_loss=power_loss)
    list(j.replay())
    j.open_for_append()
    j.extend(bodies[:5])
    j.commit()
    failpoints.configure(spec)
    j.extend(bodies[5:])
    with pytest.raises(StorageFailure) as exc:
        j.commit()
    assert exc.value.op == op and exc.value.path.endswith("00000001.log")
    failpoints.reset()
    with pytest.raises(StorageFailure):
        j.append(b"more")
    with pytest.raises(StorageFailure):
        j.commit()
    j.close()
    got, torn = _replay(tmp_path)
    assert got == bodies[: len(got)] and len(got) >= 5, "replay must give a prefix of the appends"
    if power_loss:
        assert len(got) == 5, "a batch that was never synced must not be replayed"
    elif "short-write" in spec:
        assert len(got) < 8 and torn is not None, "half a batch is a torn tail"
    j2 = Journal(tmp_path)
    list(j2.replay())
    j2.open_for_append()
    j2.append(b"after-restart")
    j2.commit()
    j2.close()
    assert _replay(tmp_path)[0] == got + [b"after-restart"]


@pytest.mark.timeout(10)
def test_slow_fdatasync_is_logged_with_its_duration(tmp_path, caplog, monkeypatch):
    j = Journal(tmp_path)
    list(j.replay())
    j.open_for_append()
    ticks = iter([100.0, 101.5])

    class _Clock:
        @staticmethod
        def monotonic() -> float:
            return next(ticks)

    monkeypatch.setattr(journal.writer, "time", _Clock)
    caplog.set_level(logging.WARNING, logger="journaled.journal")
    j.append(b"slow")
    j.commit()
    assert "slow fdatasync: 1500 ms on 00000001.log" in caplog.text


# --- compaction -----------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_compact_leaves_one_base_segment_then_appends_follow_it(tmp_path):
    old = _bodies(30)
    j = Journal(tmp_path, segment_bytes=200)
    list(j.replay())
    j.open_for_append()
    j.extend(old)
    j.commit()
    j.extend(_bodies(10, start=100))
    j.commit()
    j.append(b"pending")  # compact commits it first
    assert len(list_segments(tmp_path)) >= 2
    snapshot = [b"snapshot-a", b"snapshot-b"]
    j.compact(snapshot)
    segments = list_segments(tmp_path)
    assert len(segments) == 1
    head = segments[0].read_bytes()[:HEADER_SIZE]
    assert head == segment_header(FLAG_BASE)
    j.append(b"after")
    j.commit()
    size = j.size_bytes
    j.close()
    assert size == segments[0].stat().st_size  # the data: close cut the zeros ahead
    assert _replay(tmp_path) == (snapshot + [b"after"], None)
    assert [p.name for p in tmp_path.iterdir() if p.name != journal.MARK_NAME] == [
        segments[0].name
    ]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "point, expect",
    [
        ("compact.before_rename", "old"),
        ("compact.after_rename", "snapshot"),
        ("compact.before_delete", "snapshot"),
    ],
)
def test_crash_during_compaction_replays_old_or_snapshot_never_a_mix(tmp_path, point, expect):
    old = _bodies(20)
    _write_journal(tmp_path, old, segment_bytes=150)
    assert len(list_segments(tmp_path)) >= 3
    snapshot = ["snap-1", "snap-2"]
    proc = _run_child(
        CHILD_COMPACT, str(tmp_path), "150", *snapshot, JOURNALED_FAILPOINTS=f"{point}=crash"
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    wanted = old if expect == "old" else [s.encode() for s in snapshot]
    j = Journal(tmp_path)
    got = [b for _, _, b in j.replay()]
    assert got == wanted, f"crash at {point} must replay the {expect} state"
    j.open_for_append()  # finishes the interrupted compaction
    j.append(b"next")
    j.commit()
    j.close()
    names = sorted(p.name for p in tmp_path.iterdir() if p.name != journal.MARK_NAME)
    assert not [n for n in names if n.startswith(".")], "temp files must be cleaned up"
    if expect == "snapshot":
        assert len(names) == 1, f"old segments must be gone after the next open: {names}"
    assert _replay(tmp_path) == (wanted + [b"next"], None)


@pytest.mark.timeout(60)
def test_crash_before_rotation_leaves_a_journal_that_keeps_appending(tmp_path):
    _write_journal(tmp_path, [b"first"])
    proc = _run_child(
        "import sys\nfrom journaled.journal import Journal\n"
        "j = Journal(sys.argv[1], segment_bytes=30)\nlist(j.replay())\nj.open_for_append()\n"
        "j.append(b'fills-the-segment')\nj.commit()\n",
        str(tmp_path), JOURNALED_FAILPOINTS="journal.before_rotate=crash",
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [p.name for p in list_segments(tmp_path)] == ["00000001.log"]
    j = Journal(tmp_path, segment_bytes=30)
    list(j.replay())
    j.open_for_append()
    j.append(b"later")
    j.commit()
    j.close()
    assert _replay(tmp_path)[0] == [b"first", b"fills-the-segment", b"later"]


@pytest.mark.timeout(60)
def test_kill_after_rotations_leaves_zeros_only_ahead_of_the_newest_segment(tmp_path):
    # Each segment is cut to its data (durably) before the next is created; a
    # kill leaves the newest one running on in its zeros, which replay reads
    # as the clean end: no torn tail, nothing cut, appends go on after it.
    proc = _run_child(
        "import os, signal, sys\nfrom journaled.journal import Journal\n"
        "j = Journal(sys.argv[1], segment_bytes=200)\nlist(j.replay())\nj.open_for_append()\n"
        "for i in range(40):\n    j.append(b'record-%03d' % i)\n    j.commit()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n",
        str(tmp_path),
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    segments = list_segments(tmp_path)
    assert len(segments) > 2
    for seg in segments[:-1]:
        data = seg.read_bytes()
        assert _frame_ends(data)[-1] == len(data), f"{seg.name} must end at its data"
    newest = segments[-1].read_bytes()
    assert len(newest) > journal.writer.PREALLOC and not any(newest[-64:])
    got, torn = _replay(tmp_path)
    assert got == [b"record-%03d" % i for i in range(40)] and torn is None
    j = Journal(tmp_path, segment_bytes=200)
    list(j.replay())
    j.open_for_append()
    j.append(b"later")
    j.commit()
    j.close()
    assert _replay(tmp_path)[0][-2:] == [b"record-039", b"later"]


# --- the lock -------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_second_acquire_in_another_process_is_refused(tmp_path):
    state = tmp_path / "state"
    lock = StateLock(state)
    lock.acquire()
    try:
        assert stat.S_IMODE((state / "lock").stat().st_mode) == 0o600
        assert (state / "lock").read_text().strip() == str(os.getpid())
        assert StateLock.is_locked(state)
        code = (
            "import sys\nfrom journaled.journal import StateLock\n"
            "from journaled.errors import StateLocked\n"
            "try:\n    StateLock(sys.argv[1]).acquire()\n"
            "except StateLocked as e:\n    print(e.state_dir, str(e))\n    sys.exit(3)\n"
        )
        proc = _run_child(code, str(state))
        assert proc.returncode == 3, proc.stderr
        assert f"(pid {os.getpid()})" in proc.stdout
        with pytest.raises(StateLocked):
            StateLock(state).acquire()  # another handle in this process is refused too
    finally:
        lock.release()
    assert not StateLock.is_locked(state)
    proc = _run_child(code, str(state))
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- the tailer -----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_tailer_sees_every_record_once_while_a_writer_appends(tmp_path):
    jdir = tmp_path / "journal"
    bodies = _bodies(3000)
    j = Journal(jdir, segment_bytes=2048, unsafe_no_fsync=True)
    list(j.replay())
    j.open_for_append()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            i = 0
            for n in [1, 7, 30, 2, 100, 13] * 1000:
                if i >= len(bodies):
                    break
                j.extend(bodies[i:i + n])
                j.commit()
                i += n
        except BaseException as err:  # noqa: BLE001 - reported by the test thread
            errors.append(err)

    writer = threading.Thread(target=write)
    tailer = JournalTailer(jdir)
    seen: list[bytes] = []
    polls = 0
    writer.start()
    deadline = time.monotonic() + 20
    while len(seen) < len(bodies) and time.monotonic() < deadline:
        reset, new = tailer.poll()
        assert not reset, "no compaction happened, so no reset"
        seen.extend(new)
        polls += 1
    writer.join()
    j.close()
    assert not errors
    assert seen == bodies, f"tailer saw {len(seen)} records in {polls} polls"
    assert tailer.poll() == (False, [])
    assert len(list_segments(jdir)) > 10


@pytest.mark.timeout(10)
def test_tailer_waits_for_a_half_written_frame(tmp_path):
    _write_journal(tmp_path, [b"one", b"two"])
    tailer = JournalTailer(tmp_path)
    assert tailer.poll() == (False, [b"one", b"two"])
    frame = encode_frame(b"three, written in two parts")
    seg = tmp_path / "00000001.log"
    with open(seg, "ab") as f:
        f.write(frame[:11])
    assert tailer.poll() == (False, [])
    assert tailer.poll() == (False, [])
    with open(seg, "ab") as f:
        f.write(frame[11:])
    assert tailer.poll() == (False, [b"three, written in two parts"])
    assert tailer.poll() == (False, [])


@pytest.mark.timeout(10)
def test_tailer_resets_after_compaction(tmp_path):
    j = Journal(tmp_path, segment_bytes=100, unsafe_no_fsync=True)
    list(j.replay())
    j.open_for_append()
    j.extend(_bodies(10))
    j.commit()
    tailer = JournalTailer(tmp_path)
    assert tailer.poll() == (False, _bodies(10))
    j.compact([b"snap"])
    j.append(b"after")
    j.commit()
    assert tailer.poll() == (True, [b"snap", b"after"])
    j.append(b"later")
    j.commit()
    assert tailer.poll() == (False, [b"later"])
    # Compaction while the tailer is mid-way through old segments: same reset.
    j.extend(_bodies(10, start=50))
    j.commit()
    j.compact([b"snap-2"])
    assert tailer.poll() == (True, [b"snap-2"])
    j.close()


@pytest.mark.timeout(10)
def test_tailer_reports_damage_before_the_newest_segment(tmp_path):
    _write_journal(tmp_path, _bodies(10), segment_bytes=100)
    first = tmp_path / "00000001.log"
    data = bytearray(first.read_bytes())
    data[HEADER_SIZE + 9] ^= 0x20
    first.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as exc:
        JournalTailer(tmp_path).poll()
    assert (exc.value.segment, exc.value.offset) == ("00000001.log", HEADER_SIZE)


@pytest.mark.timeout(10)
def test_tailer_follows_a_restarted_writer_past_a_torn_tail(tmp_path):
    _write_journal(tmp_path, [b"one"])
    seg = tmp_path / "00000001.log"
    with open(seg, "ab") as f:
        f.write(encode_frame(b"never finished")[:9])  # the old writer died mid-write
    tailer = JournalTailer(tmp_path)
    assert tailer.poll() == (False, [b"one"])
    j = Journal(tmp_path)
    assert [b for _, _, b in j.replay()] == [b"one"] and j.torn is not None
    j.open_for_append()
    j.append(b"two")
    j.commit()
    j.close()
    assert tailer.poll() == (False, [b"two"])


@pytest.mark.timeout(10)
def test_power_loss_mode_holds_bytes_until_a_sync_and_defers_rotation(tmp_path):
    j = Journal(tmp_path, segment_bytes=40, simulate_power_loss=True)
    list(j.replay())
    j.open_for_append()
    seg = tmp_path / "00000001.log"
    failpoints.configure("journal.fdatasync=skip@1")
    j.append(b"held-until-the-next-sync")
    j.commit()
    assert seg.stat().st_size == HEADER_SIZE, "a skipped sync must leave the bytes in memory"
    assert j.syncs == 0 and j.size_bytes == HEADER_SIZE + 8 + 24
    assert len(list_segments(tmp_path)) == 1, "no rotation while bytes are held"
    j.append(b"synced")
    j.commit()
    assert j.syncs == 1
    assert [p.name for p in list_segments(tmp_path)] == ["00000001.log", "00000002.log"]
    j.close()
    assert _replay(tmp_path) == ([b"held-until-the-next-sync", b"synced"], None)


@pytest.mark.timeout(10)
def test_golden_segment_of_an_older_writer_still_decodes():
    """Fields are only ever added last with defaults, so old journals keep replaying."""
    old = (Path(__file__).resolve().parents[1] / "data" / "golden-0.1-initial.log").read_bytes()
    decoded = [records.decode(bytes(body)) for _, body in FrameReader(old, "old.log")]
    assert [type(r) for r in decoded] == [type(r) for r in GOLDEN_RECORDS], \
        "every record written by the first release must decode to the same type"
    assert decoded == GOLDEN_RECORDS, "missing trailing fields must take their defaults"
