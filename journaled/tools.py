"""Offline journal tools behind ``verify``, ``log`` and ``compact``.

They read the journal the way replay does, and ``verify`` also folds it
through the state machine, so a journal that passes would start a
supervisor without cutting or refusing anything.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import msgspec

from . import replay
from .archive import SCHEMA_VERSION, Archive, ArchiveReader
from .blobs import BlobRef, BlobStore, audit, refs_of
from .errors import JournalCorrupt
from .journal import Journal, StateLock, VerifyReport, verify
from .records import (
    Archived,
    Forked,
    MemoPut,
    Record,
    Redriven,
    Spawned,
    StepDone,
    Submitted,
    Terminated,
    decode,
    encode,
)
from .state import State, outcome_of


class Check(msgspec.Struct):
    """What ``journaled verify`` found."""

    report: Any  # VerifyReport
    runs: int = 0
    statuses: dict[str, int] = {}
    violations: list[str] = []
    archived: dict[str, int] = {}  # archive rows by status ({} with no archive)
    archive_schema: int = 0  # its PRAGMA user_version (0: no archive)
    blobs: Any = None  # blobs.BlobAudit once the journal folded
    warnings: list[str] = []

    @property
    def ok(self) -> bool:
        return self.report.damage is None and not self.violations


def records(state_dir: Path) -> Iterator[tuple[str, int, Record]]:
    """Every record from the replay start, with its segment and offset (read-only)."""
    return replay.records(Path(state_dir) / "journal")


def check(state_dir: Path) -> Check:
    """Frames, CRCs, headers and decoding, then the state machine's invariants on replay."""
    report: VerifyReport = verify(Path(state_dir) / "journal", decode)
    out = Check(report)
    if report.damage is not None:
        return out
    state = State()
    ends: Counter[str] = Counter()
    named: set[str] = set()
    try:
        for seg, off, rec in records(state_dir):
            t = type(rec)
            if t in _NAMING:
                named.update(refs_of(getattr(rec, f) for f in _NAMING[t]))
            if t is Terminated:
                ends[rec.run_id] += 1
                if ends[rec.run_id] > 1:
                    out.violations.append(f"{seg} at byte {off}: run {rec.run_id} terminated "
                                          "a second time")
            elif t is Redriven:
                ends[rec.run_id] = 0
            elif t is Archived:
                for rid in rec.run_ids:  # gone to the archive: it may end there only once
                    ends.pop(rid, None)
            elif (t is not Submitted and t is not Forked and hasattr(rec, "run_id")
                  and rec.run_id not in state.runs):
                out.violations.append(f"{seg} at byte {off}: {t.__name__} for run "
                                      f"{rec.run_id}, which was never submitted")
                continue
            state.apply(rec)
    except JournalCorrupt as e:
        # The report is frozen: a new one carries the damage the fold found.
        out.report = dataclasses.replace(report, damage=e, torn=None)
    out.runs = len(state.runs)
    out.statuses = {k: v for k, v in state.status_counts().items() if v}
    check_archive(Path(state_dir), state, out)
    if out.report.damage is None:
        _check_blobs(Path(state_dir), state, named, out)
    return out


def check_archive(state_dir: Path, state: State, out: Check) -> None:
    """The archive against the journal: its schema, and no run with two outcomes.

    A run in both (archived, its ``Archived`` record not yet written when the
    supervisor stopped) must have the same outcome in each; a run live again
    in the journal (redriven) may differ, it is archived anew when it ends.
    """
    reader: ArchiveReader | None = None
    try:
        reader = Archive(state_dir).open_reader()
        if reader is None:
            return
        out.archive_schema = reader.schema_version()
        if out.archive_schema != SCHEMA_VERSION:
            out.violations.append(f"archive.sqlite3 has schema version {out.archive_schema}; "
                                  f"this journaled reads version {SCHEMA_VERSION}")
            return
        out.archived = reader.count()
        finished = [r for r in state.runs.values() if r.terminal]
        rows = reader.get_many(r.run_id for r in finished)
        for run in finished:
            row = rows.get(run.run_id)
            if row is None:
                continue
            live, kept = outcome_of(run), row.outcome()
            if (live.status, live.result, live.error, live.steps) != \
                    (kept.status, kept.result, kept.error, kept.steps):
                out.violations.append(
                    f"run {run.run_id} is {live.status.value} in the journal but "
                    f"{kept.status.value} in the archive (result or error differ)")
    except Exception as e:  # noqa: BLE001 - an unreadable archive is a finding, not a crash
        out.violations.append(f"archive.sqlite3 cannot be read: {type(e).__name__}: {e}")
    finally:
        if reader is not None:
            reader.close()


# Record fields that may name a blob (snapshots: their runs' fields, below).
_NAMING: dict[type, tuple[str, ...]] = {Submitted: ("input",), StepDone: ("payload",),
                                        Terminated: ("result",), MemoPut: ("value",),
                                        Forked: ("input", "payload", "memos"),
                                        Spawned: ("then", "children")}


def _check_blobs(state_dir: Path, state: State, named: set[str], out: Check) -> None:
    """Every blob the folded state needs is there and whole; orphans are counted."""
    live: dict[str, tuple[int, str]] = {}
    for run in state.runs.values():
        for what, v in (("input", run.input), ("payload", run.payload),
                        ("result", run.result), *((f"memo {k!r}", m)
                                                  for k, m in run.memos.items())):
            if isinstance(v, BlobRef):
                live.setdefault(v.sha256, (v.size, f"run {run.run_id}'s {what}"))
    named |= set(live)
    keep: set[str] = set()
    reader = Archive(state_dir).open_reader()
    if reader is not None:
        try:
            keep = reader.blob_refs()
            for rid, what, v in reader.blob_values():  # archived runs need theirs too
                live.setdefault(v.sha256, (v.size, f"archived run {rid}'s {what}"))
        finally:
            reader.close()
    a = audit(BlobStore(state_dir), live, named, keep)
    out.blobs = a
    out.violations += a.errors
    if a.orphans:
        out.warnings.append(f"{a.orphans} orphan blobs ({a.orphan_bytes / 1e6:.1f} MB) no run "
                            "names; the supervisor's sweep deletes them once past retention")
    if a.temp_files:
        out.warnings.append(f"{a.temp_files} temp files of blob writers that stopped before "
                            "their rename; swept like orphans")


def compact_offline(state_dir: Path, retention: float, hooks: bool = False) -> tuple[int, int]:
    """Compact with no supervisor running; returns (bytes before, bytes after).

    Finished runs stay in the journal until a supervisor archives them; the
    archive's rows finished more than ``retention`` seconds ago are deleted.

    Raises:
        JournalCorrupt: the journal is damaged or holds an undecodable record
            (nothing is changed; 'journaled verify' shows where).
        RecordTooLarge: a snapshot part does not fit one frame; the old journal is kept.
    """
    with StateLock(state_dir):
        journal = Journal(state_dir / "journal")
        try:
            state = replay.fold(journal)
            journal.open_for_append()
            before = journal.size_bytes
            parts = state.snapshot(time.time(), retention, hooks)
            journal.compact([encode(p) for p in parts])
            after = journal.size_bytes
        finally:
            journal.close()
        archive = Archive(state_dir)
        if archive.exists():  # we hold the state lock: no archiver is writing
            writer = archive.open_writer()
            try:
                writer.delete_finished_before(time.time() - retention)
            finally:
                writer.close()
    return before, after


def record_dict(rec: Record) -> dict[str, Any]:
    """A record as plain data: its tag as ``type``, bytes as text where they decode."""
    d: dict[str, Any] = {"type": type(rec).__struct_config__.tag}
    for name in rec.__struct_fields__:
        v = getattr(rec, name)
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                v = {"hex": v.hex()}
        elif isinstance(v, BlobRef):
            v = {"blob": v.sha256, "size": v.size}
        elif isinstance(v, list):
            v = [record_dict(x) if isinstance(x, msgspec.Struct) else x for x in v]
        elif isinstance(v, msgspec.Struct):  # Restored's run
            v = record_dict(v)  # type: ignore[arg-type]
        d[name] = v
    return d


def record_line(rec: Record) -> str:
    """One human line per record: time, type, run, the fields that matter."""
    d = record_dict(rec)
    kind = type(rec).__name__
    at = d.pop("at", None)
    d.pop("type")
    when = time.strftime("%H:%M:%S", time.localtime(at)) + f".{int((at % 1) * 1000):03d}" \
        if isinstance(at, float) else " " * 12
    rid = d.pop("run_id", "")
    if kind == "Snapshot":
        return f"{when}  {kind:<15} part {d['part']}: {len(d['runs'])} runs"
    parts = []
    for k, v in d.items():
        if v in (None, "", {}, [], 0, 0.0, False) and k not in ("step",):
            continue
        s = str(v)
        parts.append(f"{k}={s if len(s) <= 60 else s[:59] + '…'}")
    return f"{when}  {kind:<15} {rid}  {' '.join(parts)}".rstrip()


def short_bytes(b: bytes | BlobRef | None, n: int = 40, none: str = "-") -> str:
    """Bytes for one line of a table: text if they decode, cut to ``n`` characters."""
    if b is None:
        return none
    if isinstance(b, BlobRef):
        return f"<blob {b.sha256[:12]} {b.size:,} bytes>"
    try:
        s = " ".join(b.decode("utf-8").split())
    except UnicodeDecodeError:
        s = repr(b)
    return s if len(s) <= n else s[: n - 1] + "…"
