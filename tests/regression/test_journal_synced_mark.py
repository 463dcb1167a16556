"""Issue 11 item 5 (S1-6, E15): readers in other processes stop at the synced mark.

With ``journal.before_sync=delay:1500`` the bytes of a commit sit in the page
cache for 1.5 s before their fdatasync. A reader must not report what they
say before the sync returned: a power cut in that window takes them back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from journaled import failpoints
from journaled.client import Client
from journaled.journal import (
    MARK_NAME,
    FrameReader,
    Journal,
    JournalTailer,
    StateLock,
    list_segments,
    read_mark,
)
from tests.e2e.helpers import ROOT, cli_env

# The supervisor under test, with the journal's sync observed (not replaced):
# each write logs when it started, when the fdatasync that covered it
# returned (on the flusher thread), and whether it carried a Terminated record.
SUPERVISOR = """
import json, sys, time
from journaled.journal import FrameReader, writer
from journaled.records import Terminated, decode

log = open(sys.argv[2], "a", buffering=1)
write, sync, fsync = writer.Journal.write, writer.Journal.sync, writer.Journal._sync
unsynced = []

def observed_fsync(self, path):
    fsync(self, path)
    self.synced_at = time.time()

def observed_write(self):
    ends = any(type(decode(b)) is Terminated for _, b in FrameReader(bytes(self._buf), "b", 0))
    if self._buf:  # logged before the write: the flusher may sync it at once
        unsynced.append([self.written + 1, time.time(), ends])
    return write(self)

def observed_sync(self):
    self.synced_at = None
    done = sync(self)
    while unsynced and unsynced[0][0] <= done:
        _, started, ends = unsynced.pop(0)
        log.write(json.dumps([started, self.synced_at, ends]) + "\\n")
    return done

writer.Journal._sync, writer.Journal.write = observed_fsync, observed_write
writer.Journal.sync = observed_sync
from journaled.cli import main
main(["run", "tests.apps.basic:runner", "--state", sys.argv[1], "-w", "1", "--until-idle"])
"""


@pytest.fixture(autouse=True)
def _reset_failpoints():
    failpoints.reset()
    yield
    failpoints.reset()


@pytest.mark.timeout(120)
def test_client_in_another_process_never_sees_an_outcome_before_its_fdatasync(tmp_path):
    state = tmp_path / "state"
    client = Client(state)
    rid = client.submit(b"hello")
    log = tmp_path / "commits.jsonl"
    env = cli_env(JOURNALED_FAILPOINTS="journal.before_sync=delay:1500")
    sup = subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(state), str(log)], cwd=ROOT,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen_at = None
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            out = client.status(rid)
            if out.status.value == "succeeded":
                seen_at = time.time()
                break
            time.sleep(0.005)
        _, err = sup.communicate(timeout=60)
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
    assert sup.returncode == 0, err.decode()
    assert seen_at is not None, "the client never saw the run succeed"
    commits = [json.loads(line) for line in log.read_text().splitlines()]
    ends = [c for c in commits if c[2]]
    assert len(ends) == 1, commits
    started, synced_at, _ = ends[0]
    assert synced_at is not None and synced_at - started >= 1.4, "the delay failpoint held"
    assert seen_at >= synced_at, (
        f"the client reported 'succeeded' {synced_at - seen_at:.3f} s before the fdatasync "
        "that made it durable returned"
    )
    assert client.result(rid) == b"hello"


@pytest.mark.timeout(30)
def test_tailer_stops_at_the_mark_while_the_lock_holder_syncs(tmp_path):
    state = tmp_path / "state"
    with StateLock(state):
        j = Journal(state / "journal")
        list(j.replay())
        j.open_for_append()
        j.append(b"first")
        j.commit()
        tailer = JournalTailer(state / "journal")
        assert tailer.poll() == (False, [b"first"])
        failpoints.configure("journal.before_sync=delay:800")
        done = threading.Event()

        def commit() -> None:
            j.append(b"second")
            j.commit()
            done.set()

        t = threading.Thread(target=commit)
        t.start()
        seg = list_segments(state / "journal")[-1]
        deadline = time.monotonic() + 5
        while b"second" not in seg.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.001)
        assert b"second" in seg.read_bytes(), "the write precedes the sync"
        written_at = time.monotonic()  # the record is in the file; its sync waits 800 ms
        seen: list[bytes] = []
        seen_at = None
        while not seen and time.monotonic() < written_at + 10:
            reset, got = tailer.poll()
            assert not reset
            if got:
                seen, seen_at = got, time.monotonic()
            time.sleep(0.01)
        t.join()
        seen += tailer.poll()[1]
        assert seen == [b"second"], seen
        # Visible only once the mark moved, after the delayed sync: never while the
        # record sat in the page cache unsynced.
        assert seen_at is not None and seen_at - written_at >= 0.7, \
            f"the tailer read past the synced mark {seen_at - written_at:.3f} s after the write"
        mark = read_mark(state / "journal")
        assert mark is not None and mark.pid == os.getpid()
        # The end of the data (the file runs on past it in zeros: the writer's PREALLOC).
        assert (mark.segment, mark.offset) == (1, len(seg.read_bytes().rstrip(b"\0")))
        j.close()


@pytest.mark.timeout(30)
def test_mark_follows_rotation_and_compaction_to_the_new_base_segment(tmp_path):
    state = tmp_path / "state"
    jdir = state / "journal"
    with StateLock(state):
        j = Journal(jdir, segment_bytes=64)
        list(j.replay())
        j.open_for_append()
        tailer = JournalTailer(jdir)
        for i in range(6):
            j.append(f"record-{i}".encode() * 3)
            j.commit()
        assert len(list_segments(jdir)) > 2
        mark = read_mark(jdir)
        assert mark.segment == int(list_segments(jdir)[-1].name[:8])
        assert tailer.poll() == (False, [f"record-{i}".encode() * 3 for i in range(6)])
        j.compact([b"snap"])
        base = list_segments(jdir)
        assert len(base) == 1
        mark = read_mark(jdir)
        assert (mark.segment, mark.offset) == (int(base[0].name[:8]), base[0].stat().st_size)
        assert tailer.poll() == (True, [b"snap"])
        j.close()


@pytest.mark.timeout(30)
def test_torn_or_missing_mark_falls_back_to_whole_frames_made_durable_by_the_reader(tmp_path):
    state = tmp_path / "state"
    jdir = state / "journal"
    with StateLock(state):
        j = Journal(jdir)
        list(j.replay())
        j.open_for_append()
        j.extend([b"a", b"b"])
        j.commit()
        # A torn mark (half of a pwrite) fails its crc and counts as absent.
        mark = jdir / MARK_NAME
        data = bytearray(mark.read_bytes())
        data[17] ^= 0xFF
        mark.write_bytes(bytes(data))
        assert read_mark(jdir) is None
        tailer = JournalTailer(jdir)
        assert tailer.poll() == (False, [b"a", b"b"])
        assert tailer.mark is None, "no trusted mark: the reader synced what it read"
        j.append(b"c")
        j.commit()  # republishes a good mark
        assert tailer.poll() == (False, [b"c"]) and tailer.mark is not None
        j.close()
    # No live lock holder: what is on disk is what the next replay folds.
    mark.unlink()
    seg = list_segments(jdir)[-1]
    before = [bytes(b) for _, b in FrameReader(seg.read_bytes(), seg.name)]
    assert JournalTailer(jdir).poll() == (False, before)


@pytest.mark.timeout(30)
def test_a_mark_of_a_writer_that_no_longer_holds_the_lock_is_not_trusted(tmp_path):
    state = tmp_path / "state"
    jdir = state / "journal"
    lock = StateLock(state)
    lock.acquire()
    j = Journal(jdir)
    list(j.replay())
    j.open_for_append()
    j.append(b"synced")
    j.commit()
    j.close()
    lock.release()
    # The writer is gone (say, killed after a write it never synced).
    with open(list_segments(jdir)[-1], "ab") as f:
        from journaled.journal import encode_frame

        f.write(encode_frame(b"written, never synced"))
    tailer = JournalTailer(jdir)
    assert tailer.poll() == (False, [b"synced", b"written, never synced"])
    assert tailer.mark is None, "without a live holder the reader syncs and reads the disk"
    assert Path(jdir / MARK_NAME).exists()
