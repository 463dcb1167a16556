"""Fan-out of N children (10,000 by default): spawn-to-fan-in time, journal and memory per child.

Rows, all in one run, each ending with every run terminal:

- ``spawn``: one parent whose step 0 returns ``Spawn`` of N no-op children;
  clock from ``submit`` to the parent's outcome (its fan-in step has read
  all N child outcomes). ``spawn_to_fan_in_s`` is the time from the
  ``Spawned`` record to the fan-in step's lease, from the journal's own
  timestamps.
- ``submit_many``: the baseline, N independent one-step no-op runs
  submitted with one ``Runtime.submit_many`` call, clock to the last outcome.
- ``pool``: a bare ``multiprocessing.Pool(2).map`` of N no-ops (nothing durable).

``journal_bytes_per_run``: journal growth over the row / N (the Spawned
record, each child's lease and end, the archive's drop records).
``state_bytes_per_run``: memory the state machine holds per live child
(``tracemalloc`` over folding the ``Spawned`` record, so it is exact and
not blurred by the allocator); ``rss_growth_mb``: how much this process's
peak RSS (the embedded supervisor's) grew over the row.

    python benchmarks/fanout.py [--quick] [--children N] [--workers 2]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import apps  # noqa: E402
from benchmarks._table import emit  # noqa: E402
from benchmarks.baseline import bare_pool_rate  # noqa: E402
from journaled import Runtime  # noqa: E402
from journaled.journal.mark import data_bytes  # noqa: E402


def journal_bytes(state: Path) -> int:
    """The journal's data: its newest segment's zeros allocated ahead are no growth."""
    return data_bytes(state / "journal")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def state_bytes_per_child(n: int) -> float:
    """Bytes the fold allocates per child for a Spawn of ``n`` (runs, ready queue, ids)."""
    from journaled.records import Leased, Spawned, Submitted
    from journaled.state import State

    st = State()
    st.apply(Submitted("p", b"", 0.0))
    st.apply(Leased("p", 0, 1, 0, 0.0))
    rec = Spawned("p", 0, 1, b"", 0.0, [b""] * n, {"role": "child"})
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    st.apply(rec)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert st.runs["p"].pending == n
    return (after - before) / n


def _row(what: str, n: int, seconds: float, jbytes: int, state_b: float | None,
         base: float | None, **extra: object) -> dict:
    rate = n / seconds
    return {"what": what, "runs": n, "seconds": round(seconds, 3), "runs_per_s": round(rate),
            "journal_bytes_per_run": round(jbytes / n, 1) if jbytes else None,
            "state_bytes_per_run": None if state_b is None else round(state_b),
            "ratio": None if base is None else round(rate / base, 2), **extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1,000 children, for the smoke test")
    ap.add_argument("--children", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    n = 1_000 if args.quick else args.children
    tmp = Path(tempfile.mkdtemp(prefix="jfan-"))
    try:
        results = run(n, args.workers, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    emit(results, ["what", "runs", "seconds", "runs_per_s", "ratio", "journal_bytes_per_run",
                   "state_bytes_per_run", "spawn_to_fan_in_s", "rss_growth_mb"],
         f"fan-out of {n:,} no-op children vs {n:,} submitted runs ({args.workers} workers)")


def _records(state: Path) -> list:
    from journaled.journal import Journal
    from journaled.records import decode

    return [decode(body) for _s, _o, body in Journal(state / "journal").replay()]


def run(n: int, workers: int, tmp: Path) -> list[dict]:
    from journaled.records import Leased, Spawned

    # The spawn first, so its peak RSS growth is its own.
    rss0 = rss_mb()
    state = tmp / "spawn"
    with Runtime(state, apps.spawn_noop, workers=workers) as rt:
        rt.wait(rt.submit(b"0", headers={"role": "warm"}), timeout=60)
        j0 = journal_bytes(state)
        t0 = time.perf_counter()
        rid = rt.submit(str(n).encode(), run_id="parent")
        out = rt.wait(rid, timeout=600)
        spawn_s = time.perf_counter() - t0
        spawn_j = journal_bytes(state) - j0
    spawn_rss = rss_mb() - rss0
    if out.result != str(n).encode():
        raise SystemExit(f"the parent did not fan in over {n} children: {out}")
    recs = _records(state)
    spawned = next(r for r in recs if type(r) is Spawned and r.run_id == "parent")
    fan_in = next(r for r in recs if type(r) is Leased and r.run_id == "parent" and r.step == 1)

    # The baseline: N independent runs through one submit_many.
    rss0 = rss_mb()
    state = tmp / "many"
    with Runtime(state, apps.noop, workers=workers) as rt:
        rt.wait(rt.submit(b"warm"), timeout=60)
        j0 = journal_bytes(state)
        t0 = time.perf_counter()
        ids = rt.submit_many([b""] * n)
        for rid in ids:
            rt.wait(rid, timeout=600)
        base_s = time.perf_counter() - t0
        base_j = journal_bytes(state) - j0
    base_rss = rss_mb() - rss0
    base_rate = n / base_s
    pool = bare_pool_rate(n, workers)
    return [
        _row("spawn", n, spawn_s, spawn_j, state_bytes_per_child(n), base_rate,
             spawn_to_fan_in_s=round(fan_in.at - spawned.at, 3),
             rss_growth_mb=round(spawn_rss, 1)),
        _row("submit_many", n, base_s, base_j, None, base_rate,
             rss_growth_mb=round(base_rss, 1)),
        _row("pool", n, n / pool, 0, None, base_rate),
    ]


if __name__ == "__main__":
    main()
