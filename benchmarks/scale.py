"""The scale table (issue 12): a state with N finished runs retained against one with 2k.

Two state directories are built (``build_state``: N finished runs in the
archive, 8 % of them failed, and ``--live`` runs parked in the journal; and
the same with ``--small`` finished runs), then on each, with no supervisor
running unless said:

- ``journaled status RID`` and ``journaled result RID`` of a run in the
  middle, and ``journaled runs --status failed --limit 50`` (without
  ``--limit`` on a tree whose CLI has none; said in the row): wall time of
  the CLI process, median of ``--reps``;
- supervisor start-up: ``journaled run`` from spawn to its "supervising"
  line (replay and workers started), median of ``--reps`` starts; and its
  VmRSS then (after one more run done);
- a fresh ``Client`` process answering one ``status``: its peak RSS (VmHWM);
- durable step rate: ``--steps`` no-op one-step runs through a ``Runtime``
  on the big state (start-up excluded) and on an empty one, back to back.

Each row gives ``ratio`` = big / small (the step rate: big / empty; RSS:
the difference in MB) and the issue-12 target it is judged against. Never
asserted: the machine is shared.

``build_state`` is the one place that makes the states: finished runs go
straight into the archive through its bulk writer (``_scale_state``), as
the supervisor would have moved them there. ``--keep DIR`` builds the
states once and reuses them.

    python benchmarks/scale.py [--quick] [--finished 1000000] [--small 2000] [--live 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import apps  # noqa: E402
from benchmarks._scale_state import build_scale_state  # noqa: E402
from benchmarks._table import emit  # noqa: E402
from benchmarks.cancel_latency import cli, rss_kb  # noqa: E402
from journaled import Runtime  # noqa: E402
from journaled.records import Terminated  # noqa: E402

APP = "benchmarks.apps:noop_or_fail"


def build_state(state: Path, finished: int, live: int) -> list[str]:
    """Make ``state`` hold ``finished`` archived runs and ``live`` parked ones; sample ids.

    The finished runs are written straight into ``archive.sqlite3`` by the
    archive's own writer (``_scale_state``: the rows the supervisor would
    write, 8 % failed; 1M in a few minutes); the live runs go through a real
    supervisor and park on a one-day delay. Returns archived run ids that
    succeeded, the middle one first (what ``status``/``result`` ask for).
    """
    build_scale_state(state, finished, live)
    mid = finished // 2
    picks = [i for i in (mid, 0, finished - 1) if 0 <= i < finished]
    out = []
    for i in picks:
        while i % 50 < 5 and i + 1 < finished:  # _scale_state: i % 50 < 5 did not succeed
            i += 1
        out.append(f"f-{i:09d}")
    return out


# ------------------------------------------------------------------ measures


def cli_seconds(state: Path, *args: str) -> tuple[float, int]:
    """Wall time of one ``journaled ARGS --state STATE`` process; and its stdout bytes."""
    t0 = time.perf_counter()
    proc = subprocess.run(cli(*args, "--state", str(state)), cwd=ROOT, capture_output=True)
    dt = time.perf_counter() - t0
    if proc.returncode not in (0, 1):  # `result` of a failed run exits 1
        raise RuntimeError(f"journaled {' '.join(args)} exited {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace')[-2000:]}")
    return dt, len(proc.stdout)


def median_cli(state: Path, reps: int, *args: str) -> dict[str, Any]:
    if reps > 1:
        cli_seconds(state, *args)  # warm the page cache
    runs = [cli_seconds(state, *args) for _ in range(reps)]
    return {"seconds": statistics.median(r[0] for r in runs), "out_bytes": runs[0][1]}


def runs_has_limit() -> bool:
    proc = subprocess.run(cli("runs", "--help"), cwd=ROOT, capture_output=True, text=True)
    return "--limit" in proc.stdout


def supervisor_start(state: Path) -> tuple[float, int]:
    """Seconds from spawning ``journaled run`` to its "supervising" line; its VmRSS (kB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cli("run", APP, "--state", str(state), "-w", "2"), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    try:
        lines = []
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            lines.append(line)
            if "supervising" in line:
                break
        else:
            raise RuntimeError(f"journaled run exited {proc.wait()}: {''.join(lines)[-2000:]}")
        dt = time.perf_counter() - t0
        time.sleep(0.3)  # let the first loop turns settle
        rss = rss_kb(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    return dt, rss


CLIENT_PEAK = """
import sys
from journaled import Client
Client(sys.argv[1]).status(sys.argv[2])
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print(int(line.split()[1]))
"""


def client_peak_kb(state: Path, rid: str) -> int:
    """Peak RSS (VmHWM, kB) of a fresh process that builds a ``Client`` and asks one status."""
    proc = subprocess.run([sys.executable, "-c", CLIENT_PEAK, str(state), rid], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH":
                                                              str(ROOT)})
    if proc.returncode != 0:
        raise RuntimeError(f"client process failed: {proc.stderr[-2000:]}")
    return int(proc.stdout.split()[-1])


def step_rate(state: Path, n: int) -> dict[str, Any]:
    """No-op one-step runs per second through a Runtime on ``state`` (start-up excluded)."""
    t_start = time.perf_counter()
    with Runtime(state, apps.noop, workers=2) as rt:
        started = time.perf_counter() - t_start
        for rid in rt.submit_many([b"warm"] * 8):
            rt.wait(rid, 600)
        sup = rt.supervisor
        # Count Terminated records as the supervisor acts on them (durable):
        # ``outcomes`` forgets a run once it is archived, so it cannot be counted.
        ended = [0]
        after_commit = sup._after_commit

        def counting(recs: list[Any]) -> None:
            ended[0] += sum(1 for r in recs if type(r) is Terminated)
            after_commit(recs)

        sup._after_commit = counting  # type: ignore[method-assign]
        t0 = time.perf_counter()
        rt.submit_many([b""] * n)
        with sup.cond:
            while ended[0] < n:
                sup.cond.wait(1.0)
        dt = time.perf_counter() - t0
        settle(rt)
    return {"steps_per_s": n / dt, "seconds": dt, "runtime_start_s": started}


def settle(rt: Runtime, timeout: float = 120.0) -> None:
    """Let the archiver take every finished run, then compact: the state is left as built.

    Otherwise a rerun with ``--keep`` would measure the big state with the
    last step-rate runs still in an uncompacted journal tail (a fresh
    ``Client`` folds that tail: 8 MB of it doubled its peak RSS).
    """
    sup = rt.supervisor
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sup.state_lock:
            if not any(r.terminal for r in sup.state.runs.values()):
                break
        time.sleep(0.2)
    sup.compact()


def measure_state(state: Path, rid: str, reps: int, limit: bool) -> dict:
    runs_args = ["runs", "--status", "failed"] + (["--limit", "50"] if limit else [])
    out: dict[str, Any] = {
        "status": median_cli(state, reps, "status", rid),
        "result": median_cli(state, reps, "result", rid),
        "runs_failed": median_cli(state, reps, *runs_args),
    }
    starts = [supervisor_start(state) for _ in range(max(1, min(reps, 3)))]
    out["start"] = statistics.median(s[0] for s in starts)
    out["rss_mb"] = starts[-1][1] / 1024
    out["client_peak_mb"] = client_peak_kb(state, rid) / 1024
    return out


# ---------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3k vs 300 runs, one repeat (seconds)")
    ap.add_argument("--finished", type=int, default=0,
                    help="finished runs in the big state (default 1,000,000; --quick 3,000)")
    ap.add_argument("--small", type=int, default=0,
                    help="finished runs in the small state (default 2,000; --quick 300)")
    ap.add_argument("--live", type=int, default=-1,
                    help="live (parked) runs in both states (default 200; --quick 20)")
    ap.add_argument("--reps", type=int, default=0, help="repeats per CLI timing (median)")
    ap.add_argument("--steps", type=int, default=0, help="runs timed for the step rate")
    ap.add_argument("--keep", type=Path, default=None,
                    help="build (or reuse) the states under this directory and keep them")
    args = ap.parse_args()
    big_n = args.finished or (3_000 if args.quick else 1_000_000)
    small_n = min(args.small or (300 if args.quick else 2_000), big_n)
    live = args.live if args.live >= 0 else (20 if args.quick else 200)
    reps = args.reps or (1 if args.quick else 5)
    steps = args.steps or (500 if args.quick else 20_000)
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="jbench-scale-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        built: dict[str, float] = {}
        ids: dict[str, list[str]] = {}
        for name, n in (("small", small_n), ("big", big_n)):
            state = tmp / f"{name}-{n}"
            marker = state / ".bench-ids"
            if marker.exists():
                ids[name] = marker.read_text().split()
                built[name] = float("nan")
                continue
            t0 = time.perf_counter()
            ids[name] = build_state(state, n, live)
            built[name] = time.perf_counter() - t0
            marker.write_text("\n".join(ids[name]))
        limit = runs_has_limit()
        res = {}
        for name, n in (("small", small_n), ("big", big_n)):
            rid = ids[name][0]
            res[name] = measure_state(tmp / f"{name}-{n}", rid, reps, limit)
        empty = tmp / "empty"
        shutil.rmtree(empty, ignore_errors=True)
        rate_empty = step_rate(empty, steps)
        rate_big = step_rate(tmp / f"big-{big_n}", steps)
        rate_none = rate_empty["steps_per_s"]
        if not args.quick:  # again: outside load hits both sides alike
            rate_none = max(rate_none, step_rate(empty, steps)["steps_per_s"])
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)

    s, b = res["small"], res["big"]
    runs_what = "runs --status failed --limit 50" if limit else \
        "runs --status failed (no --limit in this CLI: prints all)"

    def row(what: str, unit: str, small: float, big: float, ratio: float, target: str,
            met: bool, **extra: Any) -> dict[str, Any]:
        return {"what": what, "unit": unit, "small": small, "big": big, "ratio": ratio,
                "target": target, "met": "yes" if met else "no", **extra}

    rows = [
        row("journaled status RID", "s", s["status"]["seconds"], b["status"]["seconds"],
            b["status"]["seconds"] / s["status"]["seconds"], "<= 1.5x",
            b["status"]["seconds"] <= 1.5 * s["status"]["seconds"]),
        row("journaled result RID", "s", s["result"]["seconds"], b["result"]["seconds"],
            b["result"]["seconds"] / s["result"]["seconds"], "<= 1.5x",
            b["result"]["seconds"] <= 1.5 * s["result"]["seconds"]),
        row(runs_what, "s", s["runs_failed"]["seconds"], b["runs_failed"]["seconds"],
            b["runs_failed"]["seconds"] / s["runs_failed"]["seconds"], "<= 1.5x",
            b["runs_failed"]["seconds"] <= 1.5 * s["runs_failed"]["seconds"],
            out_bytes_big=b["runs_failed"]["out_bytes"]),
        row("supervisor start-up (journaled run)", "s", s["start"], b["start"],
            b["start"] / s["start"], "<= 2x", b["start"] <= 2 * s["start"]),
        row("supervisor RSS after start", "MB", s["rss_mb"], b["rss_mb"],
            b["rss_mb"] - s["rss_mb"], "<= +60 MB", b["rss_mb"] - s["rss_mb"] <= 60),
        row("fresh Client process, one status: peak RSS", "MB", s["client_peak_mb"],
            b["client_peak_mb"], b["client_peak_mb"] / s["client_peak_mb"], "big <= 100 MB",
            b["client_peak_mb"] <= 100),
        row(f"durable step rate, {steps:,} no-op runs (small = none retained)", "steps/s",
            rate_none, rate_big["steps_per_s"], rate_big["steps_per_s"] / rate_none, ">= 0.9x",
            rate_big["steps_per_s"] >= 0.9 * rate_none,
            runtime_start_big_s=rate_big["runtime_start_s"]),
    ]
    emit(rows, ["what", "unit", "small", "big", "ratio", "target", "met"],
         f"scale: {big_n:,} finished runs archived (big) vs {small_n:,} (small), {live:,} live in "
         f"each; medians of "
         f"{reps}; ratio = big / small (RSS: big - small, MB); build {built['big']:.0f} s "
         f"(big), {built['small']:.1f} s (small)")


if __name__ == "__main__":
    main()
