"""Submit latency: from ``submit`` to step 0 running, with an idle supervisor.

The runner (``apps.mark_step``) writes ``time.perf_counter()`` into a
marker file as its first act; ``perf_counter`` is ``CLOCK_MONOTONIC`` on
Linux, one clock for every process, so the benchmark subtracts the time it
read just before calling ``submit``. Each run finishes (and the loop
pauses a few ms) before the next submit, so the supervisor is idle every
time.

- ``Client.submit`` to a ``journaled run`` supervisor in another process
  (inbox file: fsync'd, renamed, directory fsync'd; then file notification,
  ``Submitted`` + ``Leased`` fsync'd in one commit, dispatch). Issue 5's
  target: p50 < 20 ms.
- ``Runtime.submit`` in-process (command queue and wake pipe, no inbox).

``call_*`` columns: how long ``submit`` itself took to return (durable).

    python benchmarks/submit_latency.py [--quick] [--n 100]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import apps  # noqa: E402
from benchmarks._table import emit  # noqa: E402
from benchmarks.cancel_latency import Supervisor, percentiles, wait_file  # noqa: E402
from journaled import Client, Runtime  # noqa: E402


def measure(submit, wait, marks: Path, n: int, idle: float) -> list[tuple[float, float, float]]:  # type: ignore[no-untyped-def]
    """(t0 before submit, t1 submit returned, t2 step 0 started) for ``n`` runs."""
    out = []
    for i in range(-2, n):  # two unmeasured runs first: start-up, first imports
        marker = marks / f"{i + 2}"
        t0 = time.perf_counter()
        rid = submit(b"", headers={"marker": str(marker)})
        t1 = time.perf_counter()
        t2 = wait_file(marker, 60)
        wait(rid, 60)
        if i >= 0:
            out.append((t0, t1, t2))
        time.sleep(idle)
    return out


def row(path: str, target: str, samples: list[tuple[float, float, float]]) -> dict:
    lat = percentiles([(t2 - t0) * 1000 for t0, _t1, t2 in samples])
    call = percentiles([(t1 - t0) * 1000 for t0, t1, _t2 in samples])
    return {"path": path, "n": len(samples), "target": target, "p50_ms": lat["p50"],
            "p99_ms": lat["p99"], "max_ms": lat["max"], "mean_ms": lat["mean"],
            "call_p50_ms": call["p50"], "call_p99_ms": call["p99"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 submits per path")
    ap.add_argument("--n", type=int, default=0, help="submits per path (default 100)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--idle", type=float, default=0.01, help="pause between runs, seconds")
    args = ap.parse_args()
    n = args.n or (20 if args.quick else 100)
    tmp = Path(tempfile.mkdtemp(prefix="jbench-submit-"))
    try:
        (tmp / "m1").mkdir()
        (tmp / "m2").mkdir()
        state = tmp / "state-client"
        with Supervisor(state, "benchmarks.apps:mark_step", "-w", str(args.workers)):
            client = Client(state)
            via_client = measure(client.submit, client.wait, tmp / "m1", n, args.idle)
        with Runtime(tmp / "state-rt", apps.mark_step, workers=args.workers) as rt:
            via_runtime = measure(rt.submit, rt.wait, tmp / "m2", n, args.idle)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [row("Client.submit -> step 0 running (supervisor in another process)",
                "p50 < 20 ms", via_client),
            row("Runtime.submit -> step 0 running (in-process)", "-", via_runtime)]
    emit(rows, ["path", "n", "target", "p50_ms", "p99_ms", "max_ms", "call_p50_ms",
                "call_p99_ms"],
         f"submit latency with an idle supervisor ({args.workers} workers), ms")


if __name__ == "__main__":
    main()
