"""CPU-bound steps on N workers: speed-up over running the same steps inline.

Each step is a fixed amount of pure-Python work (``apps.spin``, calibrated
here to about ``--ms`` milliseconds), not a wall-clock wait, so two
processes sharing a core really do take twice as long. The serial baseline
runs all K steps inline in this process; then the same K steps go through
``journaled.Runtime(workers=N)`` (as K one-step runs, and as K/S runs of S
steps) and through a bare ``multiprocessing.Pool(N).map(chunksize=1)``
for N = 1 .. nproc. ``speedup = serial / elapsed`` and
``efficiency = speedup / N`` (issue 5's target: >= 95 %). ``vs_pool`` is
the step rate over the bare pool's at the same N, measured back to back:
on a shared machine it is the steadier number (load from elsewhere slows
both alike), while the speed-up needs N otherwise idle cores.
``busy_frac`` is the time the workers spent inside steps (timed by the
steps themselves) over N x the wall time: what is left is dispatch,
journal syncs and idle workers, journaled's own share.

Worker start-up is excluded everywhere: pools and runtimes are warmed
before the clock starts.

    python benchmarks/cpu_scaling.py [--quick] [--ms 50] [--steps K] [--max-workers N] [--reps R]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import apps  # noqa: E402
from benchmarks._table import emit  # noqa: E402
from journaled import Runtime  # noqa: E402


def calibrate(ms: float) -> int:
    """Iterations of ``apps.spin`` that take about ``ms`` milliseconds here (best of 5)."""
    n = 20_000
    while True:
        t0 = time.perf_counter()
        apps.spin(n)
        dt = time.perf_counter() - t0
        if dt > 0.02:
            break
        n *= 2
    best = min(_timed(apps.spin, n) for _ in range(5))
    return max(1, int(n * (ms / 1000) / best))


def _timed(fn, *args) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def serial(iterations: int, k: int) -> float:
    """Seconds to run ``k`` steps inline in this process."""
    t0 = time.perf_counter()
    for _ in range(k):
        apps.spin(iterations)
    return time.perf_counter() - t0


def bare_pool(iterations: int, k: int, workers: int) -> dict:
    """Seconds for ``Pool(workers).map(spin, ..., chunksize=1)``, pool start excluded."""
    with multiprocessing.get_context("forkserver").Pool(workers) as pool:
        pool.map(apps.spin, [1000] * (2 * workers), chunksize=1)
        t0 = time.perf_counter()
        busy = pool.map(apps.spin_timed, [iterations] * k, chunksize=1)
        return {"seconds": time.perf_counter() - t0, "steps": k, "busy": sum(busy)}


def journaled_run(iterations: int, k: int, steps_per_run: int, workers: int) -> dict:
    """Seconds for ``k`` steps as ``k / steps_per_run`` runs through a Runtime."""
    tmp = Path(tempfile.mkdtemp(prefix="jbench-cpu-"))
    runs = max(1, k // steps_per_run)
    payload = f"{iterations}:{steps_per_run}".encode()
    try:
        with Runtime(tmp / "state", apps.spin_steps, workers=workers) as rt:
            sup = rt.supervisor
            # Warm-up: every worker started and has run a (tiny) step.
            for rid in rt.submit_many([b"1000:1"] * (2 * workers)):
                rt.wait(rid, 60)
            syncs0 = sup.journal.syncs
            t0 = time.perf_counter()
            ids = rt.submit_many([payload] * runs)
            busy = 0.0
            for rid in ids:
                out = rt.wait(rid, 600)
                if out.status.value != "succeeded":
                    raise RuntimeError(f"run {rid} ended {out.status.value}: {out.error}")
                busy += float(out.result or b"0")
            dt = time.perf_counter() - t0
            syncs = sup.journal.syncs - syncs0
        return {"seconds": dt, "steps": runs * steps_per_run, "syncs": syncs, "busy": busy}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~20 ms steps, fewer of them")
    ap.add_argument("--ms", type=float, default=0, help="milliseconds of work per step")
    ap.add_argument("--steps", type=int, default=0, help="steps K per measurement")
    ap.add_argument("--steps-per-run", type=int, default=5, help="S for the multi-step runs")
    ap.add_argument("--max-workers", type=int, default=0, help="largest N (default: nproc)")
    ap.add_argument("--reps", type=int, default=0,
                    help="repeat each measurement, keep the best (noisy shared machine)")
    args = ap.parse_args()
    ms = args.ms or (20 if args.quick else 50)
    k = args.steps or (24 if args.quick else 120)
    s = max(1, args.steps_per_run)
    reps = args.reps or (1 if args.quick else 3)
    top = args.max_workers or usable_cpus()
    load0 = loadavg()
    its = calibrate(ms)

    # Best of ``reps`` for everything, the serial baseline measured between the
    # others so that a burst of load elsewhere hits both sides alike.
    serial_times: list[float] = []
    best: dict[tuple[str, int], dict] = {}

    def keep(what: str, n: int, m: dict) -> None:
        cur = best.get((what, n))
        if cur is None or m["seconds"] < cur["seconds"]:
            # busy_frac: time the N workers spent inside steps / (N x wall time); the
            # rest is dispatch, journal and idle time. Load from elsewhere slows the
            # steps themselves, so this stays meaningful on a busy machine.
            best[(what, n)] = {"what": what, "workers": n, "steps": m["steps"],
                               "seconds": m["seconds"],
                               "busy_frac": m["busy"] / (n * m["seconds"]),
                               **({"syncs": m["syncs"]} if "syncs" in m else {})}

    multi_name = f"journaled {s}-step runs"
    pool_name = "multiprocessing.Pool.map chunksize=1"
    for _ in range(reps):
        serial_times.append(serial(its, k))
        for n in range(1, top + 1):
            keep("journaled 1-step runs", n, journaled_run(its, k, 1, n))
            keep(multi_name, n, journaled_run(its, k, s, n))
            keep(pool_name, n, bare_pool(its, k, n))
            serial_times.append(serial(its, k))
    base = min(serial_times)
    rows = [{"what": "inline (serial baseline)", "workers": 0, "steps": k, "seconds": base,
             "ms_per_step": 1000 * base / k, "speedup": 1.0, "efficiency": float("nan")}]
    for n in range(1, top + 1):
        pool = best[(pool_name, n)]
        for what in ("journaled 1-step runs", multi_name, pool_name):
            r = best[(what, n)]
            sp = base * r["steps"] / k / r["seconds"]  # baseline scaled to the steps run
            # vs_pool: step rate relative to the bare pool at the same N, measured
            # back to back; less sensitive to load from elsewhere than the speed-up.
            vs = (pool["seconds"] / pool["steps"]) / (r["seconds"] / r["steps"])
            rows.append({**r, "ms_per_step": 1000 * r["seconds"] / r["steps"], "speedup": sp,
                         "efficiency": sp / n, "vs_pool": vs})
    worst = max(serial_times)
    rows.append({"what": "inline, worst repeat (noise)", "workers": 0, "steps": k,
                 "seconds": worst, "ms_per_step": 1000 * worst / k, "speedup": base / worst,
                 "efficiency": float("nan")})
    emit(rows, ["what", "workers", "steps", "seconds", "ms_per_step", "speedup", "efficiency",
                "vs_pool", "busy_frac", "syncs"],
         f"CPU-bound steps (~{ms:g} ms of pure Python each, {its:,} iterations), best of "
         f"{reps}, speed-up over inline; target efficiency >= 0.95 "
         f"(load average {load0:.2f} -> {loadavg():.2f})")


if __name__ == "__main__":
    main()
