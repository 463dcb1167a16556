"""The archive: finished runs in ``STATE/archive.sqlite3``, one row each, read by index.

The journal holds live work; a run that finished (and whose hook, if any,
was delivered) moves here, so no reader folds history it did not ask for.
stdlib ``sqlite3`` in WAL mode: the supervisor's archiver thread is the one
writer (``synchronous=FULL``: a commit that returned is on disk, which is
what lets the journal drop the run after it); any number of readers open
the file read-only (``mode=ro``, or ``query_only`` when the writer is gone
and left no ``-shm`` file for a read-only connection), never create it, and read a consistent
snapshot while the writer commits. A missing file is an empty archive.

Schema (version ``SCHEMA_VERSION`` in ``PRAGMA user_version``)::

    runs(id TEXT PRIMARY KEY, status TEXT, dead INTEGER, kind TEXT,
         input_sha256 TEXT, input_size INTEGER,
         result BLOB,             -- NULL when none or stored out of line
         result_sha256 TEXT, result_size INTEGER,
         error TEXT, traceback TEXT, steps INTEGER, attempts INTEGER,
         submitted_at REAL, finished_at REAL,
         headers TEXT,            -- JSON object
         history TEXT,            -- JSON list of [step, attempt, worker, started,
                                  --   finished, outcome, error, traceback]
         record BLOB)             -- msgpack RunSnapshot (payload, memos, result dropped)
    INDEX runs_status_finished (status, finished_at)
    INDEX runs_finished (finished_at)

Rows are upserted (``INSERT OR REPLACE``), so archiving a run twice (a crash
between the archive commit and the journal's ``Archived`` record) leaves
one row with the same content.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Union

import msgspec

from .api import Attempt, DeadLetter, RunOutcome, RunStatus
from .blobs import content_sha256
from .durable import fsync_dir
from .records import RunSnapshot
from .run import Run, attempts_of, outcome_of, run_from_snapshot, run_to_snapshot, steps_of

__all__ = ["ARCHIVE_NAME", "SCHEMA_VERSION", "Archive", "ArchiveReader", "ArchiveWriter",
           "ArchivedRun", "Identity", "content_sha256", "row_of"]

log = logging.getLogger("journaled.archive")

ARCHIVE_NAME = "archive.sqlite3"
SCHEMA_VERSION = 1
_IN_CHUNK = 500  # ids per ``IN (...)``: under SQLite's host-parameter limit everywhere

_COLUMNS = ("id", "status", "dead", "kind", "input_sha256", "input_size", "result",
            "result_sha256", "result_size", "error", "traceback", "steps", "attempts",
            "submitted_at", "finished_at", "headers", "history", "record")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, dead INTEGER NOT NULL, kind TEXT NOT NULL,
    input_sha256 TEXT NOT NULL, input_size INTEGER NOT NULL,
    result BLOB, result_sha256 TEXT, result_size INTEGER,
    error TEXT, traceback TEXT NOT NULL, steps INTEGER NOT NULL, attempts INTEGER NOT NULL,
    submitted_at REAL NOT NULL, finished_at REAL NOT NULL,
    headers TEXT NOT NULL, history TEXT NOT NULL, record BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS runs_status_finished ON runs (status, finished_at);
CREATE INDEX IF NOT EXISTS runs_finished ON runs (finished_at);
"""
_UPSERT = (f"INSERT OR REPLACE INTO runs ({', '.join(_COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(_COLUMNS))})")
_INSERT_NEW = _UPSERT.replace("INSERT OR REPLACE", "INSERT OR IGNORE")  # rowcount: rows new
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM runs"
_SELECT_STATUS = "SELECT status FROM runs"

_snap_encoder = msgspec.msgpack.Encoder()
_json = msgspec.json.Encoder(order="sorted")  # ten times json.dumps: rows are built on the loop
_snap_decoder = msgspec.msgpack.Decoder(RunSnapshot)

Row = tuple  # one value per _COLUMNS entry
Identity = tuple[str, dict[str, str], str]  # (input sha256, headers, runner) of an archived run


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (bytes, bytearray, memoryview)) else int(value.size)


# Digests of small inline values, which repeat (b"", b"ok"): the archiver hashes an
# input and a result per row, 0.25 us each, where a look-up here costs 0.05. Bounded.
_SMALL = 64
_DIGESTS: dict[bytes, str] = {}
_DIGESTS_MAX = 4096


def _sha256(value: Any) -> str:
    """``content_sha256``, remembered for small bytes (the archiver thread's only caller)."""
    if type(value) is not bytes or len(value) > _SMALL:
        return content_sha256(value)
    digest = _DIGESTS.get(value)
    if digest is None:
        if len(_DIGESTS) >= _DIGESTS_MAX:
            _DIGESTS.clear()
        digest = _DIGESTS[value] = content_sha256(value)
    return digest


def row_of(run: Run | RunSnapshot) -> Row:
    """The archive row of a terminal run (or of its snapshot, taken on the loop).

    The record drops what a finished run never needs again (its last
    payload and memos; a failed run keeps them: ``retry`` runs a dead step
    again and ``journaled step`` re-runs a failed one) and the inline
    result, which has its own column.
    """
    snap = run if isinstance(run, RunSnapshot) else run_to_snapshot(run)
    inline = isinstance(snap.result, bytes)
    keep = snap.status == "failed"
    record = _snap_encoder.encode(msgspec.structs.replace(
        snap, payload=snap.payload if keep else b"", memos=snap.memos if keep else {},
        result=None if inline else snap.result))
    result = snap.result
    return (snap.run_id, snap.status, int(snap.dead), snap.kind,
            _sha256(snap.input), _size(snap.input),
            result if inline else None,
            None if result is None else _sha256(result),
            None if result is None else _size(result),
            snap.error, snap.traceback, steps_of(snap.status, snap.kind, snap.step),
            snap.attempt, snap.submitted_at, snap.finished_at or 0.0,
            _json.encode(snap.headers).decode() if snap.headers else "{}",
            _json.encode(snap.history).decode(), record)


class ArchivedRun(msgspec.Struct, frozen=True, kw_only=True):
    """One archive row; ``run()`` rebuilds the ``Run`` it was made from."""

    id: str
    status: str
    dead: bool
    kind: str
    input_sha256: str
    input_size: int
    result: Union[bytes, None]
    result_sha256: Union[str, None]
    result_size: Union[int, None]
    error: Union[str, None]
    traceback: str
    steps: int
    attempts: int
    submitted_at: float
    finished_at: float
    headers: str
    history: str
    record: bytes

    def snapshot(self) -> RunSnapshot:
        snap = _snap_decoder.decode(self.record)
        if self.result is not None:
            snap = msgspec.structs.replace(snap, result=self.result)
        return snap

    def run(self) -> Run:
        return run_from_snapshot(self.snapshot())

    def outcome(self) -> RunOutcome:
        if self.result_sha256 is not None and self.result is None:
            return outcome_of(self.run())  # out of line: the record holds the ref
        return RunOutcome(self.id, RunStatus(self.status), self.result, self.error, self.steps,
                          self.submitted_at, self.finished_at)

    def attempt_list(self) -> list[Attempt]:
        return attempts_of(self.run())

    def dead_letter(self) -> DeadLetter:
        run = self.run()
        return DeadLetter(run.run_id, run.step, run.attempt, run.kind, run.error, run.traceback,
                          run.finished_at)


def _archived(row: tuple) -> ArchivedRun:
    fields = dict(zip(_COLUMNS, row, strict=True))
    fields["dead"] = bool(fields["dead"])
    return ArchivedRun(**fields)


def _rows_in(db: sqlite3.Connection, select: str, ids: list[str]) -> Iterator[Any]:
    """The rows of ``select ... WHERE id IN (ids)``, asked ``_IN_CHUNK`` ids at a time."""
    for i in range(0, len(ids), _IN_CHUNK):
        chunk = ids[i:i + _IN_CHUNK]
        yield from db.execute(f"{select} WHERE id IN ({','.join('?' * len(chunk))})", chunk)


class _Reads:
    """The queries, shared by the read-only reader and the writer."""

    _db: sqlite3.Connection

    def get(self, run_id: str) -> ArchivedRun | None:
        row = self._db.execute(f"{_SELECT} WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else _archived(row)

    def runs(self, status: str | None = None, since: float | None = None,
             limit: int | None = 100, dead: bool | None = None) -> list[ArchivedRun]:
        """Newest first by ``finished_at``; ``since``: finished at or after it."""
        where, args = [], []  # type: list[str], list[Any]
        if status is not None:
            where.append("status = ?")
            args.append(str(status))
        if since is not None:
            where.append("finished_at >= ?")
            args.append(float(since))
        if dead is not None:
            where.append("dead = ?")
            args.append(int(dead))
        sql = _SELECT + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY finished_at DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [_archived(r) for r in self._db.execute(sql, args)]

    def get_many(self, run_ids: Iterable[str]) -> dict[str, ArchivedRun]:
        """The rows of the given ids that are archived (``IN`` queries of a few hundred)."""
        return {row[0]: _archived(row)
                for row in _rows_in(self._db, _SELECT, list(dict.fromkeys(run_ids)))}

    def identities(self, run_ids: Iterable[str]) -> dict[str, Identity]:
        """``{id: (input_sha256, headers, runner)}`` of the given ids that are archived.

        What a re-submit is matched against (idempotency across history). The
        runner has no column of its own (schema 1 rows would lack it): it is
        read from the row's record, decoded only for ids found, which are
        re-submits and rare.
        """
        rows = _rows_in(self._db, "SELECT id, input_sha256, headers, record FROM runs",
                        list(dict.fromkeys(run_ids)))
        return {rid: (sha, json.loads(hdrs), _snap_decoder.decode(record).runner)
                for rid, sha, hdrs, record in rows}

    def count(self) -> dict[str, int]:
        """Rows by status."""
        return dict(self._db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status"))

    def count_besides(self, ended: Iterable[str]) -> dict[str, int]:
        """Rows by status, less those of ``ended`` (terminal runs a reader still
        holds from the journal), read in one snapshot.

        A run is archived a moment before its ``Archived`` record reaches the
        journal, so a reader adding journal counts to archive counts would see it
        twice, or, with the two reads a moment apart, not at all. One read
        transaction makes "archived" mean the same thing in both answers.
        """
        ids = list(dict.fromkeys(ended))
        self._db.execute("BEGIN")
        try:
            counts = self.count()
            for (status,) in _rows_in(self._db, _SELECT_STATUS, ids):
                counts[status] -= 1
        finally:
            self._db.execute("COMMIT")
        return counts

    def count_dead(self) -> int:
        """Dead-lettered rows (the metrics' dead-letter gauge)."""
        # Only failed runs are dead: the status index narrows the scan to them.
        return int(self._db.execute(
            "SELECT COUNT(*) FROM runs WHERE status = 'failed' AND dead = 1").fetchone()[0])

    def blob_refs(self) -> set[str]:
        """Every sha256 an archived row references out of line (the blob sweep keeps them).

        Inputs are always named (an inline input's hash names no file, which
        is harmless to keep); results only when stored out of line.
        """
        refs = {sha for (sha,) in self._db.execute(
            "SELECT input_sha256 FROM runs WHERE input_size > 0")}
        refs.update(sha for (sha,) in self._db.execute(
            "SELECT result_sha256 FROM runs WHERE result IS NULL AND result_sha256 IS NOT NULL"))
        return refs

    def blob_values(self) -> Iterator[tuple[str, str, Any]]:
        """``(run id, what, BlobRef)`` for every value an archived run keeps out of line.

        Decodes every row's record (``verify`` checks each blob an archived
        run still names); inline values are skipped.
        """
        for rid, record in self._db.execute("SELECT id, record FROM runs"):
            snap = _snap_decoder.decode(record)
            values = [("input", snap.input), ("payload", snap.payload),
                      ("result", snap.result), *((f"memo {k!r}", v) for k, v in
                                                 snap.memos.items())]
            for what, v in values:
                if v is not None and not isinstance(v, (bytes, bytearray, memoryview)):
                    yield rid, what, v

    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class ArchiveReader(_Reads):
    """A read-only connection: never creates the file, never blocks the writer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0,
                                   check_same_thread=False)
        try:
            self._db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.OperationalError:
            # A WAL database whose writer closed cleanly has no -shm file, and a
            # mode=ro connection may not create one ("attempt to write a readonly
            # database"). Open it read-write without create, and refuse writes.
            self._db.close()
            self._db = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=10.0,
                                       check_same_thread=False)
            self._db.execute("PRAGMA query_only = 1")

    def has_schema(self) -> bool:
        return self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'").fetchone() \
            is not None


class ArchiveWriter(_Reads):
    """The one writer (the supervisor's archiver thread, or a tool holding the state lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        created = not path.exists()
        self._db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a returned commit is durable
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            self._db.close()
            raise RuntimeError(f"{path} has archive schema {version}, newer than this "
                               f"journaled ({SCHEMA_VERSION}); upgrade journaled")
        if version < SCHEMA_VERSION:
            self._db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; "
                                   "COMMIT;")
        self._dir_synced = not created

    def _sync_dir(self) -> None:
        # The file (and its -wal) were created by this writer: their directory
        # entries must be durable too before anyone relies on a commit.
        if not self._dir_synced:
            fsync_dir(self.path.parent)
            self._dir_synced = True

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, durable when the block ends (rolled back if it raises)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._sync_dir()

    def upsert(self, rows: Iterable[Row], counts: dict[str, int] | None = None) -> int:
        """Insert or replace ``rows`` in one transaction; durable on return.

        ``counts`` (rows by status), if given, is kept exact: a row replaced
        (archived again after a crash) moves from its old status to its new one.
        """
        rows = list(rows)
        given = len(rows)
        if not rows:
            return 0
        with self._transaction() as db:
            if counts is not None:
                # Rows are nearly always new: insert them, none replaced, and count them
                # without looking each id up first (~1 us a row off the archiver).
                # Any row already there (archived again after a crash, a redrive, the
                # same id twice in one batch): undo, and take the exact path below.
                db.execute("SAVEPOINT fresh")
                if db.executemany(_INSERT_NEW, rows).rowcount == len(rows):
                    for r in rows:
                        counts[r[1]] = counts.get(r[1], 0) + 1
                    return given
                db.execute("ROLLBACK TO fresh")
                last = {r[0]: r for r in rows}  # an id twice: the last wins, counted once
                rows = list(last.values())
                for (old,) in _rows_in(db, _SELECT_STATUS, list(last)):
                    counts[old] = counts.get(old, 0) - 1
                for r in rows:
                    counts[r[1]] = counts.get(r[1], 0) + 1
            db.executemany(_UPSERT, rows)
        return given

    def delete_finished_before(self, t: float) -> int:
        """Delete rows finished before ``t`` (retention); how many went."""
        with self._transaction() as db:
            n = db.execute("DELETE FROM runs WHERE finished_at < ?", (float(t),)).rowcount
        return n


class Archive:
    """``STATE/archive.sqlite3``: open the writer, or a reader (``None`` while there is no file)."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / ARCHIVE_NAME

    def exists(self) -> bool:
        return self.path.exists()

    def open_writer(self) -> ArchiveWriter:
        return ArchiveWriter(self.path)

    def open_reader(self) -> ArchiveReader | None:
        if not self.path.exists():
            return None
        try:
            reader = ArchiveReader(self.path)
            if reader.has_schema():
                return reader
            # Created by a writer that stopped before its first commit: empty.
            reader.close()
            return None
        except sqlite3.OperationalError:
            return None  # removed between the look and the open


class CachedReader:
    """A reader opened on first need and kept (a ``Client``'s): one connection per process.

    Thread-safe (one lock around each query); reopens after a failure,
    so a file created after the client started is found on the next read.
    """

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self._archive = Archive(state_dir)
        self._reader: ArchiveReader | None = None
        self._lock = threading.Lock()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``reader.method(*args)``; ``None`` when there is no archive (yet)."""
        with self._lock:
            for tries in (1, 2):
                if self._reader is None:
                    self._reader = self._archive.open_reader()
                    if self._reader is None:
                        return None
                try:
                    return getattr(self._reader, method)(*args, **kwargs)
                except sqlite3.OperationalError as e:
                    if "no such table" in str(e):
                        return None  # created, its schema not yet committed
                    self._reader.close()
                    self._reader = None
                    if tries == 2:
                        raise
            return None

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
