"""Build a state directory with many finished runs and some live ones (for scale.py).

Finished runs are written straight into ``archive.sqlite3`` through the
archive's own writer (``row_of`` of a fabricated terminal ``Run``, big
transactions): exactly the rows the supervisor writes, without running a
million steps. Live runs go through a real supervisor: each parks on a
one-day delay, so they stay in the journal (and in every reader's memory).

::

    from benchmarks._scale_state import build_scale_state
    info = build_scale_state("/tmp/big", finished=1_000_000, live=2_000)
    info["sample_ids"]  # a few archived run ids, for 'journaled status RID'
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from journaled import ContinueAfter, Step, Succeed
from journaled.archive import Archive, row_of
from journaled.records import Submitted
from journaled.run import CANCELLED, FAILED, SUCCEEDED, Run

ROWS_PER_TRANSACTION = 50_000
PARK_SECONDS = 86400.0


def park(step: Step) -> Any:
    """Step 0 waits a day: the run stays live (``benchmarks._scale_state:park``)."""
    if step.step_number == 0:
        return ContinueAfter(step.payload, delay=PARK_SECONDS)
    return Succeed(b"")


def finished_run(i: int, now: float, span: float = 0.0, n: int = 1) -> Run:
    """The i-th of ``n`` fabricated finished runs, spread over the last ``span`` seconds.

    90% succeeded, 8% failed (half of them dead-lettered), 2% cancelled.
    """
    at = now - span + span * i / max(n, 1)
    run = Run(Submitted(f"f-{i:09d}", f"input {i}".encode(), at - 0.05,
                        {"tenant": f"t{i % 97}"}), 0)
    run.attempt = 1
    run.finished_at = at
    run.history = [[0, 1, i % 4, at - 0.04, at, "completed", "", ""]]
    kind = i % 50
    if kind < 4:
        run.status, run.error, run.kind = FAILED, f"step 0 dead-lettered: boom {i}", "error"
        run.dead = kind < 2
        run.history[0][5] = "dead_lettered" if run.dead else "completed"
    elif kind == 4:
        run.status, run.error, run.kind = CANCELLED, "cancelled", "cancel_request"
    else:
        run.status, run.result = SUCCEEDED, f"result {i}".encode()
    return run


def write_finished(state_dir: str | os.PathLike[str], n: int, *, start: int = 0,
                   span: float = 6 * 86400.0) -> float:
    """Write ``n`` finished runs into the archive, ids from ``start``; seconds it took.

    Their finish times spread over the last ``span`` seconds, so retention
    (7 days by default) keeps them all.
    """
    Path(state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    t0 = time.perf_counter()
    now = time.time()
    writer = Archive(state_dir).open_writer()
    try:
        for lo in range(start, start + n, ROWS_PER_TRANSACTION):
            hi = min(start + n, lo + ROWS_PER_TRANSACTION)
            writer.upsert(row_of(finished_run(i, now, span, start + n))
                          for i in range(lo, hi))
    finally:
        writer.close()
    return time.perf_counter() - t0


def add_live(state_dir: str | os.PathLike[str], n: int, workers: int = 2) -> float:
    """Submit ``n`` runs through a real supervisor and wait until each is parked; seconds."""
    from journaled import Runtime

    t0 = time.perf_counter()
    with Runtime(state_dir, park, workers=workers) as rt:
        ids = rt.submit_many([b"live"] * n)
        deadline = time.monotonic() + 600
        while True:
            with rt.supervisor.state_lock:
                waiting = sum(1 for r in rt.supervisor.state.runs.values()
                              if r.status == "waiting")
            if waiting >= len(ids) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    return time.perf_counter() - t0


def build_scale_state(state_dir: str | os.PathLike[str], finished: int, live: int = 2000,
                      workers: int = 2) -> dict[str, Any]:
    """A state with ``finished`` archived runs and ``live`` parked ones; what was built."""
    took_finished = write_finished(state_dir, finished) if finished else 0.0
    took_live = add_live(state_dir, live, workers) if live else 0.0
    sample = [f"f-{i:09d}" for i in (0, finished // 2, finished - 1)] if finished else []
    return {"state_dir": str(state_dir), "finished": finished, "live": live,
            "build_finished_s": round(took_finished, 2), "build_live_s": round(took_live, 2),
            "sample_ids": sample,
            "archive_bytes": (Path(state_dir) / "archive.sqlite3").stat().st_size
            if finished else 0}
