"""What issue 15's operations cost the state machine when they are not in use, and a bit.

The pure ``State`` is driven through its commands (submit, lease,
complete) for runs of several steps with small payloads, the same shape
``replay.py`` builds. Variants, measured in the same process, each on a
fresh state, best of ``--repeat``:

- **baseline**: per-step payload trail turned off (``Run.keep_payload`` a
  no-op) and nothing paused: the state machine as before this change;
- **as shipped**: the trail on (what ``fork`` needs), nothing paused;
- **key paused**: the trail on and one key paused that no run has (every
  ready run is checked against it);
- **snapshot**: encoded bytes of one snapshot of the live runs, trail off/on.

    python benchmarks/ops_overhead.py [--runs N] [--steps S] [--payload B]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._table import emit  # noqa: E402
from journaled.records import DispatchPaused, encode  # noqa: E402
from journaled.run import Run  # noqa: E402
from journaled.state import State, WorkerResult  # noqa: E402


def drive(runs: int, steps: int, payload: bytes, pause_key: bool) -> tuple[float, State]:
    st = State()
    if pause_key:
        st.apply(DispatchPaused("nobody", True, 0.0))
    t0 = time.perf_counter()
    for i in range(runs):
        st.submit(f"r{i}", payload, 1.0)
    done = 0
    while done < runs * steps:
        batch = st.due_runs(2.0, 256)
        if not batch:
            break
        for run in batch:
            st.lease(run, 0, 2.0)
            kind = "continue" if run.step < steps - 1 else "succeed"
            st.complete(run.run_id, run.attempt, WorkerResult(kind, payload), 2.0)
            done += 1
    return time.perf_counter() - t0, st


def live_snapshot_bytes(runs: int, steps: int, payload: bytes) -> int:
    """One snapshot of ``runs`` runs each at its last step (all still live)."""
    st = State()
    for i in range(runs):
        st.submit(f"r{i}", payload, 1.0)
    for _ in range(steps - 1):
        for run in st.due_runs(2.0, runs):
            st.lease(run, 0, 2.0)
            st.complete(run.run_id, run.attempt, WorkerResult("continue", payload), 2.0)
    return sum(len(encode(p)) for p in st.snapshot(3.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20_000)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--payload", type=int, default=256, help="payload bytes per step")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    payload = b"x" * a.payload
    keep = Run.keep_payload
    results = []
    for name, trail, pause in (("baseline (no trail)", False, False),
                               ("as shipped (trail)", True, False),
                               ("trail + a key paused", True, True)):
        Run.keep_payload = keep if trail else (lambda self, p: None)  # type: ignore[method-assign]
        best = min(drive(a.runs, a.steps, payload, pause)[0] for _ in range(a.repeat))
        snap = live_snapshot_bytes(min(a.runs, 5000), a.steps, payload)
        results.append({"variant": name, "steps/s": a.runs * a.steps / best,
                        "seconds": round(best, 3), "snapshot_MB_5k_live": snap / 1e6})
    Run.keep_payload = keep  # type: ignore[method-assign]
    emit(results, ["variant", "steps/s", "seconds", "snapshot_MB_5k_live"],
         f"state machine, {a.runs:,} runs x {a.steps} steps, {a.payload} B payloads")


if __name__ == "__main__":
    main()
