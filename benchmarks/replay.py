"""Cold start: replay a journal of 1M records, before and after compaction.

The journal is built fast but realistically: the real state machine
(``journaled.state.State``) is driven through its commands (``submit``,
``lease``, ``complete``) for runs of several steps, so the records are the
ones a supervisor writes (``Submitted``, ``Leased``, ``StepDone`` ...,
``Terminated``), and they are appended with ``Journal.extend`` +
``commit`` in large groups. A small tail of runs is left live (mid-step,
leased) like a supervisor killed under load.

Then it times, on a warm page cache (dropping caches needs root):

- **replay only**: what ``Supervisor.start()`` does before any worker
  starts: ``Journal.replay()`` + ``records.decode`` + ``State.apply``;
- **Supervisor.start()**: the real thing (lock, replay, recovery records
  fsync'd, inbox, one forkserver worker), with a no-op runner;

on the raw journal, after ``compact_offline`` with a retention that keeps
every run (a ``Snapshot`` of all of them), and after one that drops every
finished run. Issue 5's target: < 2 s for 1M records.

    python benchmarks/replay.py [--quick] [--records N] [--steps S]
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._table import emit  # noqa: E402
from journaled.journal import Journal  # noqa: E402
from journaled.records import decode, encode  # noqa: E402
from journaled.state import State, WorkerResult  # noqa: E402
from journaled.supervisor import Supervisor  # noqa: E402
from journaled.tools import compact_offline  # noqa: E402


def build(state_dir: Path, records: int, steps: int, live: int = 1000,
          batch_runs: int = 500) -> dict:
    """Write about ``records`` records of ``steps``-step runs; return what was written."""
    journal = Journal(state_dir / "journal", unsafe_no_fsync=True)
    for _ in journal.replay():
        pass
    journal.open_for_append()
    state = State()
    per_run = 1 + 2 * steps  # Submitted, (Leased, StepDone|Terminated) x steps
    runs = max(1, records // per_run)
    now = time.time() - 3600.0  # history in the last hour: within any retention
    written = 0
    n = 0
    headers = {"user": "bench", "tenant": "t1"}
    while n < runs:
        k = min(batch_runs, runs - n)
        recs = []
        for i in range(n, n + k):
            rid = f"r-{i:09d}-bench"
            recs += state.submit(rid, b'{"job": %d, "size": 1024}' % i, now, headers)
        finish = n + k <= runs - live  # the last ``live`` runs stay mid-flight
        for s in range(steps):
            due = state.due_runs(now, k)
            for j, run in enumerate(due):
                rec = state.lease(run, j % 4, now)
                recs.append(rec)
                if s == steps - 1 and not finish:
                    continue  # leased, never completed: abandoned on replay
                if s < steps - 1:
                    res = WorkerResult("continue", b"partial-%d" % s)
                else:
                    res = WorkerResult("succeed", b'{"ok": true, "value": 42}')
                recs += state.complete(run.run_id, rec.attempt, res, now)
            now += 0.001
        journal.extend(encode(r) for r in recs)
        journal.commit()
        written += len(recs)
        n += k
    journal.close()
    return {"runs": runs, "records": written, "bytes": _size(state_dir)}


def _size(state_dir: Path) -> int:
    return sum(p.stat().st_size for p in (state_dir / "journal").glob("*.log"))


def replay_only(state_dir: Path, gc_off: bool = False) -> dict:
    """Time replay + decode + apply into a fresh State, as ``Supervisor._replay`` does.

    ``gc_off``: with the cyclic garbage collector disabled for the fold (a
    diagnostic: how much of the time is the collector rescanning the ever
    bigger heap of runs; ``gc.freeze()`` after replay would keep it off them).
    """
    gc.collect()
    if gc_off:
        gc.disable()
    try:
        return _replay_only(state_dir)
    finally:
        gc.enable()


def _replay_only(state_dir: Path) -> dict:
    t0 = time.perf_counter()
    state = State()
    apply = state.apply
    n = 0
    for _seg, _off, body in Journal(state_dir / "journal").replay():
        apply(decode(body))
        n += 1
    dt = time.perf_counter() - t0
    return {"seconds": dt, "records": n, "runs": len(state.runs)}


def full_start(state_dir: Path) -> dict:
    """Time a real ``Supervisor.start()`` (one worker, no-op runner), then stop it."""
    gc.collect()
    sup = Supervisor(state_dir, "benchmarks.apps:noop", workers=1, preload=["benchmarks.apps"])
    t0 = time.perf_counter()
    sup.start()
    dt = time.perf_counter() - t0
    runs = len(sup.state.runs)
    sup.close()
    return {"seconds": dt, "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k records instead of 1M")
    ap.add_argument("--records", type=int, default=0, help="records to build (about)")
    ap.add_argument("--steps", type=int, default=4, help="steps per run")
    args = ap.parse_args()
    target = args.records or (100_000 if args.quick else 1_000_000)
    tmp = Path(tempfile.mkdtemp(prefix="jbench-replay-"))
    state_dir = tmp / "state"
    try:
        t0 = time.perf_counter()
        built = build(state_dir, target, args.steps)
        build_s = time.perf_counter() - t0
        rows = []

        per_million = 1_000_000 / max(1, built["records"])

        def row(label: str, what: str, records: int, runs: int, size: int, dt: float) -> None:
            # vs_target_2s: this time scaled to 1M records of history, over 2 s (<= 1 meets).
            rows.append({"journal": label, "what": what, "records": records, "runs": runs,
                         "mb": size / 1e6, "seconds": dt, "records_per_s": records / dt,
                         "runs_per_s": runs / dt, "vs_target_2s": dt / 2.0 * per_million})

        def measure(label: str) -> None:
            size = _size(state_dir)
            r = replay_only(state_dir)
            row(label, "replay + decode + apply", r["records"], r["runs"], size, r["seconds"])
            g = replay_only(state_dir, gc_off=True)
            row(label, "same, gc disabled (diagnostic)", g["records"], g["runs"], size,
                g["seconds"])
            f = full_start(state_dir)
            row(label, "Supervisor.start()", r["records"], f["runs"], size, f["seconds"])

        measure("raw")
        t1 = time.perf_counter()
        compact_offline(state_dir, retention=1e12)
        keep_s = time.perf_counter() - t1
        measure("compacted, keep all")
        t2 = time.perf_counter()
        compact_offline(state_dir, retention=0.0)
        drop_s = time.perf_counter() - t2
        measure("compacted, drop finished")
        rows.append({"journal": "(build)", "what": "write the journal", "records":
                     built["records"], "runs": built["runs"], "mb": built["bytes"] / 1e6,
                     "seconds": build_s, "records_per_s": built["records"] / build_s})
        rows.append({"journal": "(compact)", "what": "compact_offline keep all",
                     "seconds": keep_s})
        rows.append({"journal": "(compact)", "what": "compact_offline drop finished",
                     "seconds": drop_s})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    emit(rows, ["journal", "what", "records", "runs", "mb", "seconds", "records_per_s",
                "runs_per_s", "vs_target_2s"],
         f"cold start on {built['records']:,} records ({built['runs']:,} runs of "
         f"{args.steps} steps); target < 2 s per "
         "1M records (vs_target_2s: seconds scaled to 1M records, / 2 s; <= 1 meets it)")


if __name__ == "__main__":
    main()
