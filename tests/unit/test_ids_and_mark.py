"""Minted run ids (no syscall per id) and the mapped synced mark (no pwrite per publish)."""

from __future__ import annotations

import mmap
import os
import re
from pathlib import Path

import pytest

from journaled.inbox import check_run_id
from journaled.journal import MARK_NAME, read_mark
from journaled.journal.mark import MarkWriter, SyncedMark
from journaled.submission import new_run_id


def test_minted_ids_keep_their_shape_and_never_repeat_in_a_process() -> None:
    ids = [new_run_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"r-[0-9a-f]+-[0-9a-f]{8}", i) and check_run_id(i) for i in ids)
    tails = [i.rsplit("-", 1)[1] for i in ids]
    assert len(set(tails)) == len(tails)  # the counter, not the clock, keeps them apart


def test_a_forked_child_mints_other_tails_than_its_parent() -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: without the reseed its counter and base are the parent's
        os.write(w, new_run_id().rsplit("-", 1)[1].encode())
        os._exit(0)
    os.close(w)
    mine = new_run_id().rsplit("-", 1)[1]
    child = os.read(r, 64).decode()
    os.waitpid(pid, 0)
    os.close(r)
    assert len(child) == 8 and child != mine


@pytest.mark.parametrize("mapped", [True, False])
def test_mark_bytes_are_the_encoded_mark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         mapped: bool) -> None:
    if not mapped:  # a file system without shared mappings: the pwrite fallback
        def no_mmap(*_a: object, **_k: object) -> mmap.mmap:
            raise OSError(19, "no shared mapping")
        monkeypatch.setattr(mmap, "mmap", no_mmap)
    w = MarkWriter(tmp_path)
    w.invalidate()  # no file yet: nothing to zero, nothing created
    assert not (tmp_path / MARK_NAME).exists()
    w.publish(3, 4096)
    want = SyncedMark(os.getpid(), w.generation, 3, 4096)
    assert (tmp_path / MARK_NAME).read_bytes() == want.encode()
    assert read_mark(tmp_path) == want
    w.invalidate()
    assert read_mark(tmp_path) is None
    w.publish(4, 64)
    w.close()
    assert read_mark(tmp_path) == SyncedMark(os.getpid(), w.generation, 4, 64)
