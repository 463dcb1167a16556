"""End to end through every submit path (submit to durable outcome), one no-op step per run.

Issue 13's four shapes, each against a bare ``multiprocessing.Pool(2)``
(``map(noop, range(n), chunksize=1)``, nothing durable) measured in the same
run, before and after the journaled rows (the faster of the two is the
baseline, so a burst of outside load cannot flatter the ratio):

a. ``clients``: P client processes (16) against ``journaled run`` in a
   subprocess, each calling ``Client(state).submit`` one run at a time,
   then ``Client.wait`` for each of its runs. Clock: from releasing all
   clients (they are started and have built their ``Client`` before) to the
   last outcome any of them read. Target >= 15,000 runs/s.
b. ``serial``: one thread, ``Runtime.submit`` then ``Runtime.wait``, in a loop.
   Target >= 4,000 runs/s. Beside it, ``vs_floor``: its rate over the bare
   floor of DESIGN §4 on this disk in the same run (two fdatasyncs in
   sequence around a pipe round trip, no journaled code:
   ``baseline.serial_floor_rate``), the most any implementation could reach.
c. ``threads``: T threads (32) calling ``Runtime.submit`` one run at a time,
   then waiting for their outcomes. Target >= 1.0x the bare pool.
d. ``cli``: ``journaled submit`` processes against the running supervisor,
   p50/p95 of N calls (interpreter start-up included: what a shell script
   pays); beside it, one ``Pool.apply`` round trip for scale.

Which door the clients used is reported: the supervisor's socket when
``STATE/supervisor.sock`` exists once it is up (``Client`` picks it by
itself), else the inbox directory.

    python benchmarks/submit_paths.py [--quick] [--runs N] [--clients 16] [--threads 32]
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import apps  # noqa: E402
from benchmarks._table import emit  # noqa: E402
from benchmarks.baseline import bare_pool_rate, noop, serial_floor_rate  # noqa: E402
from benchmarks.cancel_latency import Supervisor, cli, percentiles  # noqa: E402
from journaled import Client, Runtime  # noqa: E402


def door(state: Path) -> str:
    """Which path ``Client`` takes to this supervisor: its socket if it listens."""
    return "socket" if (state / "supervisor.sock").exists() else "inbox"


def wait_up(state: Path, sup: Supervisor, timeout: float = 60.0) -> None:
    """Until the supervisor has run one run end to end (so it is listening and warm)."""
    c = Client(state)
    rid = c.submit(b"warm")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sup.proc.poll() is not None:
            raise RuntimeError(f"journaled run exited {sup.proc.returncode}: {sup.stop()[-2000:]}")
        try:
            c.wait(rid, 1.0)
            return
        except TimeoutError:
            pass
    raise TimeoutError(f"the supervisor did not finish a run in {timeout} s")


# ------------------------------------------------------------------ a. clients


def _client_proc(state: str, n: int, go: Any, out: Any, ready: Any) -> None:
    """One client process: ``n`` single submits, then wait for each outcome."""
    try:
        c = Client(state)
        c.refresh()
        c._door()  # connected, as a long-lived client is: the clock measures calls
        ready.put(1)
        go.wait()
        ids = [c.submit(b"") for _ in range(n)]
        t_sub = time.perf_counter()
        bad = sum(c.wait(rid, 600).status.value != "succeeded" for rid in ids)
        out.put((n, t_sub, time.perf_counter(), bad, ""))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        out.put((0, 0.0, 0.0, n, f"{type(e).__name__}: {e}"))


def launch(procs: int, target: Callable[..., None], *args: Any) -> tuple[float, list[tuple]]:
    """P spawned processes run ``target(*args, go, out, ready)``; the clock starts at ``go``.

    Each says it is ready (imported, connected) before the clock starts, so
    no process is timed while it is still importing. Returns the start time
    and every process's tuple from ``out``, whose last item is an error
    message ("" when none; the first one raised here).
    """
    ctx = multiprocessing.get_context("spawn")
    go, out, ready = ctx.Event(), ctx.Queue(), ctx.Queue()
    ps = [ctx.Process(target=target, args=(*args, go, out, ready)) for _ in range(procs)]
    for p in ps:
        p.start()
    for _ in ps:
        try:
            ready.get(timeout=300)
        except Exception:  # noqa: BLE001 - one died starting: its error comes through out
            break
    time.sleep(0.2)
    t0 = time.perf_counter()
    go.set()
    got = [out.get(timeout=900) for _ in ps]
    for p in ps:
        p.join(30)
    errors = [g[-1] for g in got if g[-1]]
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]}")
    return t0, got


def clients(state: Path, procs: int, per: int) -> dict[str, Any]:
    t0, got = launch(procs, _client_proc, str(state), per)
    runs = sum(g[0] for g in got)
    end = max(g[2] for g in got)
    return {"runs": runs, "seconds": end - t0, "submit_seconds": max(g[1] for g in got) - t0,
            "not_succeeded": sum(g[3] for g in got)}


# ----------------------------------------------------------- b. / c. Runtime


def serial(rt: Runtime, n: int) -> dict[str, Any]:
    bad = 0
    t0 = time.perf_counter()
    for _ in range(n):
        bad += rt.wait(rt.submit(b""), 600).status.value != "succeeded"
    return {"runs": n, "seconds": time.perf_counter() - t0, "not_succeeded": bad}


def threads(rt: Runtime, n_threads: int, per: int) -> dict[str, Any]:
    go = threading.Event()
    ends: list[float] = []
    bad: list[int] = []
    errors: list[str] = []

    def body() -> None:
        try:
            go.wait()
            ids = [rt.submit(b"") for _ in range(per)]
            b = sum(rt.wait(rid, 600).status.value != "succeeded" for rid in ids)
            bad.append(b)
            ends.append(time.perf_counter())
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(f"{type(e).__name__}: {e}")

    ts = [threading.Thread(target=body) for _ in range(n_threads)]
    for t in ts:
        t.start()
    t0 = time.perf_counter()
    go.set()
    for t in ts:
        t.join()
    if errors:
        raise RuntimeError(f"a submitting thread failed: {errors[0]}")
    return {"runs": n_threads * per, "seconds": max(ends) - t0, "not_succeeded": sum(bad)}


def runtime_shapes(tmp: Path, workers: int, n_serial: int, n_threads: int,
                   per_thread: int) -> tuple[dict, dict, int]:
    with Runtime(tmp / "state-rt", apps.noop, workers=workers) as rt:
        for rid in rt.submit_many([b"warm"] * (4 * workers)):
            rt.wait(rid, 60)
        syncs0 = rt.supervisor.journal.syncs
        b = serial(rt, n_serial)
        b["syncs"] = rt.supervisor.journal.syncs - syncs0
        syncs0 = rt.supervisor.journal.syncs
        c = threads(rt, n_threads, per_thread)
        c["syncs"] = rt.supervisor.journal.syncs - syncs0
    return b, c, 0


# ---------------------------------------------------------------------- d. CLI


def cli_latency(state: Path, n: int) -> list[float]:
    """Milliseconds per ``journaled submit`` process (start to exit: durable on exit)."""
    out = []
    for _ in range(n + 1):  # one unmeasured call warms the page cache
        t0 = time.perf_counter()
        proc = subprocess.run(cli("submit", "--state", str(state), "x"), cwd=ROOT,
                              capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"journaled submit exited {proc.returncode}: {proc.stderr}")
        out.append(dt * 1000)
    return out[1:]


def pool_apply_latency(n: int, workers: int) -> list[float]:
    """Milliseconds per ``Pool.apply(noop)`` round trip (pool start excluded)."""
    with multiprocessing.get_context().Pool(workers) as pool:
        for i in range(10):
            pool.apply(noop, (i,))
        out = []
        for i in range(max(n, 50)):
            t0 = time.perf_counter()
            pool.apply(noop, (i,))
            out.append((time.perf_counter() - t0) * 1000)
    return out


# ------------------------------------------------------------------------ main


def rate_row(shape: str, target: str, m: dict[str, Any], pool: float, path: str,
             **extra: Any) -> dict[str, Any]:
    rate = m["runs"] / m["seconds"]
    return {"shape": shape, "path": path, "runs": m["runs"], "seconds": m["seconds"],
            "runs_per_s": rate, "pool_tasks_per_s": pool, "vs_pool": rate / pool,
            "target": target, "not_succeeded": m["not_succeeded"], **extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small counts (a few seconds)")
    ap.add_argument("--runs", type=int, default=0,
                    help="runs per shape (default 20,000; --quick 800)")
    ap.add_argument("--clients", type=int, default=16, help="client processes in (a)")
    ap.add_argument("--threads", type=int, default=32, help="submitting threads in (c)")
    ap.add_argument("--cli-calls", type=int, default=0, help="journaled submit calls (default 30)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    n = args.runs or (800 if args.quick else 20_000)
    w = args.workers
    per_client = max(1, n // args.clients)
    per_thread = max(1, n // args.threads)
    n_cli = args.cli_calls or (5 if args.quick else 30)
    pool_n = max(2_000, n)

    pools = [bare_pool_rate(pool_n, w)]
    tmp = Path(tempfile.mkdtemp(prefix="jbench-paths-"))
    try:
        state = tmp / "state"
        with Supervisor(state, "benchmarks.apps:noop", "-w", str(w)) as sup:
            wait_up(state, sup)
            path = door(state)
            a = clients(state, args.clients, per_client)
            lat = cli_latency(state, n_cli)
        b, c, _ = runtime_shapes(tmp, w, n, args.threads, per_thread)
        floor = serial_floor_rate(min(n, 3_000), str(tmp))  # the journals' own disk
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    apply_ms = pool_apply_latency(n_cli, w)
    pools.append(bare_pool_rate(pool_n, w))
    pool = max(pools)

    rows = [
        rate_row(f"a. {args.clients} client processes, Client.submit one at a time + wait",
                 ">= 15,000 runs/s", a, pool, path, submit_seconds=a["submit_seconds"]),
        rate_row("b. one thread, Runtime.submit + wait, serial", ">= 4,000 runs/s", b, pool,
                 "in-process", syncs=b["syncs"], syncs_per_run=b["syncs"] / b["runs"],
                 vs_floor=b["runs"] / b["seconds"] / floor["runs_per_s"]),
        rate_row(f"c. {args.threads} threads, Runtime.submit one at a time + wait",
                 ">= 1.0x pool", c, pool, "in-process", syncs=c["syncs"],
                 syncs_per_run=c["syncs"] / c["runs"]),
    ]
    cl, ap_ = percentiles(lat), percentiles(apply_ms)
    p95 = sorted(lat)[min(len(lat) - 1, max(0, -(-95 * len(lat) // 100) - 1))]
    ap95 = sorted(apply_ms)[min(len(apply_ms) - 1, max(0, -(-95 * len(apply_ms) // 100) - 1))]
    rows.append({"shape": "d. `journaled submit` CLI process (latency)", "path": path,
                 "runs": len(lat), "p50_ms": cl["p50"], "p95_ms": p95,
                 "pool_apply_p50_ms": ap_["p50"], "pool_apply_p95_ms": ap95,
                 "vs_pool": ap_["p50"] / cl["p50"], "target": "-"})
    rows.append({"shape": "b0. serial floor: 2 fdatasyncs + a pipe round trip, bare Python",
                 "path": "-", "runs": min(n, 3_000), "runs_per_s": floor["runs_per_s"],
                 "vs_pool": floor["runs_per_s"] / pool, "target": "-",
                 **{k: v for k, v in floor.items() if k != "runs_per_s"}})
    rows.append({"shape": "bare multiprocessing.Pool(2).map chunksize=1", "path": "-",
                 "runs": pool_n, "runs_per_s": pool, "pool_tasks_per_s": pool, "vs_pool": 1.0,
                 "target": "-", "pool_runs_per_s_each": pools})
    emit(rows, ["shape", "path", "runs", "seconds", "runs_per_s", "vs_pool", "target", "p50_ms",
                "p95_ms", "pool_apply_p50_ms", "syncs_per_run", "vs_floor", "us_per_run",
                "not_succeeded"],
         f"submit paths end to end (submit -> durable outcome), no-op 1-step runs, {w} workers; "
         f"vs_pool = rate / bare Pool rate (for d: Pool.apply p50 / CLI p50)")


if __name__ == "__main__":
    main()
