"""A metrics ``Sample`` in the Prometheus text exposition format (version 0.0.4).

Written by hand rather than with ``prometheus_client``: the format is a few
lines per family, and the library's counters take a lock on every
``inc()``, which the loop would pay per step (see ``journaled.metrics``).
``CONTENT_TYPE`` is what a scrape answers with.
"""

from __future__ import annotations

import math

from .metrics import STATUSES, HistogramSample, Sample

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
P = "journaled_"


def _num(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return repr(float(v))


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help: str) -> None:
        self.lines.append(f"# HELP {P}{name} {help}")
        self.lines.append(f"# TYPE {P}{name} {kind}")

    def value(self, name: str, v: float, **labels: str) -> None:
        if labels:
            inner = ",".join(f'{k}="{_label(str(x))}"' for k, x in labels.items())
            self.lines.append(f"{P}{name}{{{inner}}} {_num(v)}")
        else:
            self.lines.append(f"{P}{name} {_num(v)}")

    def one(self, name: str, kind: str, help: str, v: float) -> None:
        self.family(name, kind, help)
        self.value(name, v)

    def labelled(self, name: str, kind: str, help: str, label: str,
                 values: dict[str, int]) -> None:
        self.family(name, kind, help)
        for k in sorted(values):
            self.value(name, values[k], **{label: k})

    def histogram(self, name: str, help: str, h: HistogramSample | None) -> None:
        self.family(name, "histogram", help)
        if h is None:
            h = HistogramSample([], [0], 0.0)
        total = 0
        for bound, n in zip(h.bounds, h.counts[:len(h.bounds)], strict=True):
            total += n
            self.value(f"{name}_bucket", total, le=_num(float(bound)))
        total += h.counts[-1] if len(h.counts) > len(h.bounds) else 0
        self.value(f"{name}_bucket", total, le="+Inf")
        self.value(f"{name}_sum", h.sum)
        self.value(f"{name}_count", total)


def render(s: Sample) -> str:
    """The whole scrape; families in a fixed order, label values sorted."""
    g = s.gauges
    a = s.archive
    o = _Out()
    o.one("up", "gauge", "1 while a supervisor serves this state directory, 0 when read "
          "offline (counters are then the last supervisor's).", 1 if s.up else 0)
    runs = {k: g.runs.get(k, 0) for k in STATUSES}
    for k, v in g.runs.items():
        runs.setdefault(k, v)
    o.labelled("runs", "gauge", "Runs by status, live and archived.", "status", runs)
    o.one("ready_runs", "gauge", "Runs whose next step may be leased now (ready depth).",
          g.ready)
    o.one("waiting_runs", "gauge", "Runs delayed by a back-off or ContinueAfter, or parked "
          "on a signal (waiting depth).", g.waiting)
    o.one("in_flight_steps", "gauge", "Steps leased to a worker and not yet finished.",
          g.in_flight)
    o.one("oldest_ready_age_seconds", "gauge", "How long the longest-ready run has been "
          "ready without a worker (0 when none is ready).", g.oldest_ready_age)
    o.one("runs_submitted_total", "counter", "Runs journaled as submitted.", s.submitted)
    o.labelled("runs_ended_total", "counter", "Runs that reached a terminal status.",
               "status", s.ended)
    o.one("steps_started_total", "counter", "Steps leased to a worker.", s.started)
    o.labelled("steps_finished_total", "counter", "Leases closed, by outcome: continue, "
               "succeeded, failed, cancelled (the run's verdict), retried (a failed attempt), "
               "abandoned (the worker died holding it), interrupted (cut at shutdown), "
               "released (taken back unstarted).", "outcome", s.finished)
    o.labelled("steps_failed_total", "counter", "Failed attempts by kind: error, timeout, "
               "worker_died, fail (the runner's verdict).", "kind", s.failed)
    o.histogram("step_duration_seconds", "Seconds from a step's lease to its journaled "
                "outcome.", s.step_seconds)
    o.histogram("sync_latency_seconds", "Seconds one journal fdatasync took.", s.sync_seconds)
    o.histogram("steps_per_sync", "Step outcomes made durable by one group commit.",
                s.steps_per_sync)
    o.one("journal_syncs_total", "counter", "fdatasync calls on the journal.", s.syncs)
    o.one("workers", "gauge", "Worker slots.", g.workers)
    o.one("worker_busy_ratio", "gauge", "Share of worker slots running a step (mean of "
          "the last 10 samples, one a second).", g.busy_ratio)
    o.one("dead_letters", "gauge", "Runs dead-lettered now (live and archived): "
          "'journaled dead' lists them.", s.dead_live + a.dead)
    o.one("dead_letters_total", "counter", "Steps dead-lettered since the supervisor "
          "started.", s.dead_letters)
    o.one("compactions_total", "counter", "Journal compactions since the supervisor started.",
          g.compactions)
    o.one("journal_bytes", "gauge", "Bytes in the journal's segments.", g.journal_bytes)
    o.one("archive_rows", "gauge", "Finished runs in archive.sqlite3.", a.rows)
    o.one("archive_bytes", "gauge", "Bytes of archive.sqlite3 and its WAL.", a.bytes)
    return "\n".join(o.lines) + "\n"


def as_json(s: Sample) -> dict:
    """A flat ``{name{labels}: value}`` view, for ``metrics --once --json``."""
    out: dict[str, float] = {}
    for line in render(s).splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value) if value not in ("+Inf", "-Inf", "NaN") else \
                float(value.replace("+", ""))
    return out
