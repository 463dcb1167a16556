"""The Dask executor against the local pool, same run: no-op steps/s and CPU speed-up.

A ``distributed.LocalCluster`` with 2 single-threaded worker processes is
started here; the local pool gets 2 workers too. CPU-bound steps burn
pure-Python time, so the speed-up over running them inline shows how much
of the cluster's compute reaches the steps.

    python benchmarks/dask_executor.py [--quick]
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
from journaled import Runtime  # noqa: E402


def _time_runs(runner, executor: str, inputs: list[bytes]) -> float:  # type: ignore[no-untyped-def]
    tmp = Path(tempfile.mkdtemp(prefix="jdask-"))
    try:
        with Runtime(tmp / "s", runner, workers=2, executor=executor) as rt:
            for rid in rt.submit_many([b"1"] * 4):  # warm: workers up, modules imported
                rt.wait(rid, 120)
            t0 = time.perf_counter()
            for rid in rt.submit_many(inputs):
                rt.wait(rid, 600)
            return time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    from distributed import LocalCluster

    noops = 100 if args.quick else 1000
    cpu_steps, ms = (8, 100) if args.quick else (40, 100)
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=50)
    dask = "dask://" + cluster.scheduler_address
    try:
        t0 = time.perf_counter()
        for _ in range(cpu_steps):
            apps.burn(ms / 1000)
        inline = time.perf_counter() - t0
        rows = []
        for name, ex in (("local pool", "local"), ("dask LocalCluster", dask)):
            noop_s = _time_runs(apps.noop, ex, [b""] * noops)
            cpu_s = _time_runs(apps.cpu_step, ex, [str(ms).encode()] * cpu_steps)
            rows.append({"executor": name, "noop_steps_per_s": noops / noop_s,
                         "cpu_speedup": inline / cpu_s, "cpu_efficiency": inline / cpu_s / 2})
    finally:
        cluster.close()
    emit(rows, ["executor", "noop_steps_per_s", "cpu_speedup", "cpu_efficiency"],
         f"executors, 2 workers each: {noops} no-op runs; {cpu_steps} x {ms} ms CPU steps")


if __name__ == "__main__":
    main()
