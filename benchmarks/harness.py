"""How fast ``journaled.testing.Harness`` runs a workflow that waits for hours.

The workload: N runs of three steps, each step ``ContinueAfter`` an hour
(``benchmarks.apps.delayed_steps``). The harness runs it on its fake clock
(``advance(7200)``) with inline workers and with one real worker process.
The baseline, measured in the same run: the same runs through ``Runtime``
(one real worker, fsync on) with the delays set to zero, since real hours
cannot be waited for. ``vs_runtime`` is the harness's speed over that
baseline: how much faster a unit test of the runner is than the embedded
runtime doing the same steps without the waits.

    python benchmarks/harness.py [--quick] [--runs N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import apps  # noqa: E402
from benchmarks._table import emit  # noqa: E402
from journaled import Runtime  # noqa: E402
from journaled.testing import Harness  # noqa: E402

HOUR = 3600.0


def harness(runs: int, workers: int | str) -> dict[str, float]:
    with Harness(apps.delayed_steps, workers=workers) as h:
        t0 = time.perf_counter()
        ids = h.submit_many([b"x"] * runs, {"delay": str(HOUR)})
        h.run_until_idle()
        h.advance(2 * HOUR)
        took = time.perf_counter() - t0
        done = sum(h.status(r).status == "succeeded" for r in ids)
    return {"seconds": took, "done": done, "simulated_s": 2 * HOUR}


def runtime(runs: int) -> dict[str, float]:
    d = tempfile.mkdtemp(prefix="journaled-bench-harness-")
    try:
        with Runtime(d, apps.delayed_steps, workers=1) as rt:
            t0 = time.perf_counter()
            ids = rt.submit_many([b"x"] * runs, {"delay": "0"})
            for rid in ids:
                rt.wait(rid, timeout=300)
            took = time.perf_counter() - t0
            done = sum(rt.status(r).status == "succeeded" for r in ids)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return {"seconds": took, "done": done, "simulated_s": 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few runs, for the shape test")
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    runs = 10 if args.quick else args.runs
    base = runtime(runs)
    rows = [{"what": "Runtime, 1 worker, delays 0 (baseline)", "runs": runs, **base}]
    for what, workers in (("Harness, inline, delays 1 h", "inline"),
                          ("Harness, 1 worker process, delays 1 h", 1)):
        rows.append({"what": what, "runs": runs, **harness(runs, workers)})
    for r in rows:
        r["steps_per_s"] = 3 * runs / r["seconds"] if r["seconds"] else float("nan")
        r["vs_runtime"] = base["seconds"] / r["seconds"] if r["seconds"] else float("nan")
    emit(rows, ["what", "runs", "done", "simulated_s", "seconds", "steps_per_s", "vs_runtime"],
         "Harness: a workflow of hour-long waits, run on the fake clock")


if __name__ == "__main__":
    main()
