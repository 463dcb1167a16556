"""Durable no-op step transitions per second, against non-durable pools, in one run.

Each journaled step is leased and completed in the journal, fdatasync'd
before the supervisor acts on it. Baselines: ``multiprocessing.Pool(N).map``
with ``chunksize=1`` and ``ProcessPoolExecutor.map``, measured right here so
the ratio is meaningful on a shared, noisy machine.

    python benchmarks/transitions.py [--quick] [--workers 2] [--runs N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import apps  # noqa: E402
from benchmarks._table import emit  # noqa: E402
from benchmarks.baseline import bare_pool_rate, process_pool_executor_rate  # noqa: E402
from journaled import Runtime  # noqa: E402


def journaled_rate(runner, runs: int, steps_per_run: int, workers: int) -> dict:  # type: ignore[no-untyped-def]
    """Submit ``runs`` runs at once; time until the last terminal outcome is durable."""
    tmp = Path(tempfile.mkdtemp(prefix="jbench-"))
    try:
        with Runtime(tmp / "state", runner, workers=workers) as rt:
            sup = rt.supervisor
            warm = rt.submit_many([b"warm"] * (workers * 4))  # start workers, fill caches
            for rid in warm:
                rt.wait(rid, 60)
            base = sup.finished_total  # outcomes forgets archived runs
            syncs0 = sup.journal.syncs
            t0 = time.perf_counter()
            rt.submit_many([b""] * runs)
            # Durable outcomes only; woken by each commit that adds some.
            with sup.cond:
                while sup.finished_total < base + runs:
                    sup.cond.wait(1.0)
            dt = time.perf_counter() - t0
            syncs = sup.journal.syncs - syncs0
        steps = runs * steps_per_run
        return {"steps_per_s": steps / dt, "seconds": dt, "steps": steps,
                "syncs": syncs, "steps_per_sync": steps / max(1, syncs)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small counts (a few seconds)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=0, help="1-step runs to time")
    args = ap.parse_args()
    n = args.runs or (5_000 if args.quick else 50_000)
    w = args.workers
    pool = bare_pool_rate(n, w)
    ppe = process_pool_executor_rate(max(1000, n // 10), w)
    one = journaled_rate(apps.noop, n, 1, w)
    ten = journaled_rate(apps.ten_steps, max(1, n // 10), 10, w)
    rows = [
        {"what": "multiprocessing.Pool.map chunksize=1", "tasks_per_s": pool, "ratio": 1.0,
         "durable": False},
        {"what": "ProcessPoolExecutor.map", "tasks_per_s": ppe, "ratio": ppe / pool,
         "durable": False},
        {"what": "journaled 1-step runs", "tasks_per_s": one["steps_per_s"],
         "ratio": one["steps_per_s"] / pool, "durable": True,
         "steps_per_sync": one["steps_per_sync"]},
        {"what": "journaled 10-step runs", "tasks_per_s": ten["steps_per_s"],
         "ratio": ten["steps_per_s"] / pool, "durable": True,
         "steps_per_sync": ten["steps_per_sync"]},
    ]
    emit(rows, ["what", "tasks_per_s", "ratio", "durable", "steps_per_sync"],
         f"no-op step transitions per second, {w} workers, {n} tasks")


if __name__ == "__main__":
    main()
