"""Steps/s and MB/s with payloads of 100 B to 100 MB between steps, against a bare pool.

Each journaled step gets its payload from the previous one and returns
``Continue(b"x" * size)``. Up to the blob threshold (64 KiB) the bytes go
worker -> supervisor -> worker inline and into the fdatasync'd journal;
above it the worker writes them once as a blob (fsynced) and only its
ref travels, the next worker reading the file. The baseline, measured in
the same run, is ``multiprocessing.Pool(N).map(echo, payloads,
chunksize=1)``: the same bytes both ways, nothing durable. ``sup_rss_mb``
is how far the supervisor's (this process's) RSS rose above where it was
before the point: big payloads must not reach it. Issue 11 item 1: no
size may hang; issue 12: <= 50 MB of supervisor growth at 100 MB payloads,
>= 0.5x the pool at 1 MB.

    python benchmarks/payload_sweep.py [--quick] [--workers 2] [--max-mb 100]
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._table import emit  # noqa: E402
from journaled import Continue, Runtime, Step, Succeed  # noqa: E402

# payload bytes -> (runs, steps per run), sized so each point takes a few seconds
POINTS: dict[int, tuple[int, int]] = {
    100: (40, 100),
    4096: (40, 100),
    65536: (40, 50),
    1 << 20: (20, 10),
    8 << 20: (6, 5),
    10 << 20: (4, 5),
    100 << 20: (2, 3),
}


def runner(step: Step) -> object:
    """A chain of ``steps`` steps passing ``size`` bytes along (each one reads what it got)."""
    size, steps = int(step.headers["size"]), int(step.headers["steps"])
    got = len(step.payload)  # a blob is read here, from the page cache: the bytes arrive
    if step.step_number and got != size:
        raise ValueError(f"step {step.step_number} got {got} bytes, expected {size}")
    if step.step_number + 1 >= steps:
        return Succeed(b"")
    return Continue(b"x" * size)


def echo(data: bytes) -> bytes:
    return data


def _rss() -> int:
    """This process's resident set, bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _RssPeak:
    """Samples our RSS every 5 ms on a thread; ``peak`` is the highest seen."""

    def __init__(self) -> None:
        self.peak = _rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return max(self.peak, _rss())


def journaled_point(size: int, runs: int, steps: int, workers: int) -> dict[str, float]:
    from benchmarks import payload_sweep as me  # workers import it by this name

    tmp = Path(tempfile.mkdtemp(prefix="jsweep-"))
    try:
        with Runtime(tmp / "state", me.runner, workers=workers) as rt:
            sup = rt.supervisor
            for rid in rt.submit_many([b""] * workers,
                                      headers={"size": "1", "steps": "2"}):
                rt.wait(rid, 60)  # workers up, caches warm
            gc.collect()
            base = _rss()
            peak = _RssPeak()
            t0 = time.perf_counter()
            ids = rt.submit_many([b""] * runs, headers={"size": str(size), "steps": str(steps)})
            for rid in ids:
                rt.wait(rid, 1200)
            dt = time.perf_counter() - t0
            top = peak.stop()
            syncs = sup.journal.syncs
        n = runs * steps
        return {"steps_per_s": n / dt, "mb_per_s": n * size / dt / 1e6, "seconds": dt,
                "steps": n, "syncs": syncs, "sup_rss_mb": (top - base) / 1e6}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bare_point(size: int, n: int, workers: int) -> dict[str, float]:
    from benchmarks import payload_sweep as me

    payload = b"x" * size
    with multiprocessing.get_context("forkserver").Pool(workers) as pool:
        pool.map(me.echo, [b"warm"] * workers * 4, chunksize=1)
        t0 = time.perf_counter()
        pool.map(me.echo, [payload] * n, chunksize=1)
        dt = time.perf_counter() - t0
    return {"steps_per_s": n / dt, "mb_per_s": n * size / dt / 1e6, "seconds": dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small counts (a few seconds in all)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-mb", type=float, default=None,
                    help="skip payload sizes above this many MiB (default 100; 8 with --quick)")
    args = ap.parse_args()
    if args.max_mb is None:
        args.max_mb = 8.0 if args.quick else 100.0
    w = args.workers
    rows = []
    for size, (runs, steps) in POINTS.items():
        if size > args.max_mb * (1 << 20):
            continue
        if args.quick:
            runs, steps = max(2, runs // 8), max(3, steps // 4)
        j = journaled_point(size, runs, steps, w)
        b = bare_point(size, runs * steps, w)
        rows.append({"payload_bytes": size, "steps": runs * steps,
                     "journaled_steps_per_s": j["steps_per_s"],
                     "journaled_mb_per_s": j["mb_per_s"],
                     "pool_steps_per_s": b["steps_per_s"], "pool_mb_per_s": b["mb_per_s"],
                     "ratio": j["steps_per_s"] / b["steps_per_s"],
                     "steps_per_sync": j["steps"] / max(1, j["syncs"]),
                     "sup_rss_mb": j["sup_rss_mb"]})
    emit(rows, ["payload_bytes", "steps", "journaled_steps_per_s", "journaled_mb_per_s",
                "pool_steps_per_s", "pool_mb_per_s", "ratio", "steps_per_sync", "sup_rss_mb"],
         f"payload sweep: journaled (Runtime, fdatasync'd) vs multiprocessing.Pool({w}).map, "
         f"{w} workers")


if __name__ == "__main__":
    main()
