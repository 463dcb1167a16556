"""Non-durable baselines: what dispatching a no-op costs with no journal at all.

journaled's per-step overhead (fsync'd lease + outcome, pipe round trip) is
only meaningful next to these, measured in the same process and run:

- ``inline_rate``: calling the function in a loop (the ceiling);
- ``bare_pool_rate``: ``multiprocessing.Pool.map(..., chunksize=1)``, one
  IPC round trip per task like one step per dispatch;
- ``process_pool_executor_rate``: ``concurrent.futures.ProcessPoolExecutor``;
- ``serial_floor_rate``: the least a durable serial run can cost under
  DESIGN §4 here, in bare Python: two ``write`` + ``fdatasync`` in sequence
  (lease before dispatch, outcome before the answer) around one pipe round
  trip to another process. No journaled code at all.

Pools use the platform's default start method (``fork`` on Linux before
Python 3.14, ``forkserver`` after; ``spawn`` on macOS/Windows); results record
which. Start-up is excluded: each pool is warmed until every worker exists.

Run: ``python benchmarks/baseline.py [--quick] [--tasks N] [--workers W]``;
JSON goes to stdout, a table to stderr (see ``_table.py``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def noop(x: int) -> int:
    """The task under test: as close to zero work as a picklable call gets."""
    return x


def _warm(x: float) -> float:
    """Sleep briefly so a warm-up map has to start every worker, not just one."""
    time.sleep(x)
    return x


def start_method() -> str:
    """The default multiprocessing start method the pools below use."""
    return multiprocessing.get_start_method(allow_none=False)


def bare_pool_rate(n_tasks: int, workers: int = 2, method: str | None = None) -> float:
    """Tasks/s of ``Pool(workers).map(noop, range(n), chunksize=1)``, pool start excluded.

    ``method`` picks a start method (default: the platform's); journaled's own
    pool uses ``forkserver``, so ``main`` measures that too for comparison.
    """
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(workers) as pool:
        pool.map(_warm, [0.05] * (2 * workers), chunksize=1)
        t0 = time.perf_counter()
        pool.map(noop, range(n_tasks), chunksize=1)
        elapsed = time.perf_counter() - t0
    return n_tasks / elapsed


def process_pool_executor_rate(n_tasks: int, workers: int = 2) -> float:
    """Tasks/s of ``ProcessPoolExecutor(workers).map(noop, range(n))``, start-up excluded."""
    with ProcessPoolExecutor(max_workers=workers) as ex:
        list(ex.map(_warm, [0.05] * (2 * workers)))
        t0 = time.perf_counter()
        list(ex.map(noop, range(n_tasks)))
        elapsed = time.perf_counter() - t0
    return n_tasks / elapsed


def _echo(rfd: int, wfd: int) -> None:
    while data := os.read(rfd, 64):
        os.write(wfd, data)


def serial_floor_rate(n: int, directory: str | None = None) -> dict[str, float]:
    """Runs/s of the bare serial floor (see the module's docstring), and its parts in µs.

    ``directory`` should be on the disk the journal uses (its fdatasync is
    what is measured). The echo process is forked: nothing here uses threads.
    """
    down_r, down_w = os.pipe()
    up_r, up_w = os.pipe()
    echo = multiprocessing.get_context("fork").Process(target=_echo, args=(down_r, up_w),
                                                       daemon=True)
    echo.start()
    os.close(down_r)
    os.close(up_w)
    fd, path = tempfile.mkstemp(prefix="jbench-floor-", dir=directory)
    record = b"x" * 100  # about a Leased or StepDone frame

    def loop(sync: bool, trip: bool) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            if sync:
                os.write(fd, record)
                os.fdatasync(fd)
            if trip:
                os.write(down_w, b"s")
                os.read(up_r, 64)
            if sync:
                os.write(fd, record)
                os.fdatasync(fd)
        return (time.perf_counter() - t0) / n * 1e6

    try:
        loop(True, True)  # warm: the file's first blocks, the echo's first wake-ups
        both, syncs, trip = loop(True, True), loop(True, False), loop(False, True)
    finally:
        os.close(down_w)
        os.close(up_r)
        echo.join(10)
        os.close(fd)
        os.unlink(path)
    return {"runs_per_s": 1e6 / both, "us_per_run": both, "us_two_syncs": syncs,
            "us_round_trip": trip}


def inline_rate(fn: Callable[[int], Any], n: int) -> float:
    """Calls/s of ``fn(i)`` in a plain loop in this process: the no-dispatch ceiling."""
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    elapsed = time.perf_counter() - t0
    return n / elapsed if elapsed > 0 else float("inf")


def measure(n_tasks: int, workers: int) -> list[dict[str, Any]]:
    """All three baselines as result rows for ``_table.emit``."""
    method = start_method()
    runs: list[tuple[str, int, int, str, float]] = [
        ("inline loop", n_tasks * 10, 0, "-", inline_rate(noop, n_tasks * 10)),
        ("multiprocessing.Pool.map chunksize=1", n_tasks, workers, method,
         bare_pool_rate(n_tasks, workers)),
    ]
    if method != "forkserver" and "forkserver" in multiprocessing.get_all_start_methods():
        runs.append(("multiprocessing.Pool.map chunksize=1", n_tasks, workers, "forkserver",
                     bare_pool_rate(n_tasks, workers, "forkserver")))
    runs.append(("ProcessPoolExecutor.map", n_tasks, workers, method,
                 process_pool_executor_rate(n_tasks, workers)))
    return [{"baseline": name, "tasks": tasks, "workers": w, "start_method": how,
             "tasks_per_s": rate, "us_per_task": 1e6 / rate}
            for name, tasks, w, how, rate in runs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (about a second)")
    parser.add_argument("--tasks", type=int, default=None, help="tasks per pool baseline")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    n = args.tasks or (2_000 if args.quick else 20_000)

    try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.baseline
        from _table import emit  # type: ignore[import-not-found]
    except ImportError:
        from benchmarks._table import emit

    emit(measure(n, args.workers),
         ["baseline", "tasks", "workers", "start_method", "tasks_per_s", "us_per_task"],
         f"non-durable dispatch baselines (no-op task, {args.workers} workers)")


if __name__ == "__main__":
    main()
