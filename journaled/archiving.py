"""Moving finished runs from the journal to the archive, off the loop.

::

    loop (after a commit)                     archiver thread
      terminal + durable + hook delivered ──> RunSnapshot copies (cheap)
                                              rows, upsert a batch, COMMIT (fsynced)
      Archived(ids) in the next group   <──── ids handed back, loop woken
      commit; replay drops the runs

The loop only copies each run into a frozen ``RunSnapshot`` (under the
state lock it already holds) and writes one small ``Archived`` record per
batch; encoding the rows, the SQLite work and its fsync happen on the
archiver thread, at most every ``GATHER`` seconds under load.

Crash windows, in order:

- killed before the archive commit: the runs are still finished in the
  journal; the next start queues them again.
- killed after the archive commit, before ``Archived`` is durable: replay
  still has them as finished, queues them again and the upsert replaces
  each row with the same content (no duplicate, no second outcome).
- killed after ``Archived`` is durable: the runs are only in the archive.

A failed archive write (disk full, a locked file) is logged and retried
with a backoff; the runs stay in the journal meanwhile, never lost. The
retention timer deletes archive rows past ``retention`` on the same thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable

from . import failpoints
from .api import RunOutcome
from .archive import Archive, ArchiveWriter, CachedReader, Identity, Row, content_sha256, row_of
from .errors import RunConflict
from .records import Archived, HookDelivered, Record, Redriven, RunSnapshot, Terminated
from .run import Run, run_to_snapshot
from .state import State

log = logging.getLogger("journaled.supervisor")

BATCH = 2000  # rows per archive transaction
FEED = 500  # start-up backlog rows built per turn (a few ms of the loop)
# Rows wait up to this long to share one SQLite commit (and one Archived
# record): under load the archive costs an fsync or two a second, not one per turn.
GATHER = 0.5
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 30.0


class Archiver:
    """The archiver thread: upserts queued rows, hands archived ids back to the loop."""

    def __init__(self, archive: Archive, wake: Callable[[], None]) -> None:
        self.archive = archive
        self.wake = wake
        self._lock = threading.RLock()  # `with self._lock` in put: a C call, not Condition's
        self._cond = threading.Condition(self._lock)
        self._rows: deque[RunSnapshot] = deque()  # rows are built here, off the loop
        self._cutoff: float | None = None  # retention: delete rows finished before this
        self._closed = False
        self.done: deque[list[tuple[str, float]]] = deque()  # thread -> loop
        self.failures = 0
        self.archived = 0
        self.deleted = 0
        self.counts: dict[str, int] = {}  # archive rows by status (counted once at start)
        self.in_both: set[str] = set()  # committed here, not yet dropped from the journal
        self._writer: ArchiveWriter | None = None
        self._busy = False
        self._failing = False
        self.sweep_blobs: Callable[[float], Any] | None = None  # the blob sweep, if any
        self._thread = threading.Thread(target=self._loop, daemon=True, name="journaled-archive")
        self._thread.start()

    def put(self, rows: list[RunSnapshot]) -> None:
        with self._lock:  # the condition's own lock (once per finished run)
            self._rows.extend(rows)
            if len(self._rows) >= BATCH or len(self._rows) == len(rows):
                self._cond.notify()  # a full batch, or the first rows: start gathering

    @property
    def failing(self) -> bool:
        """The last write failed (a retry is due): ``--until-idle`` must not wait on it."""
        return self._failing

    def queued(self) -> int:
        with self._cond:
            return len(self._rows)

    def expire(self, cutoff: float) -> None:
        """Delete archive rows finished before ``cutoff`` (the retention timer)."""
        with self._cond:
            self._cutoff = cutoff
            self._cond.notify()

    def busy(self) -> bool:
        """Work queued or being written (not while failing: ``--until-idle`` must end)."""
        with self._cond:
            return (bool(self._rows) or self._busy or bool(self.done)) and not self._failing

    def close(self, timeout: float = 5.0) -> None:
        """Stop; rows not yet archived stay finished in the journal for the next start."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _take(self) -> tuple[list[RunSnapshot], float | None] | None:
        with self._cond:
            while not self._closed and not self._rows and self._cutoff is None:
                self._cond.wait()
            until = time.monotonic() + GATHER
            while not self._closed and 0 < len(self._rows) < BATCH:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._closed:
                return None
            batch = [self._rows.popleft() for _ in range(min(BATCH, len(self._rows)))]
            cutoff, self._cutoff = self._cutoff, None
            self._busy = True
            return batch, cutoff

    def _loop(self) -> None:
        fails = 0
        while True:
            item = self._take()
            if item is None:
                break
            batch, cutoff = item
            try:
                if self._writer is None:
                    self._writer = self.archive.open_writer()
                    self.counts = self._writer.count()
                if batch:
                    self._commit(self._writer, batch)
                if cutoff is not None:
                    n = self._writer.delete_finished_before(cutoff)
                    self.deleted += n
                    if n:
                        self.counts = self._writer.count()
                        log.info("retention: deleted %d archived runs finished before %s", n,
                                 time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(cutoff)))
                    if self.sweep_blobs is not None:
                        self.sweep_blobs(cutoff)  # the blob sweep (journaled.blobs) goes here
                fails = 0
            except Exception as e:  # noqa: BLE001 - the runs stay in the journal: retry
                fails += 1
                self.failures += 1
                wait = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (fails - 1))
                log.error("archive write failed (%s: %s); %d runs stay in the journal, "
                          "retrying in %.1f s", type(e).__name__, e, len(batch), wait)
                if self._writer is not None:
                    try:
                        self._writer.close()
                    except Exception:  # noqa: BLE001 - reopened on the next try
                        pass
                    self._writer = None
                with self._cond:
                    self._failing = True
                    self._rows.extendleft(reversed(batch))
                    if cutoff is not None and self._cutoff is None:
                        self._cutoff = cutoff
                    self._busy = False
                    self._cond.wait(wait)
                continue
            with self._cond:
                self._busy = self._failing = False
        if self._writer is not None:
            self._writer.close()

    def counted(self) -> tuple[dict[str, int], list[str]]:
        """Rows by status, and the ids among them the journal still holds (one view)."""
        with self._cond:
            return dict(self.counts), list(self.in_both)

    def dropped(self, run_ids: Iterable[str]) -> None:
        """The journal's ``Archived`` for these is applied: they are in the archive only."""
        with self._cond:
            self.in_both.difference_update(run_ids)

    def _commit(self, writer: ArchiveWriter, batch: list[RunSnapshot]) -> None:
        rows: list[Row] = [row_of(s) for s in batch]
        if failpoints.ENABLED:
            failpoints.hit("archive.before_commit")
        counts = dict(self.counts)
        writer.upsert(rows, counts)  # synchronous=FULL: durable on return
        self.archived += len(batch)
        if failpoints.ENABLED:
            failpoints.hit("archive.after_commit")
        # Only now may the journal drop them (the loop writes Archived). Until it
        # does they are in both: ``in_both`` keeps them from being counted twice.
        ids = [(s.run_id, s.finished_at or 0.0) for s in batch]
        with self._cond:
            self.counts = counts
            self.in_both.update(rid for rid, _ in ids)
            self.done.append(ids)
        with self._cond:
            closed = self._closed
        if not closed:  # after close the wake pipe may be gone (or its fd reused)
            self.wake()


class Archiving:
    """The loop's side of the archive (a mixin): queue finished runs, journal ``Archived``."""

    # What this part needs of the supervisor it is mixed into.
    state: State
    state_dir: Path
    on_terminal: Callable[[Any], Any] | None
    outcomes: set[str]
    retention: float
    wake: Callable[[], None]

    def _init_archiving(self) -> None:
        self.archive = Archive(self.state_dir)
        self.archive_reader = CachedReader(self.state_dir)  # the loop's and Runtime's reads
        self._archiver: Archiver | None = None
        self._archive_queued: set[str] = set()  # handed to the thread, not yet dropped
        # Finished runs replay left (a 0.2 state may hold millions): fed to the
        # thread a batch per turn, so start-up and no turn builds them all at once.
        self._archive_backlog: deque[str] = deque()
        # Terminal records made durable by this supervisor: ``outcomes`` forgets
        # archived runs, so a count of finished work (benchmarks) reads this.
        self.finished_total = 0

    def _start_archiver(self) -> None:
        """At start: every finished run the replay left (also a 0.2 state's retained ones)."""
        self._archiver = Archiver(self.archive, self.wake)
        self._archiver.sweep_blobs = self._sweep_blobs
        self._archive_backlog.extend(
            r.run_id for r in self.state.archivable(self.on_terminal is not None))
        self._feed_backlog()

    def _feed_backlog(self) -> None:
        """Hand the thread the next batch of the start-up backlog once it has room."""
        arch = self._archiver
        if not self._archive_backlog or arch is None or arch.queued() >= BATCH:
            return
        runs = self.state.runs
        batch: list[Run] = []
        while self._archive_backlog and len(batch) < FEED:
            run = runs.get(self._archive_backlog.popleft())
            if run is not None and run.terminal:
                batch.append(run)
        self._queue_runs(batch)

    def _close_archiver(self) -> None:
        if self._archiver is not None:
            self._archiver.close()
        self.archive_reader.close()

    def _sweep_blobs(self, cutoff: float) -> None:
        """The blob sweep's call point (journaled.blobs fills it): blobs no row names."""

    def _queue_runs(self, runs: list[Run]) -> None:
        if self._archiver is None:
            return
        queued = self._archive_queued
        rows = []
        for run in runs:
            if run.run_id not in queued:
                queued.add(run.run_id)
                # A frozen copy (cheap); its lists are not changed once the
                # run is terminal (a redrive starts new ones: see Archived).
                rows.append(run_to_snapshot(run))
        if rows:
            self._archiver.put(rows)

    def _archive_after_commit(self, recs: list[Record]) -> None:
        """After a commit: runs now durably finished (and hooked) go to the archiver."""
        hooks = self.on_terminal is not None
        runs = self.state.runs
        ready: list[Run] = []
        dropped = False
        for rec in recs:
            t = type(rec)
            if t is Terminated:
                self.finished_total += 1
            if t is Terminated and not hooks or t is HookDelivered:
                run = runs.get(rec.run_id)  # type: ignore[union-attr]
                if run is not None and run.terminal:
                    ready.append(run)
            elif t is Redriven:
                self._archive_queued.discard(rec.run_id)  # type: ignore[union-attr]
            elif t is Archived:
                dropped = True
                for rid in rec.run_ids:  # type: ignore[union-attr]
                    self._archive_queued.discard(rid)
                    self.outcomes.discard(rid)
        if dropped and failpoints.ENABLED:
            failpoints.hit("archive.after_drop")
        if ready:
            self._queue_runs(ready)

    def _archived_records(self, now: float) -> list[Record]:
        """Batches the archive committed: ``Archived`` for the turn's group commit."""
        arch = self._archiver
        if arch is None:
            return []
        self._feed_backlog()
        if not arch.done:
            return []
        done: list[tuple[str, float]] = []
        while arch.done:
            done += arch.done.popleft()
        recs = self.state.archived(done, now)
        ids = [rid for rid, _ in done]
        arch.dropped(ids)  # a list: no generator run under the archiver's lock
        if not recs or len(recs[0].run_ids) != len(ids):  # some redriven since: archived
            kept = set(ids) - set(recs[0].run_ids if recs else ())  # again when they end
            self._archive_queued -= kept
        return recs

    def all_counts(self) -> dict[str, int]:
        """Runs by status, live and archived (what 'watch' and the status line show)."""
        counts = self.state.status_counts()
        arch = self._archiver
        if arch is not None:
            archived, both = arch.counted()
            for status, n in archived.items():
                counts[status] = counts.get(status, 0) + n
            runs = self.state.runs
            for rid in both:  # in the archive already, still in the journal: count once
                run = runs.get(rid)
                if run is not None and run.terminal:
                    counts[run.status] -= 1
        return counts

    def _archive_busy(self) -> bool:
        arch = self._archiver
        return arch is not None and (arch.busy() or bool(self._archive_backlog)
                                     and not arch.failing)

    def _expire_archive(self, now: float) -> None:
        if self._archiver is not None:
            self._archiver.expire(now - self.retention)

    def _restore_archived(self, run_id: str) -> list[Record]:
        """An archived dead-lettered run back into the journal, so it can be redriven."""
        if run_id in self.state.runs or not self.archive.exists():
            return []
        row = self.archive_reader.call("get", run_id)
        if row is None or not row.dead:
            return []
        return self.state.restore(row.snapshot())

    def _archived_outcome(self, run_id: str) -> RunOutcome | None:
        """The outcome of a run the live state has dropped, from its archive row (or None)."""
        if run_id in self.state.runs or not self.archive.exists():
            return None
        row = self.archive_reader.call("get", run_id)
        return None if row is None else row.outcome()

    def _archived_children(self, run_ids: list[str]) -> dict[str, list]:
        """Fan-in: outcomes of children the archive took (``fanout.outcomes``), one query."""
        if not run_ids or not self.archive.exists():
            return {}
        rows = self.archive_reader.call("get_many", run_ids) or {}
        out: dict[str, list] = {}
        for rid, row in rows.items():
            result = row.result
            if result is None and row.result_sha256 is not None:
                result = row.snapshot().result  # out of line: the record holds the ref
            out[rid] = [rid, row.status, result, row.error]
        return out

    # ------------------------------------------------- idempotency across history

    def _archived_identities(self, run_ids: list[str]) -> dict[str, Identity]:
        """One archive query for ids the live state does not know (re-submits)."""
        if not run_ids or not self.archive.exists():
            return {}
        return self.archive_reader.call("identities", run_ids) or {}


def check_archived(known: dict[str, Identity], run_id: str, data: Any,
                   headers: dict[str, str] | None, runner: str = "") -> bool:
    """True: a no-op re-submit of an archived run; ``RunConflict`` for another one.

    Another input, other headers or another runner make another run (as
    ``run.same_submission`` says of a live one).
    """
    seen = known.get(run_id)
    if seen is None:
        return False
    if seen != (content_sha256(data), dict(headers or {}), runner):
        raise RunConflict(run_id)
    return True
