"""BLAS thread caps: a numpy step on 2 workers, capped to one thread each vs left alone.

Without a cap every worker's OpenBLAS starts one thread per CPU, so W
workers on C cores run W x C threads that fight over the cores (dask/
distributed #7177). journaled caps each worker to one (``--threads-per-
worker 1``, the default). The same K runs (each ``reps`` products of two
``n`` x ``n`` matrices) go through a ``Runtime(workers=2)`` with
``threads_per_worker=1`` (capped) and ``threads_per_worker=0`` (left
alone), each configuration in a fresh child process (its own forkserver,
which loads numpy before the workers fork, as in production), alternated
over ``--reps`` rounds so load from elsewhere hits both alike. Reported:
runs/s per configuration (best round), the BLAS pool size a worker
really had (read with threadpoolctl; -1 without it) and ``speedup`` = capped runs/s over
uncapped runs/s, measured in the same invocation.

    python benchmarks/thread_cap.py [--quick] [--n 1500] [--reps-per-step 3] [--runs 12] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._table import emit  # noqa: E402


def one(threads: int, n: int, reps: int, runs: int, workers: int) -> dict:
    """In this (child) process: ``runs`` runs through a Runtime; seconds and BLAS threads."""
    from benchmarks import _numpy_step
    from journaled import Runtime

    tmp = tempfile.mkdtemp(prefix="journaled-bench-threads-")
    try:
        with Runtime(Path(tmp) / "state", _numpy_step.matmul, workers=workers,
                     threads_per_worker=threads) as rt:
            warm = rt.submit_many([b"64 1"] * (2 * workers))  # workers up, numpy loaded
            for rid in warm:
                rt.wait(rid, 120)
            t0 = time.perf_counter()
            ids = rt.submit_many([f"{n} {reps}".encode()] * runs)
            for rid in ids:
                out = rt.wait(rid, 600)
                assert out.status.value == "succeeded", out.error
            seconds = time.perf_counter() - t0
        with Runtime(Path(tmp) / "probe", _numpy_step.blas_threads, workers=1,
                     threads_per_worker=threads) as rt:
            out = rt.wait(rt.submit(b""), 120)
        return {"seconds": seconds, "blas_threads": int(out.result or b"-1")}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def child(threads: int, args: argparse.Namespace) -> dict:
    from journaled.pool.hygiene import THREAD_VARS

    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    p = subprocess.run([sys.executable, __file__, "--child", str(threads), "--n", str(args.n),
                        "--reps-per-step", str(args.reps_per_step), "--runs", str(args.runs),
                        "--workers", str(args.workers)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"child (threads={threads}) failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--reps-per-step", type=int, default=3)
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    try:
        import numpy  # noqa: F401
    except ImportError:
        sys.exit(f"{ap.prog} needs numpy: pip install -e '.[arrays]'")
    if args.child is not None:
        print(json.dumps(one(args.child, args.n, args.reps_per_step, args.runs, args.workers)))
        return
    if args.quick:
        args.n, args.reps_per_step, args.runs, args.reps = 300, 2, 4, 1
    best: dict[int, float] = {}
    blas: dict[int, int] = {}
    for _ in range(args.reps):
        for threads in (1, 0):  # alternated: load from elsewhere hits both alike
            got = child(threads, args)
            best[threads] = min(best.get(threads, float("inf")), got["seconds"])
            blas[threads] = got["blas_threads"]
    capped = args.runs / best[1]
    uncapped = args.runs / best[0]
    rows = [
        {"config": "capped (threads_per_worker=1)", "workers": args.workers,
         "blas_threads_per_worker": blas[1], "runs": args.runs, "seconds": best[1],
         "runs_per_s": capped, "speedup": capped / uncapped},
        {"config": "uncapped (threads_per_worker=0)", "workers": args.workers,
         "blas_threads_per_worker": blas[0], "runs": args.runs, "seconds": best[0],
         "runs_per_s": uncapped, "speedup": 1.0},
    ]
    emit(rows, ["config", "workers", "blas_threads_per_worker", "runs", "seconds", "runs_per_s",
                "speedup"],
         f"numpy {args.n}x{args.n} matmul x{args.reps_per_step} per run, {args.workers} workers: "
         "BLAS capped vs uncapped (speedup = capped / uncapped, same invocation)")


if __name__ == "__main__":
    main()
