"""The Dask executor against raw Dask and the local pool, same run: no-op steps/s, CPU speed-up.

A ``distributed.LocalCluster`` with 2 single-threaded worker processes is
started here; the local pool gets 2 workers too. On the same cluster, in the
same run, raw Dask does the same work with one ``client.map`` (no journal,
no attempts, no cancel): the ``*_vs_raw`` columns are journaled's share of
what Dask itself delivers. CPU-bound steps burn pure-Python time, so the
speed-up over running them inline shows how much of the cluster's compute
reaches the steps. Each measurement is repeated (``--repeat``, 1 in
``--quick``) and the median kept, raw and journaled taking turns.

    python benchmarks/dask_executor.py [--quick] [--noops N] [--repeat N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
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


def _raw_noop(_: int) -> bytes:
    return b""


def _time_raw(client, fn, args: list) -> float:  # type: ignore[no-untyped-def]
    """Raw Dask: the same work as one ``client.map``, results gathered."""
    client.gather(client.map(fn, args[:4], pure=False))  # warm
    t0 = time.perf_counter()
    client.gather(client.map(fn, args, pure=False))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one repeat (CI shape check)")
    ap.add_argument("--noops", type=int, default=0, help="no-op runs per measurement")
    ap.add_argument("--repeat", type=int, default=0, help="measurements per cell (median kept)")
    args = ap.parse_args()
    try:
        import distributed  # noqa: F401
    except ImportError:
        sys.exit(f"{ap.prog} needs distributed: pip install -e '.[dask]'")
    from distributed import Client, LocalCluster

    noops = args.noops or (100 if args.quick else 1000)
    repeat = args.repeat or (1 if args.quick else 3)
    cpu_steps, ms = (8, 100) if args.quick else (40, 100)
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=50)
    dask = "dask://" + cluster.scheduler_address
    client = Client(cluster.scheduler_address, set_as_default=False)
    noop_s: dict[str, list[float]] = {"local pool": [], "dask raw client.map": [],
                                      "journaled on dask": []}
    cpu_s: dict[str, list[float]] = {k: [] for k in noop_s}
    try:
        t0 = time.perf_counter()
        for _ in range(cpu_steps):
            apps.burn(ms / 1000)
        inline = time.perf_counter() - t0
        for _ in range(repeat):
            noop_s["dask raw client.map"].append(_time_raw(client, _raw_noop, list(range(noops))))
            noop_s["journaled on dask"].append(_time_runs(apps.noop, dask, [b""] * noops))
            cpu_s["dask raw client.map"].append(_time_raw(client, apps.burn,
                                                          [ms / 1000] * cpu_steps))
            cpu_s["journaled on dask"].append(_time_runs(apps.cpu_step, dask,
                                                         [str(ms).encode()] * cpu_steps))
        noop_s["local pool"].append(_time_runs(apps.noop, "local", [b""] * noops))
        cpu_s["local pool"].append(_time_runs(apps.cpu_step, "local",
                                              [str(ms).encode()] * cpu_steps))
    finally:
        client.close()
        cluster.close()
    rows = []
    for name in noop_s:
        rate = noops / statistics.median(noop_s[name])
        speedup = inline / statistics.median(cpu_s[name])
        rows.append({"executor": name, "noop_steps_per_s": rate, "cpu_speedup": speedup,
                     "cpu_efficiency": speedup / 2})
    raw = rows[1]
    for r in rows:
        r["noop_vs_raw"] = r["noop_steps_per_s"] / raw["noop_steps_per_s"]
        r["cpu_vs_raw"] = r["cpu_speedup"] / raw["cpu_speedup"]
    emit(rows, ["executor", "noop_steps_per_s", "noop_vs_raw", "cpu_speedup", "cpu_vs_raw",
                "cpu_efficiency"],
         f"executors, 2 workers each (LocalCluster 2 x 1 thread): {noops} no-op runs; "
         f"{cpu_steps} x {ms} ms CPU steps; median of {repeat}")


if __name__ == "__main__":
    main()
