"""Issue 11 item 6: torn only by the sector rule; damage (bit rot, undecodable) never cut silently.

Real journals made by a real ``journaled run``, real CLI subprocesses.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from journaled.journal import (
    SECTOR,
    FrameReader,
    Journal,
    encode_frame,
    list_segments,
    verify,
)
from journaled.records import decode
from tests.e2e.helpers import ROOT, cli_env

APP = "tests.apps.basic:runner"


def journaled(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "journaled.cli", *args], cwd=ROOT,
                          env=cli_env(), capture_output=True, text=True, timeout=timeout)


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _finished_state(state: Path, n: int = 2) -> list[str]:
    """A state directory whose journal holds ``n`` succeeded runs, made by a real supervisor."""
    rids = []
    for i in range(n):
        proc = journaled("submit", f"hello-{i}", "--state", str(state))
        assert proc.returncode == 0, proc.stderr
        rids.append(proc.stdout.strip())
    proc = journaled("run", APP, "--state", str(state), "-w", "1", "--until-idle")
    assert proc.returncode == 0, proc.stderr
    return rids


def _frames(path: Path) -> list[tuple[int, bytes]]:
    return [(off, bytes(body)) for off, body in FrameReader(path.read_bytes(), path.name)]


@pytest.mark.timeout(120)
def test_bit_flip_in_the_last_acknowledged_record_is_damage_at_start_and_in_verify(tmp_path):
    state = tmp_path / "state"
    _finished_state(state)
    seg = list_segments(state / "journal")[-1]
    last_off, last_body = _frames(seg)[-1]
    data = bytearray(seg.read_bytes())
    assert last_off + 8 + len(last_body) == len(data), "the flipped record ends the file"
    data[last_off + 8 + len(last_body) // 2] ^= 0x04  # bit rot in a synced, acted-on record
    seg.write_bytes(bytes(data))

    run = journaled("run", APP, "--state", str(state), "-w", "1", "--until-idle")
    assert run.returncode == 1, "a full-length CRC mismatch is damage, never a torn tail"
    assert f"{seg.name} at byte {last_off}: crc mismatch" in one_line(run)
    assert seg.read_bytes() == bytes(data), "start-up must not cut damage"

    ver = journaled("verify", "--state", str(state))
    assert ver.returncode == 1, ver.stdout + ver.stderr
    assert "Traceback" not in ver.stderr
    assert f"damage: journal damaged: {seg.name} at byte {last_off}: crc mismatch" in ver.stdout


def _synced_then_batch(jdir: Path) -> tuple[list[bytes], list[bytes], Path]:
    """Two synced commits, then one batch of 300-byte records spanning several sectors."""
    synced = [f"synced-{i}".encode() * 10 for i in range(2)]
    batch = [f"batch-{i:02d}-".encode() + bytes([65 + i]) * 290 for i in range(12)]
    j = Journal(jdir)
    list(j.replay())
    j.open_for_append()
    for body in synced:
        j.append(body)
        j.commit()
    j.extend(batch)
    j.commit()
    j.close()
    return synced, batch, list_segments(jdir)[-1]


@pytest.mark.timeout(30)
def test_zero_sector_inside_an_unsynced_batch_is_torn_and_start_up_cuts_it(tmp_path):
    jdir = tmp_path / "state" / "journal"
    synced, batch, seg = _synced_then_batch(jdir)
    data = bytearray(seg.read_bytes())
    frames = _frames(seg)
    batch_start = frames[len(synced)][0]
    # A power cut during the batch's writeback: one sector inside it never
    # reached the disk, later ones did (reordered writeback).
    k = batch_start // SECTOR + 2
    data[k * SECTOR:(k + 1) * SECTOR] = bytes(SECTOR)
    seg.write_bytes(bytes(data))
    hit = max(i for i, (off, _) in enumerate(frames) if off < k * SECTOR)

    report = verify(jdir)
    assert report.damage is None, report.damage
    assert report.torn is not None and report.torn.offset == frames[hit][0]
    assert f"the sector at byte {k * SECTOR} is all zeros" in report.torn.reason
    j = Journal(jdir)
    assert [bytes(b) for _, _, b in j.replay()] == (synced + batch)[:hit]
    j.open_for_append()
    j.append(b"after the cut")
    j.commit()
    j.close()
    assert seg.stat().st_size == frames[hit][0] + 8 + len(b"after the cut")


@pytest.mark.timeout(30)
def test_declared_end_past_end_of_file_is_torn(tmp_path):
    jdir = tmp_path / "state" / "journal"
    synced, batch, seg = _synced_then_batch(jdir)
    frames = _frames(seg)
    cut = frames[-1][0] + 100  # the last write stopped in the middle of a frame
    with open(seg, "r+b") as f:
        f.truncate(cut)
    report = verify(jdir)
    assert report.damage is None and report.torn is not None
    assert report.torn.offset == frames[-1][0]
    assert "runs past end of file" in report.torn.reason


@pytest.mark.timeout(30)
def test_zero_sector_in_a_record_followed_by_a_valid_frame_is_damage(tmp_path):
    jdir = tmp_path / "state" / "journal"
    bodies = [b"a" * 100, b"b" * 1500, b"c" * 100]
    j = Journal(jdir)
    list(j.replay())
    j.open_for_append()
    j.extend(bodies)
    j.commit()
    j.close()
    seg = list_segments(jdir)[-1]
    (_, _), (off, body), (next_off, _) = _frames(seg)
    sector = -(-(off + 8) // SECTOR) * SECTOR  # the first whole sector inside the body
    assert sector + SECTOR <= next_off
    data = bytearray(seg.read_bytes())
    data[sector:sector + SECTOR] = bytes(SECTOR)
    seg.write_bytes(bytes(data))
    # The record after it is whole: the log went on past the zeros, so they are
    # damage (lost after the sync), never a torn tail to cut silently.
    report = verify(jdir)
    assert report.torn is None and report.damage is not None
    assert report.damage.offset == off and "a valid frame follows it" in report.damage.what


# --- an undecodable record whose CRC passes ---------------------------------------------------


def _append_undecodable(state: Path) -> tuple[str, int]:
    """Append a whole, CRC-valid frame holding a record type no version knows."""
    seg = list_segments(state / "journal")[-1]
    body = msgspec.msgpack.encode(["zzz", "from-the-future", 1])
    with pytest.raises(msgspec.ValidationError):
        decode(body)
    off = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(encode_frame(body))
    return seg.name, off


@pytest.mark.timeout(180)
def test_undecodable_record_is_damage_for_every_command_and_repair_cuts_it(tmp_path):
    state = tmp_path / "state"
    rids = _finished_state(state)
    seg, off = _append_undecodable(state)
    where = f"{seg} at byte {off}: undecodable record"

    run = journaled("run", APP, "--state", str(state), "-w", "1", "--until-idle")
    assert run.returncode == 1 and where in one_line(run)

    ver = journaled("verify", "--state", str(state))
    assert ver.returncode == 1 and "Traceback" not in ver.stderr, ver.stderr
    assert where in ver.stdout and "FAILED" in ver.stdout

    log = journaled("log", "--state", str(state))
    assert log.returncode == 1 and where in one_line(log)

    compact = journaled("compact", "--state", str(state))
    assert compact.returncode == 1 and where in one_line(compact)

    status = journaled("status", rids[0], "--state", str(state))
    line = one_line(status)
    assert where in line and "byte -1" not in line

    rep = journaled("repair", "-y", "--state", str(state))
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert "nothing to repair" not in rep.stdout
    assert re.search(rf"cut {seg} at byte {off} \(\d+ bytes dropped\); backup: ", rep.stdout)
    backup = state / "journal" / f"{seg}.broken"
    assert backup.exists() and backup.stat().st_size > off, "the backup keeps the cut record"

    again = journaled("run", APP, "--state", str(state), "-w", "1", "--until-idle")
    assert again.returncode == 0, again.stderr
    assert journaled("verify", "--state", str(state)).returncode == 0
    out = journaled("status", rids[0], "--state", str(state))
    assert out.returncode == 0 and "succeeded" in out.stdout


@pytest.mark.timeout(30)
def test_golden_segments_still_decode_through_the_one_reader(tmp_path):
    from journaled import replay

    data = Path(__file__).resolve().parents[1] / "data"
    for name in ("golden.log", "golden-0.1-initial.log"):
        jdir = tmp_path / name / "journal"
        jdir.mkdir(parents=True)
        (jdir / "00000001.log").write_bytes((data / name).read_bytes())
        got = list(replay.records(jdir))
        assert len(got) == 10 and got[0][:2] == ("00000001.log", 16)
        frames = _frames(jdir / "00000001.log")
        assert [(seg, off, rec) for seg, off, rec in got] == [
            ("00000001.log", off, decode(body)) for off, body in frames]


@pytest.mark.timeout(30)
def test_flipped_length_bit_of_the_last_whole_record_is_damage_not_a_torn_tail(tmp_path):
    jdir = tmp_path / "state" / "journal"
    synced, batch, seg = _synced_then_batch(jdir)
    off, body = _frames(seg)[-1]
    data = bytearray(seg.read_bytes())
    data[off + 1] ^= 0x10  # the length now runs past end of file; the record is whole
    seg.write_bytes(bytes(data))
    report = verify(jdir)
    assert report.torn is None and report.damage is not None
    assert report.damage.offset == off and "runs past end of file" in report.damage.what
