"""What the metrics cost the supervisor's loop, beside what the loop already pays.

Usage::

    python benchmarks/metrics_cost.py [--quick] [--runs N]

One record stream of N two-step runs (Submitted, Leased, StepDone, Leased,
Terminated per run; every 10th fails into a dead letter) is folded four
ways, in the same process, one after the other:

* ``State.apply_all``: the fold the loop does anyway (the baseline);
* ``Metrics.observe``: journaled's counters and step-duration histogram;
* the same counters with ``prometheus_client`` (labels resolved once, as a
  careful user would), when it is installed: why journaled writes the text
  format itself;
* a bare ``type(rec)`` loop: the floor of any per-record hook.

Then the gauge pass (``depths`` over N live runs, once a second on the loop)
and one scrape's ``render``. Numbers only, never asserted (a shared machine).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._table import emit  # noqa: E402
from journaled.metrics import Metrics, depths  # noqa: E402
from journaled.metrics_text import render  # noqa: E402
from journaled.records import Leased, StepDone, Submitted, Terminated  # noqa: E402
from journaled.state import State  # noqa: E402


def stream(n: int) -> list:
    recs: list = []
    t = 1_000_000.0
    for i in range(n):
        rid = f"r{i}"
        recs.append(Submitted(rid, b"x", t))
        recs.append(Leased(rid, 0, 1, i % 4, t + 0.001))
        recs.append(StepDone(rid, 0, 1, b"y", t + 0.002))
        recs.append(Leased(rid, 1, 1, i % 4, t + 0.003))
        if i % 10 == 9:
            recs.append(Terminated(rid, "failed", t + 0.004, 1, 1, None, "boom", True,
                                   kind="error"))
        else:
            recs.append(Terminated(rid, "succeeded", t + 0.004, 1, 1, b"z"))
        t += 0.01
    return recs


def best(fn, repeat: int) -> float:
    out = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t0)
    return out


def prometheus_fold():  # -> a callable folding records into prometheus_client metrics
    try:
        import prometheus_client as pc
    except ImportError:
        return None
    reg = pc.CollectorRegistry()
    started = pc.Counter("steps_started", "", registry=reg)
    finished = pc.Counter("steps_finished", "", ["outcome"], registry=reg)
    dur = pc.Histogram("step_duration_seconds", "", registry=reg)
    submitted = pc.Counter("submitted", "", registry=reg)
    by = {o: finished.labels(o) for o in ("continue", "succeeded", "failed")}
    open_: dict[str, float] = {}

    def fold(recs: list) -> None:
        for rec in recs:
            t = type(rec)
            if t is Leased:
                started.inc()
                open_[rec.run_id] = rec.at
            elif t is StepDone or t is Terminated:
                by["continue" if t is StepDone else rec.status].inc()
                start = open_.pop(rec.run_id, None)
                if start is not None:
                    dur.observe(rec.at - start)
            elif t is Submitted:
                submitted.inc()

    return fold


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20k runs instead of 200k")
    ap.add_argument("--runs", type=int, default=0)
    args = ap.parse_args()
    n = args.runs or (20_000 if args.quick else 200_000)
    repeat = 3 if args.quick else 5
    recs = stream(n)
    per = len(recs)

    def floor() -> None:
        for rec in recs:
            type(rec)

    rows = []
    base = best(lambda: State().apply_all(recs), repeat)
    rows.append({"what": "State.apply_all (the loop's fold, baseline)", "records": per,
                 "ns_per_record": base / per * 1e9, "vs_fold": 1.0})
    cost = best(lambda: Metrics().observe(recs), repeat)
    rows.append({"what": "Metrics.observe (journaled)", "records": per,
                 "ns_per_record": cost / per * 1e9, "vs_fold": cost / base})
    pfold = prometheus_fold()
    if pfold is not None:
        pc = best(lambda: prometheus_fold()(recs), repeat)  # type: ignore[misc]
        rows.append({"what": "prometheus_client counters", "records": per,
                     "ns_per_record": pc / per * 1e9, "vs_fold": pc / base})
    fl = best(floor, repeat)
    rows.append({"what": "bare type(rec) loop (floor)", "records": per,
                 "ns_per_record": fl / per * 1e9, "vs_fold": fl / base})
    live = State()
    live.apply_all([r for r in recs if type(r) is Submitted])
    g = best(lambda: depths(live.runs.values(), time.time()), repeat)
    rows.append({"what": f"gauge pass: depths() over {n:,} live runs (once a second)",
                 "records": n, "ns_per_record": g / n * 1e9, "vs_fold": float("nan")})
    m = Metrics()
    m.observe(recs)
    sample = m.sample()
    r = best(lambda: render(sample), repeat * 20)
    rows.append({"what": "one scrape: render()", "records": 1, "ns_per_record": r * 1e9,
                 "vs_fold": float("nan")})
    emit(rows, ["what", "records", "ns_per_record", "vs_fold"],
         f"metrics cost on the loop thread (best of {repeat})")


if __name__ == "__main__":
    main()
