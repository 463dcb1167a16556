"""Compaction and retention: when the journal is rewritten as one snapshot, and how.

A compaction snapshots the state after the last commit (so it holds only
what is durable) into a new base segment and drops the old segments. The
state holds live runs and finished ones not yet archived (``archiving``),
so its cost is O(live runs). It is due when asked for, or when the tail
after the last snapshot has grown past ``max(compact_bytes, 2 x that
snapshot)`` (16 MiB by default: a fresh reader never folds a huge tail,
and a big live state does not compact in a loop). The retention timer here deletes archive rows past
retention (on the archiver thread), with or without a compaction. A
failed compaction keeps the old journal, which is still valid, and backs
off; only a ``StorageFailure`` stops the supervisor.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .api import RunOutcome
from .archive import Archive
from .blobs import BlobStore, refs_of
from .clock import Clock
from .errors import StorageFailure
from .journal import Journal
from .records import encode
from .state import Policy, State

log = logging.getLogger("journaled.supervisor")

RETENTION_CHECK = 300.0  # seconds between checks for finished runs past retention
# Blobs younger than this survive every sweep: one written (or reused) just
# before the record naming it is committed is never taken, even at retention 0.
BLOB_GRACE = 600.0


class Compaction:
    """The supervisor's compaction (a mixin); ``Supervisor.compact`` takes the state lock."""

    # What this part needs of the supervisor it is mixed into.
    state: State
    state_dir: Path
    policy: Policy
    journal: Journal
    clock: Clock
    retention: float
    compact_bytes: int
    on_terminal: Callable[[RunOutcome], Any] | None
    outcomes: set[str]
    _expire_archive: Callable[[float], None]

    def _init_compaction(self) -> None:
        self._compact_requested = False
        self._next_size_check = 0
        self.compactions = 0
        self.compaction_failures = 0
        self._snapshot_bytes = 0  # size of the last snapshot written: the next trigger is 2x
        self._compact_after = 0.0  # monotonic: no automatic retry of a failed compaction before
        self.retention_check = RETENTION_CHECK  # seconds between retention checks
        self._retention_checked = self.clock.monotonic()
        self.blob_grace = BLOB_GRACE  # a blob this young is never swept, whatever the retention
        self.blobs_swept = 0
        self._sweeper: threading.Thread | None = None

    def _compaction_due(self, mono: float) -> bool:
        """Asked for, or the tail outgrew the last snapshot; also runs the retention timer."""
        if self._compact_requested:
            return True
        if mono < self._compact_after:
            return False  # the last one failed: do not rebuild the state every turn
        if self.journal.bytes_written >= self._next_size_check:
            # Stat the segments only every few MB written, not every turn. Relative
            # to the last snapshot: a big live state must not compact in a loop.
            self._next_size_check = self.journal.bytes_written + min(4 << 20,
                                                                     self.compact_bytes // 4)
            tail = self.journal.size_bytes - self._snapshot_bytes
            if tail > max(self.compact_bytes, 2 * self._snapshot_bytes):
                return True
        if mono >= self._retention_checked + self.retention_check:
            # Retention is the archive's now (finished runs leave the journal
            # through it): its rows past retention go on the archiver thread.
            self._retention_checked = mono
            self._expire_archive(self.clock.now())
            self._sweep_blobs(time.time())  # against file mtimes: the real clock
        return False

    def _compact(self, now: float | None = None) -> bool:
        """Snapshot the state into a new base segment and drop the old segments.

        Returns whether it compacted. A failure to build or write the snapshot
        (a run too large for a record, say) is logged and the old journal,
        which is still valid, stays in use; only a ``StorageFailure`` stops us.
        """
        now = self.clock.now() if now is None else now
        self._compact_requested = False
        try:
            parts = self.state.snapshot(now, self.retention, hooks=self.on_terminal is not None)
            bodies = [encode(p) for p in parts]
            # The snapshot is built from the state after the last commit, so it
            # holds what is durable; the journal syncs it before the old
            # segments go (see Journal.compact for each crash window).
            self.journal.compact(bodies)
        except StorageFailure:
            raise
        except Exception as e:  # noqa: BLE001 - the old journal is intact: keep serving
            self.compaction_failures += 1
            wait = min(900.0, 60.0 * 2 ** min(self.compaction_failures - 1, 4))
            self._compact_after = self.clock.monotonic() + wait
            log.error("compaction failed; keeping the old journal, which is still valid, "
                      "and retrying in %.0f s: %s: %s", wait, type(e).__name__, e)
            return False
        self._snapshot_bytes = sum(len(b) for b in bodies)
        # The live state stays as it is: the snapshot holds every run it holds
        # (finished runs leave only through Archived), so folding the snapshot
        # again would rebuild the same state, and that rebuild was 70% of the
        # loop's pause.
        self.compactions += 1
        self.compaction_failures = 0
        log.info("compacted the journal: %d runs kept, %.1f MB", len(self.state.runs),
                 self.journal.size_bytes / 1e6)
        return True

    def _sweep_blobs(self, now: float) -> None:
        """Delete blobs no live or archived run names, once older than retention.

        The live refs are taken here, on the loop, from the state (inputs,
        current payloads, results, memos; a superseded payload is named by
        nothing once its step is done); the directory walk and the archive's
        refs (read after the live ones, so a run moving to the archive in
        between is in one of the two) run on a thread. A blob written after
        this moment is younger than the cutoff, and one reused is refreshed
        by ``put``: neither can go.
        """
        if self._sweeper is not None and self._sweeper.is_alive():
            return
        keep = set(refs_of(_run_values(self.state.runs.values())))
        cutoff = now - max(self.retention, self.blob_grace)
        self._sweeper = threading.Thread(target=self._sweep_thread, args=(keep, cutoff),
                                         daemon=True, name="journaled-blob-sweep")
        self._sweeper.start()

    def _sweep_thread(self, keep: set[str], cutoff: float) -> None:
        try:
            keep |= self._archived_blob_refs()
            n = BlobStore(self.state_dir).sweep(keep, cutoff)
        except Exception as e:  # noqa: BLE001 - a failed sweep retries at the next check
            log.error("blob sweep failed (retrying at the next retention check): %s: %s",
                      type(e).__name__, e)
            return
        self.blobs_swept += n
        if n:
            log.info("swept %d unreferenced blobs older than %s", n,
                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(cutoff)))

    def _archived_blob_refs(self) -> set[str]:
        """Every sha256 an archived run names (nothing until the archive exists)."""
        reader = Archive(self.state_dir).open_reader()
        if reader is None:
            return set()
        try:
            return reader.blob_refs()
        finally:
            reader.close()


def _run_values(runs: Iterable[Any]) -> Iterator[object]:
    """Every field of the runs that may be a blob ref (memos as a dict)."""
    for r in runs:
        yield r.input
        yield r.payload
        yield r.result
        yield r.memos
        yield from r.trail  # payloads kept for 'fork' (ops): their blobs stay while the run does
