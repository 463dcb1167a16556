"""The blob store on its own: put/read/view, idempotent puts, torn temp files, the sweep."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from journaled.blobs import (
    BlobRef,
    BlobStore,
    content_sha256,
    same_content,
    value_size,
)
from journaled.errors import BlobMissing
from journaled.records import MemoPut, StepDone, Submitted, Terminated, decode, encode
from tests.e2e.helpers import ROOT


@pytest.mark.timeout(30)
@pytest.mark.parametrize("size", [0, 1, 4096, 65536, 65537, 1 << 20])
def test_put_then_read_and_view_give_the_same_bytes(tmp_path: Path, size: int) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(size)
    ref = store.put(data)
    assert ref == BlobRef(hashlib.sha256(data).hexdigest(), size)
    path = store.path(ref)
    assert path == tmp_path / "blobs" / ref.sha256[:2] / ref.sha256
    assert path.read_bytes() == data
    assert store.read(ref) == data
    view = store.view(ref)
    assert view.readonly and bytes(view) == data
    assert store.resolve(ref) == data and store.resolve(b"inline") == b"inline"
    assert content_sha256(ref) == content_sha256(data) == ref.sha256


@pytest.mark.timeout(30)
def test_put_takes_any_bytes_like_without_copying_semantics_changing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = bytearray(os.urandom(100_000))
    assert store.put(memoryview(data)) == store.put(bytes(data)) == store.put(data)


@pytest.mark.timeout(30)
def test_put_is_idempotent_and_refreshes_the_mtime(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(70_000)
    ref = store.put(data)
    path = store.path(ref)
    old = time.time() - 3600
    os.utime(path, (old, old))
    ino = path.stat().st_ino
    assert store.put(data) == ref
    st = path.stat()
    assert st.st_ino == ino, "an existing whole blob is not written again"
    assert st.st_mtime > old + 3000, "a reused blob is young again, so no sweep takes it"
    assert [p.name for p in path.parent.iterdir()] == [ref.sha256], "no temp file left"


@pytest.mark.timeout(30)
def test_a_short_existing_file_is_rewritten(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(70_000)
    ref = store.put(data)
    store.path(ref).write_bytes(data[:100])  # damaged outside journaled
    with pytest.raises(BlobMissing, match=ref.sha256):
        store.read(ref)
    assert store.put(data) == ref
    assert store.read(ref) == data


@pytest.mark.timeout(30)
def test_missing_and_short_blobs_are_clear_errors_naming_the_sha(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    ghost = BlobRef("ab" * 32, 10)
    for call in (store.read, store.view, store.open):
        with pytest.raises(BlobMissing) as e:
            call(ghost)
        assert ghost.sha256 in str(e.value) and "10 bytes" in str(e.value)
    assert not store.exists(ghost)


@pytest.mark.timeout(30)
def test_maybe_put_keeps_values_up_to_the_threshold_inline(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, threshold=1000)
    assert store.maybe_put(b"x" * 1000) == b"x" * 1000
    ref = store.maybe_put(b"x" * 1001)
    assert isinstance(ref, BlobRef) and ref.size == 1001
    assert value_size(ref) < 100 and value_size(ref, exact=True) == 1001


@pytest.mark.timeout(30)
def test_put_file_streams_and_matches_put(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    data = os.urandom(3 << 20)
    src.write_bytes(data)
    store = BlobStore(tmp_path / "state")
    ref = store.put_file(src)
    assert ref == BlobRef(hashlib.sha256(data).hexdigest(), len(data))
    assert store.read(ref) == data
    assert store.put_file(src) == ref  # again: no second copy, no temp file left
    assert sorted(p.name for p, _ in store.names()) == [ref.sha256]


@pytest.mark.timeout(30)
def test_same_content_across_inline_and_ref(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(80_000)
    ref = store.put(data)
    assert same_content(data, ref) and same_content(ref, data) and same_content(ref, ref)
    assert not same_content(data[:-1], ref) and not same_content(b"a", b"b")
    assert same_content(None, None) and not same_content(None, b"")


@pytest.mark.timeout(30)
def test_records_carry_refs_and_old_bytes_fields_still_decode() -> None:
    ref = BlobRef("cd" * 32, 123_456)
    for rec in (Submitted("r", ref, 1.0), StepDone("r", 0, 1, ref, 2.0),
                Terminated("r", "succeeded", 3.0, 1, 1, result=ref), MemoPut("r", 0, "k", ref),
                Submitted("r", b"inline", 1.0), Terminated("r", "failed", 3.0, 1)):
        body = encode(rec)
        assert decode(body) == rec
        assert len(body) < 200, "a record naming a blob stays small"
    # A bytes-era encoder (the old field type) writes what the new decoder reads.

    class OldSubmitted(msgspec.Struct, frozen=True, tag_field="t", array_like=True,
                       omit_defaults=True, tag="sub"):
        run_id: str
        input: bytes
        at: float

    assert decode(msgspec.msgpack.encode(OldSubmitted("r", b"abc", 1.0))) == \
        Submitted("r", b"abc", 1.0)


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


@pytest.mark.timeout(30)
def test_sweep_deletes_only_old_unreferenced_blobs_and_old_temp_files(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    keep_old = store.put(b"k" * 70_000)
    drop_old = store.put(b"d" * 70_000)
    young = store.put(b"y" * 70_000)
    for ref in (keep_old, drop_old):
        _age(store.path(ref), 7200)
    torn_old = store.root / "aa" / ".tmp-1-dead"
    torn_old.parent.mkdir(parents=True, exist_ok=True)
    torn_old.write_bytes(b"half a blob")
    _age(torn_old, 7200)
    torn_young = store.root / "aa" / ".tmp-2-busy"
    torn_young.write_bytes(b"being written now")
    stranger = store.root / "aa" / "README"
    stranger.write_text("not ours")
    _age(stranger, 7200)
    n = store.sweep({keep_old.sha256}, older_than=time.time() - 3600)
    assert n == 2
    assert store.exists(keep_old) and store.exists(young)
    assert not store.exists(drop_old) and not torn_old.exists()
    assert torn_young.exists(), "a temp file still being written is never swept"
    assert stranger.exists(), "a file not named like a blob is left alone"
    assert store.sweep(set(), older_than=time.time() - 3600) == 1  # keep_old, now unreferenced


@pytest.mark.timeout(30)
def test_sweep_never_takes_a_blob_younger_than_the_cutoff(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    ref = store.put(os.urandom(70_000))
    cutoff = time.time() - 1.0
    assert store.sweep(set(), older_than=cutoff) == 0
    assert store.exists(ref)


@pytest.mark.timeout(30)
def test_torn_temp_files_are_ignored_by_reads_and_puts(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(70_000)
    sha = hashlib.sha256(data).hexdigest()
    d = store.root / sha[:2]
    d.mkdir(parents=True)
    (d / f".tmp-999-{sha[:6]}").write_bytes(data[:1000])  # a writer killed mid-write
    ref = store.put(data)
    assert store.read(ref) == data
    assert {p.name for p in d.iterdir()} == {sha, f".tmp-999-{sha[:6]}"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("point", ["blobs.before_fsync", "blobs.after_fsync"])
def test_a_writer_killed_at_a_blob_failpoint_leaves_no_blob(tmp_path: Path, point: str) -> None:
    """Killed before the rename: the blob does not exist (only a temp file nobody names)."""
    code = (f"from journaled.blobs import BlobStore\n"
            f"BlobStore({str(tmp_path)!r}).put(b'z' * 100_000)\nprint('returned')")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JOURNALED_FAILPOINTS": f"{point}=crash",
           "JOURNALED_SIMULATE_POWER_LOSS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == -9, proc
    assert "returned" not in proc.stdout
    store = BlobStore(tmp_path)
    ref = BlobRef(hashlib.sha256(b"z" * 100_000).hexdigest(), 100_000)
    assert not store.exists(ref)
    temps = [p for p, _ in store.names()]
    assert len(temps) == 1 and temps[0].name.startswith(".tmp-")
    if point == "blobs.before_fsync":
        assert temps[0].stat().st_size == 0, "power-loss mode: unsynced bytes are lost"
    assert store.put(b"z" * 100_000) == ref and store.read(ref) == b"z" * 100_000


@pytest.mark.timeout(30)
def test_multi_dimensional_buffers_count_bytes_not_rows(tmp_path: Path) -> None:
    from journaled.blobs import as_bytes_view

    raw = bytes(range(256)) * 64  # 16 KiB
    view = memoryview(raw).cast("B", (64, 256))
    assert len(view) == 64 and len(as_bytes_view("x", view)) == len(raw)
    store = BlobStore(tmp_path, threshold=1000)
    ref = store.maybe_put(view)
    assert isinstance(ref, BlobRef) and ref.size == len(raw) and store.read(ref) == raw
    with pytest.raises(TypeError, match="C-contiguous"):
        as_bytes_view("the payload", memoryview(raw).cast("B", (64, 256))[::2])
