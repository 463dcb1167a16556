"""Soak: supervisor RSS and journal size over many finished runs, with retention.

R one-step no-op runs go through an in-process supervisor (``Runtime``)
with a short ``retention`` and a low automatic-compaction threshold
(``Supervisor.compact_bytes``; the supervisor checks the journal size
every 4 MB written and compacts past the threshold, dropping runs
finished more than ``retention`` ago). Runs are submitted with
``submit_many`` in batches, two batches in flight so the workers never
starve. Every ``--every`` runs it samples this process's VmRSS (the
supervisor; the driver keeps only the current batch's ids), the workers'
VmRSS, the bytes of ``STATE/journal/*.log`` and the runs held in memory.

Issue 5's target: RSS and journal size flat after warm-up however many
runs finish (stated for 1M runs and the default 7-day retention; a short
retention and threshold here reach the same steady state sooner). The
summary rows give each metric's growth per 100k runs over the second half
of the samples (a least-squares slope) and ``flat``: the peak of the last
quarter of samples is within 10 % of the peak of the third quarter (peaks,
because the journal size is a saw-tooth between compactions).

At ~30k runs/s a retention of seconds already holds tens of thousands of
finished runs; the default 1 s keeps the warm-up (until the first runs
expire and the first compaction drops them) well inside the first half.

    python benchmarks/soak.py [--quick] [--runs 200000] [--retention 1]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import apps  # noqa: E402
from benchmarks._table import emit  # noqa: E402
from benchmarks.cancel_latency import rss_kb  # noqa: E402
from journaled import Runtime  # noqa: E402
from journaled.errors import RunNotFound  # noqa: E402
from journaled.journal.mark import data_bytes  # noqa: E402

METRICS = ["rss_mb", "worker_rss_mb", "journal_mb", "runs_in_memory"]


def journal_bytes(state: Path) -> int:
    """The journal's data: its newest segment's zeros allocated ahead are no growth."""
    return data_bytes(state / "journal")


def workers_rss_kb(sup: Any) -> int:
    """VmRSS summed over the live worker processes (read from this thread, racily)."""
    total = 0
    for w in list(sup.pool.workers) if sup.pool is not None else []:
        try:
            pid = w.proc.pid
        except (AttributeError, ValueError):  # being replaced right now
            continue
        total += rss_kb(pid)
    return total


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs``."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def summarize(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    half = samples[len(samples) // 2:]
    q3 = samples[len(samples) // 2: 3 * len(samples) // 4]
    q4 = samples[3 * len(samples) // 4:]
    growth: dict[str, Any] = {"kind": "growth per 100k runs, 2nd half"}
    flat: dict[str, Any] = {"kind": "flat (q4 peak <= 1.1 x q3 peak)"}
    xs = [s["runs"] for s in half]
    for m in METRICS:
        growth[m] = slope(xs, [s[m] for s in half]) * 100_000
        if q3 and q4:
            p3, p4 = max(s[m] for s in q3), max(s[m] for s in q4)
            flat[m] = "yes" if p4 <= 1.1 * p3 + 1e-9 else f"NO ({p3:.3g} -> {p4:.3g})"
    return [growth, flat]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="40k runs, 0.2 s retention")
    ap.add_argument("--runs", type=int, default=0, help="runs to finish (default 200,000)")
    ap.add_argument("--retention", type=float, default=0, help="seconds (default 1, quick 0.2)")
    ap.add_argument("--compact-mb", type=float, default=4.0, help="auto-compaction threshold")
    ap.add_argument("--batch", type=int, default=2000, help="runs per submit_many")
    ap.add_argument("--every", type=int, default=0, help="sample every N runs (default R/40)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    total = args.runs or (40_000 if args.quick else 200_000)
    retention = args.retention or (0.2 if args.quick else 1.0)
    every = args.every or max(args.batch, total // 40)
    tmp = Path(tempfile.mkdtemp(prefix="jbench-soak-"))
    state = tmp / "state"
    samples: list[dict[str, Any]] = []
    expired = 0
    try:
        rt = Runtime(state, apps.noop, workers=args.workers, retention=retention)
        sup = rt.supervisor
        sup.compact_bytes = int(args.compact_mb * (1 << 20))
        with rt:
            t0 = time.perf_counter()
            inflight: deque[list[str]] = deque()
            submitted = done = 0
            next_sample = every
            while done < total:
                while submitted < total and len(inflight) < 2:
                    k = min(args.batch, total - submitted)
                    inflight.append(rt.submit_many([b""] * k))
                    submitted += k
                batch = inflight.popleft()
                for rid in batch:
                    try:
                        rt.wait(rid, 120)
                    except RunNotFound:  # finished and already dropped by retention
                        expired += 1
                done += len(batch)
                if done >= next_sample or done >= total:
                    next_sample += every
                    wrss = workers_rss_kb(sup)
                    samples.append({
                        "kind": "sample", "runs": done,
                        "seconds": time.perf_counter() - t0,
                        "rss_mb": rss_kb() / 1024, "worker_rss_mb": wrss / 1024,
                        "journal_mb": journal_bytes(state) / 1e6,
                        "runs_in_memory": len(sup.state.runs),
                        "compactions": sup.compactions})
            elapsed = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = samples + summarize(samples)
    emit(rows, ["kind", "runs", "seconds", *METRICS, "compactions"],
         f"soak: {total:,} one-step runs in {elapsed:.1f} s ({total / elapsed:,.0f} runs/s), "
         f"retention {retention:g} s, compaction past {args.compact_mb:g} MB, "
         f"{args.workers} workers; {expired} runs expired before their wait")


if __name__ == "__main__":
    main()
