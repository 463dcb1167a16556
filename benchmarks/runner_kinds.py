"""Cost of the runner kinds of issue 14: named, chain, async, typed, against a plain runner.

Every figure is durable one-step runs per second through a ``Runtime``;
the baseline (a plain sync runner alone, the way journaled served runners
before named runners existed) is measured in the same run, first and again
last (how far those two differ says how noisy the machine was), so the
ratios mean something on a shared machine.

    python benchmarks/runner_kinds.py [--quick] [--workers 2] [--runs N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import kinds_apps  # noqa: E402
from benchmarks._table import emit  # noqa: E402
from journaled import Runtime  # noqa: E402


def rate(runner: Any, name: str | None, inputs: list[Any], workers: int) -> float:
    """Submit every input at once; runs per second until the last outcome is durable."""
    tmp = Path(tempfile.mkdtemp(prefix="jbench-kinds-"))
    try:
        with Runtime(tmp / "state", runner, workers=workers) as rt:
            sup = rt.supervisor
            for rid in rt.submit_many(inputs[: workers * 4], runner=name):
                rt.wait(rid, 60)
            base = sup.finished_total
            t0 = time.perf_counter()
            rt.submit_many(inputs, runner=name)
            with sup.cond:
                while sup.finished_total < base + len(inputs):
                    sup.cond.wait(1.0)
            return len(inputs) / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small counts (a few seconds)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=0, help="1-step runs to time per kind")
    args = ap.parse_args()
    n = args.runs or (3_000 if args.quick else 20_000)
    w = args.workers
    raw = [b""] * n
    item = kinds_apps.Item(1, "x")
    cases = [
        ("plain sync runner (baseline)", kinds_apps.noop, None, raw),
        ("named runner, 1 of 4 (runner='noop')", kinds_apps.ALL, "noop", raw),
        ("chain(one function)", kinds_apps.chain1, None, raw),
        ("async def runner", kinds_apps.async_noop, None, raw),
        ("@typed(Struct) in, Struct out", kinds_apps.typed_noop, None, [item] * n),
        ("plain sync runner again (drift check)", kinds_apps.noop, None, raw),
    ]
    rows = []
    base = 0.0
    for what, runner, name, inputs in cases:
        r = rate(runner, name, inputs, w)
        base = base or r
        rows.append({"what": what, "runs_per_s": r, "ratio": r / base})
    emit(rows, ["what", "runs_per_s", "ratio"],
         f"durable 1-step runs per second by runner kind, {w} workers, {n} runs each")


if __name__ == "__main__":
    main()
