"""The longest supervisor loop turn while it compacts (issue 12: about 100 ms at most).

A state with ``--finished`` runs in the archive (built by ``_scale_state``,
or reused with ``--state``) and ``--live`` runs parked in the journal is
opened by a ``Runtime`` whose compaction threshold is lowered to
``--compact-mb``; then ``--runs`` no-op one-step runs go through it in
batches, so the journal grows past the threshold again and again (natural
compactions) while the archiver moves the finished runs into the big
archive; after each batch one compaction is also asked for. The same is
done on a state with an empty archive and the same live runs, in the same
process, as the baseline.

A turn is timed from the end of its wait to the end of its work
(``_after_wait``: folding, leasing, the write, and a compaction when one is
due), by wrapping that method on the instance: the supervisor itself is
not changed. The table gives, per state: turns, compactions, the longest
turn that compacted (wall; its median; the most loop-thread CPU one
took, which outside load does not inflate), the longest ``compact()``
call alone (drain the flusher, snapshot, write, sync), the longest turn
of any kind and the 99th percentile of all turns.

    python benchmarks/compaction_pause.py [--quick] [--finished 1000000] [--live 2000]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import apps  # noqa: E402
from benchmarks._scale_state import add_live, write_finished  # noqa: E402
from benchmarks._table import emit  # noqa: E402
from journaled import Runtime  # noqa: E402


def timed_turns(state: Path, runs: int, batch: int, compact_mb: float) -> dict[str, Any]:
    """Drive ``runs`` no-op runs through ``state``; the turn times, split by compaction."""
    turns: list[float] = []
    compacting: list[float] = []
    rt = Runtime(state, apps.noop, workers=2)
    sup = rt.supervisor
    sup.compact_bytes = int(compact_mb * (1 << 20))
    inner = sup._after_wait
    inner_compact = sup.compact
    cpu: list[float] = []  # loop-thread CPU seconds of each compacting turn
    compact_s: list[float] = []  # inside compact(): drain the flusher, snapshot, write, sync

    def after_wait(ready: list[Any]) -> None:
        before = sup.compactions
        c0 = time.thread_time()
        t0 = time.perf_counter()
        inner(ready)
        dt = time.perf_counter() - t0
        turns.append(dt)
        if sup.compactions != before:
            compacting.append(dt)
            cpu.append(time.thread_time() - c0)

    def compact(now: float | None = None) -> bool:
        t0 = time.perf_counter()
        try:
            return inner_compact(now)
        finally:
            compact_s.append(time.perf_counter() - t0)

    sup._after_wait = after_wait  # type: ignore[method-assign]
    sup.compact = compact  # type: ignore[method-assign]
    t_start = time.perf_counter()
    with rt:
        done = 0
        while done < runs:
            k = min(batch, runs - done)
            ids = rt.submit_many([b""] * k)
            for rid in ids:
                rt.wait(rid, 600)
            done += k
            sup._compact_requested = True  # and one asked for, on top of the natural ones
            sup.wake()
        time.sleep(1.0)  # the last archiver batch and its compaction
        live = len(sup.state.runs)
    took = time.perf_counter() - t_start
    turns.sort()
    return {"turns": len(turns), "compactions": len(compacting),
            "longest_turn_ms": 1e3 * turns[-1] if turns else 0.0,
            "longest_compacting_turn_ms": 1e3 * max(compacting) if compacting else 0.0,
            "median_compacting_turn_ms": 1e3 * statistics.median(compacting)
            if compacting else 0.0,
            "longest_compact_call_ms": 1e3 * max(compact_s) if compact_s else 0.0,
            "compacting_turn_max_cpu_ms": 1e3 * max(cpu) if cpu else 0.0,
            "p99_turn_ms": 1e3 * turns[int(0.99 * (len(turns) - 1))] if turns else 0.0,
            "runs_in_journal_after": live, "seconds": took}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20k archived, 200 live (seconds)")
    ap.add_argument("--finished", type=int, default=0,
                    help="archived runs in the big state (default 1,000,000)")
    ap.add_argument("--live", type=int, default=0, help="parked live runs (default 2,000)")
    ap.add_argument("--runs", type=int, default=0, help="no-op runs driven (default 20,000)")
    ap.add_argument("--batch", type=int, default=0, help="runs per batch (default 2,000)")
    ap.add_argument("--compact-mb", type=float, default=1.0,
                    help="compaction threshold while measured (default 1 MB: many compactions)")
    ap.add_argument("--state", type=Path, default=None,
                    help="use (or build and keep) the big state here")
    args = ap.parse_args()
    finished = args.finished or (20_000 if args.quick else 1_000_000)
    live = args.live or (200 if args.quick else 2_000)
    runs = args.runs or (2_000 if args.quick else 20_000)
    batch = args.batch or (500 if args.quick else 2_000)
    tmp = Path(tempfile.mkdtemp(prefix="jbench-pause-"))
    try:
        big = args.state or tmp / "big"
        built = 0.0
        if not (big / "archive.sqlite3").exists():
            built = write_finished(big, finished) + add_live(big, live)
        small = tmp / "small"
        add_live(small, live)
        res = {"small": timed_turns(small, runs, batch, args.compact_mb),
               "big": timed_turns(big, runs, batch, args.compact_mb)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [{"state": f"{name}: {n:,} archived, {live:,} live", **res[name]}
            for name, n in (("small", 0), ("big", finished))]
    for r in rows:
        r["target"] = "longest compacting turn <= ~100 ms"
    emit(rows, ["state", "turns", "compactions", "longest_compacting_turn_ms",
                "median_compacting_turn_ms", "compacting_turn_max_cpu_ms",
                "longest_compact_call_ms", "longest_turn_ms", "p99_turn_ms",
                "runs_in_journal_after"],
         f"compaction pause: {runs:,} no-op runs in batches of {batch:,}, compaction threshold "
         f"{args.compact_mb} MB plus one asked for per batch; turn = _after_wait, ms"
         + (f"; big state built in {built:.0f} s" if built else ""))


if __name__ == "__main__":
    main()
