"""The journal side of a crash round: every durable record it ever held, and what it says.

Compaction drops old segments, so a round's ``Archive`` reads the journal
incrementally while supervisors run; the checks judge that history, and
``final_outcomes`` the journal as it is at the end.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple


class Outcome(NamedTuple):
    status: str
    result: bytes | None
    error: str | None

    def show(self) -> str:
        out = self.status
        if self.result is not None:
            out += f" result={short(self.result)}"
        if self.error:
            out += f" error={self.error!r}"
        return out


def short(b: bytes | None, n: int = 40) -> str:
    from ..tools import short_bytes

    return short_bytes(b, n)


class Archive:
    """Every durable record a round's journal ever held, in order.

    Compaction drops old segments; reading the journal incrementally while
    supervisors run (and right before asking for a compaction) keeps what
    the final journal no longer has. Only what a compaction swallows within
    one turn, between two reads, is seen in its snapshot form only.
    """

    def __init__(self, state: Path) -> None:
        from ..replay import Tail

        self.state = state
        self.records: list[Any] = []
        self.resets = 0
        self._tail = Tail(state / "journal")

    def update(self) -> None:
        try:
            reset, entries = self._tail.poll()
        except Exception:  # noqa: BLE001 - damage shows up in check (g)
            return
        self.resets += reset
        self.records += [rec for _seg, _off, rec in entries]

    def of_run(self, run_id: str) -> list[Any]:
        return [r for r in self.records if getattr(r, "run_id", None) == run_id]


def final_outcomes(state: Path) -> dict[str, Outcome | None]:
    """Each run's outcome as the journal, then the archive, say now (None: not terminal).

    A finished run leaves the journal once ``archive.sqlite3`` holds it, so
    the archive answers for every run the journal no longer has. A result
    stored as a blob compares by its content.
    """
    from ..archive import Archive as RunArchive
    from ..blobs import BlobStore
    from ..replay import fold

    st = fold(state / "journal")
    blobs = BlobStore(state)
    out: dict[str, Outcome | None] = {}
    reader = RunArchive(state).open_reader()
    if reader is not None:
        try:
            for row in reader.runs(limit=None):
                o = row.outcome()
                out[row.id] = Outcome(o.status.value, blobs.resolve(o.result), o.error)
        finally:
            reader.close()
    for rid, run in st.runs.items():
        out[rid] = Outcome(run.status, blobs.resolve(run.result), run.error) \
            if run.terminal else None
    return out


def steps_done(archive: Archive) -> int:
    from ..records import StepDone, Terminated

    return sum(1 for r in archive.records if type(r) in (StepDone, Terminated))


def longest_step(recs: Iterable[Any]) -> float:
    """Seconds from a step's lease to its outcome, the longest of a journal."""
    from ..records import Leased, StepDone, Terminated

    leased: dict[tuple[str, int, int], float] = {}
    longest = 0.0
    for r in recs:
        t = type(r)
        if t is Leased:
            leased[(r.run_id, r.step, r.attempt)] = r.at
        elif t is StepDone or t is Terminated:
            start = leased.get((r.run_id, r.step, r.attempt))
            if start is not None:
                longest = max(longest, r.at - start)
    return longest


def worker_deaths(recs: Iterable[Any]) -> int:
    from ..records import AttemptFailed, Terminated

    return sum(1 for r in recs if type(r) in (AttemptFailed, Terminated)
               and r.kind == "worker_died")


def failures_per_step(recs: Iterable[Any]) -> Counter[tuple[str, int]]:
    """Failed attempts per (run, step): AttemptFailed plus the failure that dead-letters.

    A Snapshot (compaction) says how many failures each run's current step
    had; records the compaction swallowed count through it.
    """
    from ..records import AttemptFailed, Snapshot, Terminated

    out: Counter[tuple[str, int]] = Counter()
    for r in recs:
        t = type(r)
        if t is AttemptFailed:
            out[(r.run_id, r.step)] += 1
        elif t is Terminated and r.dead and r.kind not in ("abandoned", ""):
            out[(r.run_id, r.step)] += 1
        elif t is Snapshot:
            for s in r.runs:
                if s.failures:
                    out[(s.run_id, s.step)] = max(out[(s.run_id, s.step)], s.failures)
    return out
