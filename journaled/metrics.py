"""Prometheus metrics: counters the loop bumps, gauges it samples, a sample readers render.

Three kinds of numbers, three costs:

* **Counters and histograms** (steps started/finished/failed, step
  durations, dead letters) are folded from the records of each durable
  turn (``Metrics.observe``, called from ``Supervisor._after_commit``): plain
  ``int`` attributes and lists bumped on the loop thread, no lock, a few
  hundred nanoseconds per record. Sync latency is observed on the flusher
  thread (``observe_sync``), which alone writes that histogram. A reader on
  another thread copies them (a dict or list copy is atomic under the GIL);
  at worst a scrape is one step behind.
* **Gauges** that need a pass over the live runs (ready and waiting depth,
  the oldest ready run, runs by status, busy workers) are sampled on the loop
  thread at the live view's cadence (``Metrics.sample_gauges``, at most once
  a second; every 5 s on a state of 20 000 runs or more) and kept as one
  immutable ``Gauges``: a scrape never takes the state lock.
* **Archive gauges** (rows, bytes, dead letters archived) are read by the
  scraper itself from ``archive.sqlite3`` (read-only), never on the loop.

``sample()`` puts them together as a ``Sample``; ``metrics_text.render``
turns a sample into the Prometheus text format. The supervisor also writes
its sample to ``STATE/metrics.json`` once a second (atomic rename, not
fsynced): ``journaled metrics --once`` reads it while a supervisor runs and
recomputes the gauges from the journal and the archive when none does.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections import deque
from pathlib import Path
from typing import Any, Iterable

import msgspec

from .live import replace_best_effort
from .records import AttemptFailed, Leased, Released, StepDone, Submitted, Terminated

METRICS_FILE = "metrics.json"

# Upper bounds (seconds, or steps); +Inf is implied.
STEP_BOUNDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
               60.0, 300.0, 900.0)
SYNC_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
               1.0)
BATCH_BOUNDS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)

# How a step's lease closed (journaled_steps_finished_total{outcome}).
OUTCOMES = ("continue", "succeeded", "failed", "cancelled", "retried", "abandoned",
            "interrupted", "released")
STATUSES = ("pending", "running", "waiting", "succeeded", "failed", "cancelled")
FAIL_KINDS = ("error", "timeout", "worker_died", "fail")

GAUGE_EVERY = 1.0  # seconds between gauge samples (and metrics.json writes)
BIG_STATE = 20_000  # runs: from here on, sample every BIG_EVERY seconds
BIG_EVERY = 5.0
BUSY_SAMPLES = 10  # the busy ratio is the mean over this many samples


class Histogram:
    """Fixed buckets; one writer thread, any number of readers (they copy)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le is inclusive
        self.sum += value

    def snapshot(self) -> HistogramSample:
        counts = list(self.counts)  # one atomic copy: _count is derived from it
        return HistogramSample(list(self.bounds), counts, self.sum)


class HistogramSample(msgspec.Struct):
    bounds: list[float]
    counts: list[int]  # per bucket, the last one +Inf
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)


class Gauges(msgspec.Struct):
    """What a pass over the live state says, sampled on the loop thread."""

    at: float = 0.0
    runs: dict[str, int] = {}
    ready: int = 0
    waiting: int = 0
    in_flight: int = 0
    oldest_ready_age: float = 0.0
    workers: int = 0
    busy_ratio: float = 0.0
    compactions: int = 0
    journal_bytes: int = 0


class ArchiveGauges(msgspec.Struct):
    rows: int = 0
    bytes: int = 0
    dead: int = 0


class Sample(msgspec.Struct):
    """Everything one scrape shows (also the shape of ``STATE/metrics.json``)."""

    up: bool
    pid: int
    at: float
    gauges: Gauges
    archive: ArchiveGauges
    dead_live: int = 0  # dead-lettered runs still in the journal
    submitted: int = 0
    started: int = 0
    finished: dict[str, int] = {}
    failed: dict[str, int] = {}
    ended: dict[str, int] = {}
    dead_letters: int = 0  # counter: dead letters made since the supervisor started
    syncs: int = 0
    step_seconds: HistogramSample | None = None
    sync_seconds: HistogramSample | None = None
    steps_per_sync: HistogramSample | None = None


def depths(runs: Iterable[Any], now: float) -> tuple[int, int, int, float, int]:
    """``(ready, waiting, in_flight, oldest ready age, dead)`` over live runs (pure).

    Ready: may be leased now (not leased, not finished, no pending cancel,
    not delayed). Waiting: delayed by a retry back-off or ``ContinueAfter``, or
    parked on a signal. A ready run's age counts from when it became ready
    (submitted, its last attempt ended, or its delay ran out).
    """
    ready = waiting = flying = dead = 0
    oldest = now
    for r in runs:
        status = r.status
        if status in ("succeeded", "failed", "cancelled"):
            dead += r.dead
            continue
        if r.leased:
            flying += 1
            continue
        if r.cancel_reason is not None:
            continue
        if status == "waiting" and (r.due_at > now or (r.wait_key and r.woken is None)):
            waiting += 1
            continue
        ready += 1
        since = r.submitted_at
        if r.due_at > since:
            since = r.due_at
        h = r.history
        if h and h[-1][4] is not None and h[-1][4] > since:
            since = h[-1][4]
        if since < oldest:
            oldest = since
    return ready, waiting, flying, (now - oldest) if ready else 0.0, dead


class Metrics:
    """The supervisor's counters (see the module doc for who writes what)."""

    def __init__(self) -> None:
        self.submitted = 0
        self.started = 0
        self.finished = dict.fromkeys(OUTCOMES, 0)
        self.failed = dict.fromkeys(FAIL_KINDS, 0)
        self.ended = dict.fromkeys(("succeeded", "failed", "cancelled"), 0)
        self.dead_letters = 0
        self.step_seconds = Histogram(STEP_BOUNDS)
        self.sync_seconds = Histogram(SYNC_BOUNDS)
        self.steps_per_sync = Histogram(BATCH_BOUNDS)
        self._open: dict[str, float] = {}  # run id -> its lease's time (one lease per run)
        self._closed = 0  # leases closed with an outcome (for steps per sync)
        self._closed_mark = 0
        self.gauges = Gauges()
        self.dead_live = 0
        self._gauges_due = 0.0
        self._busy: deque[float] = deque(maxlen=BUSY_SAMPLES)
        self._written_due = 0.0

    # ------------------------------------------------------ the loop thread

    def observe(self, recs: list[Any]) -> None:
        """Fold one durable turn's records into the counters (the loop thread only).

        Written for speed (locals, no calls on the common path): it runs for
        every record the loop writes.
        """
        open_ = self._open
        finished = self.finished
        hist = self.step_seconds
        bounds, counts = hist.bounds, hist.counts
        closed = 0
        dsum = 0.0
        for rec in recs:
            t = type(rec)
            if t is Leased:
                self.started += 1
                open_[rec.run_id] = rec.at
                continue
            if t is StepDone:
                outcome = "continue"
            elif t is Terminated:
                outcome = rec.status
                self.ended[outcome] = self.ended.get(outcome, 0) + 1
                if rec.dead:
                    self.dead_letters += 1
                if rec.run_id not in open_:
                    continue  # ended with no step running (a cancel while queued)
                if outcome == "failed":
                    kind = rec.kind or "error"
                    self.failed[kind] = self.failed.get(kind, 0) + 1
            elif t is AttemptFailed:
                outcome = "retried"
                self.failed[rec.kind] = self.failed.get(rec.kind, 0) + 1
            elif t is Released:
                if not rec.started:
                    if open_.pop(rec.run_id, None) is not None:
                        finished["released"] += 1
                    continue
                outcome = "interrupted" if rec.shutdown else "abandoned"
            elif t is Submitted:
                self.submitted += 1
                continue
            else:
                continue
            # A lease closed with an outcome: count it, time it.
            finished[outcome] = finished.get(outcome, 0) + 1
            closed += 1
            start = open_.pop(rec.run_id, None)
            if start is not None:
                d = rec.at - start
                if d < 0.0:
                    d = 0.0
                counts[bisect_left(bounds, d)] += 1
                dsum += d
        if closed:
            self._closed += closed
            hist.sum += dsum

    def acted(self) -> None:
        """A sync's turns were acted on: how many step outcomes it made durable."""
        n = self._closed - self._closed_mark
        self._closed_mark = self._closed
        self.steps_per_sync.observe(float(n))

    def gauges_due(self, mono: float) -> bool:
        return mono >= self._gauges_due

    def sample_gauges(self, mono: float, state: Any, counts: dict[str, int], workers: int,
                      busy: int, compactions: int, journal_bytes: int) -> Gauges:
        """One pass over the live runs (the loop thread, at most every ``GAUGE_EVERY`` s)."""
        runs = state.runs
        self._gauges_due = mono + (BIG_EVERY if len(runs) >= BIG_STATE else GAUGE_EVERY)
        now = time.time()
        ready, waiting, flying, oldest, dead = depths(runs.values(), now)
        self._busy.append(busy / workers if workers else 0.0)
        g = Gauges(now, dict(counts), ready, waiting, flying, oldest, workers,
                   sum(self._busy) / len(self._busy), compactions, journal_bytes)
        self.gauges, self.dead_live = g, dead  # one reference swap: readers see one or the other
        return g

    # ------------------------------------------------ the flusher thread

    def observe_sync(self, seconds: float) -> None:
        self.sync_seconds.observe(seconds)

    # --------------------------------------------------------- any thread

    def sample(self, archive: ArchiveGauges | None = None, syncs: int = 0) -> Sample:
        """Everything now, as one ``Sample`` (copies: safe while the loop goes on)."""
        return Sample(True, os.getpid(), time.time(), self.gauges, archive or ArchiveGauges(),
                      self.dead_live, self.submitted, self.started, dict(self.finished),
                      dict(self.failed), dict(self.ended), self.dead_letters, syncs,
                      self.step_seconds.snapshot(), self.sync_seconds.snapshot(),
                      self.steps_per_sync.snapshot())

    def write_due(self, mono: float) -> bool:
        if mono < self._written_due:
            return False
        self._written_due = mono + GAUGE_EVERY
        return True


# ---------------------------------------------------------------- files

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Sample)


def write_sample(state_dir: Path, sample: Sample) -> None:
    """``STATE/metrics.json``, replaced atomically; best effort (never fsynced)."""
    replace_best_effort(Path(state_dir) / METRICS_FILE, _enc.encode(sample))


def read_sample(state_dir: Path) -> Sample | None:
    try:
        return _dec.decode((Path(state_dir) / METRICS_FILE).read_bytes())
    except (OSError, msgspec.DecodeError):
        return None


def archive_gauges(state_dir: Path, reader: Any = None) -> ArchiveGauges:
    """Rows, bytes on disk and dead letters of ``archive.sqlite3`` (read-only; not the loop).

    ``reader``: a ``CachedReader`` to reuse (one connection per scraper).
    """
    from .archive import ARCHIVE_NAME, CachedReader

    path = Path(state_dir) / ARCHIVE_NAME
    size = 0
    for suffix in ("", "-wal"):
        try:
            size += os.stat(f"{path}{suffix}").st_size
        except OSError:
            pass
    if not size:
        return ArchiveGauges()
    reader = reader or CachedReader(state_dir)
    try:
        counts = reader.call("count") or {}
        dead = reader.call("count_dead") or 0
    except Exception:  # noqa: BLE001 - a scrape shows what it can; the archive may be busy
        counts, dead = {}, 0
    return ArchiveGauges(sum(counts.values()), size, dead)


def run_counts(state: Any, archive: Any) -> dict[str, int]:
    """Runs by status in the journal's fold plus the archive, each run once."""
    counts = dict.fromkeys(STATUSES, 0)
    for run in state.runs.values():
        counts[run.status] = counts.get(run.status, 0) + 1
    ended = [rid for rid, r in state.runs.items() if r.terminal]
    for status, n in (archive.call("count_besides", ended) or {}).items():
        counts[status] = counts.get(status, 0) + n
    return counts


def read_counts(client: Any) -> tuple[dict[str, int], int]:
    """Runs by status as a reader sees them (journal, archive, inbox), and how many
    wait in the inbox; for readers only (``metrics --once``, the dashboard)."""
    from .inbox import pending_submissions

    state = client.refresh()
    counts = run_counts(state, client._archive)
    pending = sum(1 for rid in pending_submissions(client.state_dir) if rid not in state.runs)
    counts["pending"] += pending
    return counts, pending


def offline_sample(state_dir: Path, client: Any = None) -> Sample:
    """The sample with no supervisor running: gauges from the journal and the archive.

    Counters come from the last supervisor's ``metrics.json`` (as it stopped),
    zero when there is none; ``up`` is False.
    """
    from .client import Client

    client = client or Client(state_dir, use_socket=False)
    counts, pending = read_counts(client)
    state = client.state
    now = time.time()
    ready, waiting, flying, oldest, dead = depths(state.runs.values(), now)
    g = Gauges(now, counts, ready + pending, waiting, flying, oldest, 0, 0.0, 0,
               _journal_bytes(state_dir))
    last = read_sample(state_dir)
    arch = archive_gauges(state_dir, client._archive)
    if last is None:
        return Sample(False, 0, now, g, arch, dead)
    return Sample(False, 0, now, msgspec.structs.replace(g, compactions=last.gauges.compactions),
                  arch, dead, last.submitted, last.started, last.finished, last.failed,
                  last.ended, last.dead_letters, last.syncs, last.step_seconds,
                  last.sync_seconds, last.steps_per_sync)


def _journal_bytes(state_dir: Path) -> int:
    from .journal.mark import data_bytes

    return data_bytes(Path(state_dir) / "journal")
