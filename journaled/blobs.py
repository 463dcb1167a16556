"""Big bytes out of line: content-addressed files under ``STATE/blobs/`` (DESIGN §7).

An input, a payload, a result or a memo value longer than the threshold
(``DEFAULT_THRESHOLD``, 64 KiB) is written once as ``STATE/blobs/ab/<sha256>``
and the journal record carries only a ``BlobRef(sha256, size)``. Whoever
has the bytes writes the blob: a client its input, a worker its payload,
result or memo; the supervisor never reads or writes a blob's content.

Ordering (the write-ahead rule for blobs): a blob is durable *before* any
record naming it is committed::

    write .tmp-* in blobs/ab/  ->  fsync file  ->  rename to <sha256>  ->  fsync blobs/ab/

A crash before the rename leaves a dot-named temp file that nothing
names (``sweep`` removes it once old); after it, the blob is whole. A blob
that exists with the right size is not written again; its mtime is
refreshed instead, so the sweep (which spares anything younger than its
cutoff) cannot delete it under the record about to name it. The refresh
and the sweep's unlink are serialised by an ``flock`` on ``blobs/.lock``.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import mmap
import os
import re
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, TypeVar, Union

import msgspec

from . import failpoints
from .durable import fsync_dir, make_dirs
from .errors import BlobMissing, StorageFailure

__all__ = ["BlobRef", "BlobStore", "DEFAULT_THRESHOLD", "ENV_THRESHOLD", "content_sha256",
           "same_content", "value_size", "refs_of", "threshold_from_env"]

DEFAULT_THRESHOLD = 64 << 10  # bytes: longer values go out of line
ENV_THRESHOLD = "JOURNALED_BLOB_THRESHOLD"  # set by the supervisor for its workers
REF_SIZE = 80  # what a ref weighs in a batch or a record (its encoded size, roughly)
_CHUNK = 1 << 20
_SHA = re.compile(r"[0-9a-f]{64}")


class BlobRef(msgspec.Struct, frozen=True, array_like=True, tag="b"):
    """Names a blob: the sha256 (hex) of its content and its length in bytes."""

    sha256: str
    size: int


Value = Union[bytes, BlobRef]
_O = TypeVar("_O", bound=msgspec.Struct)


def content_sha256(value: bytes | bytearray | memoryview | BlobRef) -> str:
    """The sha256 hex of a value's content, inline or out of line (no file is read)."""
    if isinstance(value, BlobRef):
        return value.sha256
    return hashlib.sha256(value).hexdigest()


def same_content(a: Value | None, b: Value | None) -> bool:
    """Whether two values hold the same bytes, whichever side is a ref."""
    if type(a) is type(b) or a is None or b is None:
        return a == b
    return value_size(a, exact=True) == value_size(b, exact=True) and \
        content_sha256(a) == content_sha256(b)  # type: ignore[arg-type]


def value_size(value: Value | None, exact: bool = False) -> int:
    """Bytes a value weighs where it travels: a ref is small (``exact``: its blob's size)."""
    if value is None:
        return 0
    if isinstance(value, BlobRef):
        return value.size if exact else REF_SIZE
    return len(value)


def refs_of(values: Iterable[object]) -> Iterator[str]:
    """The sha256 of every ``BlobRef`` among ``values`` (dicts' values and lists looked into)."""
    for v in values:
        if isinstance(v, BlobRef):
            yield v.sha256
        elif isinstance(v, (dict, list)):
            for x in (v.values() if isinstance(v, dict) else v):
                if isinstance(x, BlobRef):
                    yield x.sha256


def as_bytes_view(what: str, data: bytes | bytearray | memoryview) -> memoryview:
    """A flat byte view of any buffer (a numpy array's memoryview counts rows in ``len``).

    Raises ``TypeError`` naming ``what`` for a buffer that is not C-contiguous.
    """
    view = memoryview(data)
    if view.ndim == 1 and view.itemsize == 1:
        return view
    try:
        return view.cast("B")
    except TypeError:
        raise TypeError(f"{what} must be a C-contiguous buffer (use numpy.ascontiguousarray)"
                        ) from None


def threshold_from_env(default: int = DEFAULT_THRESHOLD) -> int:
    """``$JOURNALED_BLOB_THRESHOLD`` as bytes (workers get it from their supervisor)."""
    raw = os.environ.get(ENV_THRESHOLD, "")
    try:
        return max(0, int(raw)) if raw else default
    except ValueError:
        return default


def check_threshold(value: object) -> int:
    """A threshold in bytes: an int >= 0 (``TypeError``/``ValueError`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"blob_threshold must be an int (bytes), got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"blob_threshold must be >= 0 bytes, got {value}")
    return value


class BlobStore:
    """The blob directory of one state directory; cheap to make, holds no open files.

    Args:
        state_dir: the state directory (blobs live in ``STATE/blobs``).
        threshold: values longer than this go out of line (``maybe_put``).
        simulate_power_loss: hold a blob's bytes until its fsync, so a kill
            before it leaves the temp file empty, as a power cut could
            (None reads ``JOURNALED_SIMULATE_POWER_LOSS == "1"``).
    """

    def __init__(self, state_dir: str | os.PathLike[str], threshold: int | None = None,
                 simulate_power_loss: bool | None = None) -> None:
        self.root = Path(state_dir) / "blobs"
        self.threshold = threshold_from_env() if threshold is None else check_threshold(threshold)
        if simulate_power_loss is None:
            simulate_power_loss = os.environ.get("JOURNALED_SIMULATE_POWER_LOSS") == "1"
        self.simulate_power_loss = simulate_power_loss
        self._made: set[str] = set()  # fan-out directories known to exist (and be durable)

    # ------------------------------------------------------------- naming

    def path(self, ref: BlobRef | str) -> Path:
        sha = ref.sha256 if isinstance(ref, BlobRef) else ref
        return self.root / sha[:2] / sha

    def exists(self, ref: BlobRef) -> bool:
        """The blob is there with the right size (its content is not read)."""
        try:
            return os.stat(self.path(ref)).st_size == ref.size
        except OSError:
            return False

    # ------------------------------------------------------------- writing

    def maybe_put(self, data: bytes | bytearray | memoryview) -> Value:
        """``data`` itself when it is small, else the ref of its (durable) blob."""
        if type(data) is not bytes:
            data = as_bytes_view("the value", data)
        if len(data) > self.threshold:
            return self.put(data)
        return bytes(data)

    def put(self, data: bytes | bytearray | memoryview) -> BlobRef:
        """Store ``data`` durably once; returns its ref. Safe from many processes at once.

        Raises:
            StorageFailure: a write, fsync or rename failed (nothing names the blob yet).
        """
        view = memoryview(data).cast("B")
        ref = BlobRef(hashlib.sha256(view).hexdigest(), view.nbytes)
        if self._refresh(ref):
            return ref
        self._write(ref, [view])
        return ref

    def put_file(self, src: BinaryIO | str | os.PathLike[str]) -> BlobRef:
        """Store a file's content (streamed: never all in memory); returns its ref."""
        own = not hasattr(src, "read")
        f: BinaryIO = open(src, "rb") if own else src  # type: ignore[arg-type, assignment]  # noqa: SIM115
        try:
            d = self._dir_for("tmp")
            tmp = self._temp(d)
            h = hashlib.sha256()
            size = 0
            try:
                with open(tmp, "wb") as out:
                    while True:
                        chunk = f.read(_CHUNK)
                        if not chunk:
                            break
                        h.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
                    self._sync(out.fileno(), tmp)
                ref = BlobRef(h.hexdigest(), size)
                if self._refresh(ref):
                    os.unlink(tmp)
                    return ref
                final_dir = self._dir_for(ref.sha256[:2])
                self._rename(tmp, final_dir / ref.sha256, final_dir)
            except BaseException:
                _unlink_quietly(tmp)
                raise
            return ref
        finally:
            if own:
                f.close()

    def _refresh(self, ref: BlobRef) -> bool:
        """The blob is already whole: bump its mtime (under the lock) and say so."""
        p = self.path(ref)
        try:
            if os.stat(p).st_size != ref.size:
                return False
        except OSError:
            return False
        with self._lock(fcntl.LOCK_SH):
            try:
                if os.stat(p).st_size != ref.size:
                    return False
                os.utime(p)  # young again: the sweep spares it until its record is written
            except OSError:
                return False  # swept just now: write it again
        return True

    def _write(self, ref: BlobRef, chunks: list[memoryview]) -> None:
        d = self._dir_for(ref.sha256[:2])
        tmp = self._temp(d)
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    if not self.simulate_power_loss:
                        _write_all(fd, chunks)
                    if failpoints.ENABLED:
                        failpoints.hit("blobs.before_fsync")
                    if self.simulate_power_loss:
                        # Held until the sync: a kill above loses the bytes, as a power cut would.
                        _write_all(fd, chunks)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                raise StorageFailure("write", str(tmp), e) from None
            if failpoints.ENABLED:
                failpoints.hit("blobs.after_fsync")
            self._rename(tmp, d / ref.sha256, d)
        except BaseException:
            _unlink_quietly(tmp)
            raise

    def _sync(self, fd: int, path: Path) -> None:
        try:
            os.fsync(fd)
        except OSError as e:
            raise StorageFailure("fsync", str(path), e) from None

    def _rename(self, tmp: Path, final: Path, final_dir: Path) -> None:
        # Crash window: before the rename the blob does not exist (a temp file
        # nothing names); after it, and after the directory sync, it is durable.
        try:
            os.replace(tmp, final)
            fsync_dir(final_dir)
        except OSError as e:
            raise StorageFailure("rename", str(final), e) from None

    def _dir_for(self, name: str) -> Path:
        d = self.root / name
        if name not in self._made:
            try:
                make_dirs(d)
            except OSError as e:
                raise StorageFailure("mkdir", str(d), e) from None
            self._made.add(name)
        return d

    @staticmethod
    def _temp(d: Path) -> Path:
        return d / f".tmp-{os.getpid()}-{os.urandom(6).hex()}"

    def _lock(self, how: int) -> "_Flock":
        return _Flock(self.root / ".lock", how)

    # ------------------------------------------------------------- reading

    def _missing(self, ref: BlobRef, why: str) -> BlobMissing:
        return BlobMissing(ref.sha256, ref.size, str(self.path(ref)), why)

    def open(self, ref: BlobRef) -> BinaryIO:
        """The blob as an open binary file (for streaming); ``BlobMissing`` if it is not whole."""
        try:
            f = open(self.path(ref), "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            raise self._missing(ref, "no such file") from None
        size = os.fstat(f.fileno()).st_size
        if size != ref.size:
            f.close()
            raise self._missing(ref, f"{size:,} bytes on disk")
        return f

    def read(self, ref: BlobRef) -> bytes:
        """The blob's bytes; ``BlobMissing`` for a missing or short file."""
        with self.open(ref) as f:
            data = f.read()
        if len(data) != ref.size:
            raise self._missing(ref, f"{len(data):,} bytes read")
        return data

    def view(self, ref: BlobRef) -> memoryview:
        """A read-only, zero-copy ``memoryview`` over an ``mmap`` of the blob."""
        if ref.size == 0:
            return memoryview(b"")
        with self.open(ref) as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return memoryview(mm)

    def resolve(self, value: Value | None) -> bytes | None:
        """Bytes pass through; a ref is read from its blob."""
        if isinstance(value, BlobRef):
            return self.read(value)
        return value

    def resolve_outcome(self, out: _O) -> _O:
        """A ``RunOutcome`` (any Struct with ``result``) whose result ref is read as bytes."""
        r = getattr(out, "result", None)
        if isinstance(r, BlobRef):
            return msgspec.structs.replace(out, result=self.read(r))
        return out

    def resolve_view(self, value: Value) -> memoryview:
        """A ``memoryview`` of a value: over an ``mmap`` for a ref, else of the bytes."""
        if isinstance(value, BlobRef):
            return self.view(value)
        return memoryview(value)

    def open_value(self, value: Value) -> BinaryIO:
        """A binary file to stream a value from (a blob, or the bytes in memory)."""
        if isinstance(value, BlobRef):
            return self.open(value)
        return io.BytesIO(value)

    # ------------------------------------------------------- checks, sweep

    def names(self) -> Iterator[tuple[Path, os.stat_result]]:
        """Every file under ``blobs/`` (temp files included) with its stat; never the lock."""
        try:
            tops = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for top in tops:
            if not top.is_dir(follow_symlinks=False):
                continue
            try:
                entries = list(os.scandir(top.path))
            except FileNotFoundError:
                continue
            for e in entries:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield Path(e.path), st

    def hash_file(self, path: Path) -> str:
        """sha256 hex of a file's content, streamed."""
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    return h.hexdigest()
                h.update(chunk)

    def sweep(self, keep: set[str], older_than: float) -> int:
        """Delete blobs not in ``keep`` (and stray temp files) whose mtime is before ``older_than``.

        Never a file younger than the cutoff: a blob written (or refreshed by
        ``put``) just before the record naming it is committed survives.
        Returns how many files went.
        """
        gone = 0
        dirs: set[Path] = set()
        for path, st in list(self.names()):
            name = path.name
            if st.st_mtime >= older_than:
                continue
            if not name.startswith(".") and (not _SHA.fullmatch(name) or name in keep):
                continue
            with self._lock(fcntl.LOCK_EX):
                try:
                    # Re-checked under the lock: a put may have refreshed it since.
                    if os.stat(path).st_mtime >= older_than:
                        continue
                    os.unlink(path)
                except FileNotFoundError:
                    continue
            gone += 1
            dirs.add(path.parent)
        for d in dirs:
            try:
                fsync_dir(d)
            except OSError:
                pass
        return gone


class BlobAudit(msgspec.Struct):
    """What ``audit`` found: errors break a restart, the rest is housekeeping."""

    blobs: int = 0
    bytes: int = 0
    errors: list[str] = []
    orphans: int = 0  # blobs nothing names (a sweep takes them once past retention)
    orphan_bytes: int = 0
    temp_files: int = 0  # dot-named leftovers of writers that died before their rename
    gone: int = 0  # refs only superseded records name, swept already (expected)


def audit(store: BlobStore, live: dict[str, tuple[int, str]], named: set[str],
          keep: set[str] = frozenset(), check_hashes: bool = True) -> BlobAudit:  # type: ignore[assignment]
    """Check blobs against the refs the journal names.

    ``live``: sha256 -> (size, what) for every ref the folded state needs (a
    missing or short one, or content that hashes to another name, is an
    error); ``named``: every ref any record names (one only superseded
    records name may be swept: counted in ``gone``); ``keep``: refs named
    elsewhere (the archive). Blobs no one names are orphans.
    """
    out = BlobAudit()
    on_disk: dict[str, int] = {}
    for path, st in store.names():
        name = path.name
        if name.startswith("."):
            out.temp_files += 1
            continue
        if not _SHA.fullmatch(name):
            continue
        out.blobs += 1
        out.bytes += st.st_size
        on_disk[name] = st.st_size
        if path.parent.name != name[:2]:
            out.errors.append(f"blob {name} is in the wrong directory ({path.parent.name}/)")
        if check_hashes:
            got = store.hash_file(path)
            if got != name:
                out.errors.append(f"blob {name} is damaged: its content hashes to {got}")
        if name not in named and name not in keep and name not in live:
            out.orphans += 1
            out.orphan_bytes += st.st_size
    for sha, (size, what) in sorted(live.items()):
        have = on_disk.get(sha)
        if have is None:
            out.errors.append(f"{what} names blob {sha} ({size:,} bytes), which is missing")
        elif have != size:
            out.errors.append(f"{what} names blob {sha} of {size:,} bytes; the file has "
                              f"{have:,}")
    out.gone = sum(1 for sha in named if sha not in on_disk and sha not in live)
    return out


class _Flock:
    """``flock`` on one file, as a context manager (a missing directory is made)."""

    __slots__ = ("path", "how", "fd")

    def __init__(self, path: Path, how: int) -> None:
        self.path, self.how, self.fd = path, how, -1

    def __enter__(self) -> "_Flock":
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:
            make_dirs(self.path.parent)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, self.how)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing releases the lock


def _write_all(fd: int, chunks: list[memoryview]) -> None:
    for c in chunks:
        n = 0
        while n < c.nbytes:
            n += os.write(fd, c[n:n + (64 << 20)])


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
