"""journaled against durable peers on the same no-op work, measured the same way in one run.

Two shapes, one no-op step (task, workflow) per run, submit to durable outcome:

- ``serial``: one thread submits one run and waits for its outcome, in a loop.
  journaled: ``Runtime.submit`` + ``wait`` (in-process supervisor, 2 workers).
  Huey: ``noop(i)`` + ``result.get(blocking=True)`` against a 2-process consumer.
  DBOS: ``DBOS.start_workflow`` + ``handle.get_result()`` (in-process).
- ``clients``: P client processes, each submitting its runs one at a time,
  then waiting for each. journaled: ``Client.submit`` against ``journaled run``
  (socket or inbox, whichever ``Client`` picks); Huey: enqueue from each process
  against the consumer; DBOS: ``DBOSClient.enqueue`` from each process onto a
  queue served by a DBOS process.

Durability: journaled fsyncs every commit; Huey's SqliteHuey runs with
``fsync=True`` (``synchronous=FULL``) in WAL mode; DBOS's SQLite system
database keeps SQLite's defaults (rollback journal, ``synchronous=FULL``).
Polling peers poll at 0.5 ms (Huey) and 1 ms (DBOS's floor), far below their
defaults (0.1-10 s, 1 s), so their polling does not decide the result.
See ``_peer_huey.py`` / ``_peer_dbos.py``. A peer that is not installed is
skipped with a line saying so (``pip install -e '.[bench]'``).

The serial loops of journaled and Huey alternate over ``--rounds`` rounds
(journaled, Huey, journaled, ...) and the best round of each counts; every
round's rate is printed beside it. On a shared machine one loop can land in
a burst of outside load, and a ratio of two single loops then says more
about the burst than about either system. Client processes report ready
(imported, connected) before the clock starts, for every system.

Issue 13's targets for the serial loop: >= 5x Huey-SQLite, >= 50x DBOS-SQLite.

    python benchmarks/peers.py [--quick] [--runs N] [--clients P] [--rounds R]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import apps  # noqa: E402
from benchmarks._table import emit  # noqa: E402
from benchmarks.cancel_latency import Supervisor  # noqa: E402
from benchmarks.submit_paths import clients as journaled_clients  # noqa: E402
from benchmarks.submit_paths import door, launch, wait_up  # noqa: E402
from journaled import Runtime  # noqa: E402


def installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a stub or a broken install: treat as absent
        return False


def timed_loop(n: int, one: Callable[[int], Any]) -> dict[str, Any]:
    bad = 0
    t0 = time.perf_counter()
    for i in range(n):
        bad += one(i) != i
    return {"runs": n, "seconds": time.perf_counter() - t0, "not_succeeded": bad}


def best(loops: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of several loops of one system, with every round's rate beside it."""
    top = max(loops, key=lambda m: m["runs"] / m["seconds"])
    return {**top, "rounds": [round(m["runs"] / m["seconds"]) for m in loops]}


def fan_out(procs: int, per: int, target: Callable[..., None], *args: Any) -> dict[str, Any]:
    """P client processes run ``target(*args, per, go, out, ready)`` (``submit_paths.launch``)."""
    t0, got = launch(procs, target, *args, per)
    return {"runs": sum(g[0] for g in got), "seconds": max(g[1] for g in got) - t0,
            "not_succeeded": sum(g[2] for g in got)}


def journaled_serial(tmp: Path, n: int) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    with Runtime(tmp / "j-serial", apps.noop, workers=2) as rt:
        for rid in rt.submit_many([b"warm"] * 8):
            rt.wait(rid, 60)
        return timed_loop(n, lambda i: i if rt.wait(rt.submit(b""), 600).status.value ==
                          "succeeded" else -1)


def journaled_procs(tmp: Path, procs: int, per: int) -> tuple[dict[str, Any], str]:
    state = tmp / "j-clients"
    with Supervisor(state, "benchmarks.apps:noop", "-w", "2") as sup:
        wait_up(state, sup)
        path = door(state)
        m = journaled_clients(state, procs, per)
    return m, path


# ------------------------------------------------------------------------ Huey


class HueyConsumer:
    """Huey's consumer (2 worker processes) in a subprocess, on ``db``."""

    def __init__(self, db: Path) -> None:
        self.env = {**os.environ, "JBENCH_HUEY_DB": str(db), "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from benchmarks._peer_huey import consumer_main; "
             "consumer_main()"], cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        assert self.proc.stderr is not None
        self.proc.stderr.close()


def _huey_client(db: str, per: int, go: Any, out: Any, ready: Any) -> None:
    try:
        os.environ["JBENCH_HUEY_DB"] = db
        from benchmarks import _peer_huey as h

        h.huey.storage.conn  # opened now, not on the clock  # noqa: B018
        ready.put(1)
        go.wait()
        results = [h.noop(i) for i in range(per)]
        bad = sum(h.wait(r) != i for i, r in enumerate(results))
        out.put((per, time.perf_counter(), bad, ""))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        out.put((0, 0.0, per, f"{type(e).__name__}: {e}"))


def huey_serial(tmp: Path, n: int) -> dict[str, Any]:
    """One serial loop against a freshly started consumer (2 worker processes)."""
    db = tmp / "huey.db"  # one database for every round: the module opens it once
    os.environ["JBENCH_HUEY_DB"] = str(db)
    from benchmarks import _peer_huey as h

    consumer = HueyConsumer(db)
    try:
        for i in range(5):  # warm: consumer up, workers forked
            h.wait(h.noop(i))
        return timed_loop(n, lambda i: h.wait(h.noop(i)))
    finally:
        consumer.stop()


def huey_procs(tmp: Path, procs: int, per: int) -> dict[str, Any]:
    db = tmp / "huey.db"
    os.environ["JBENCH_HUEY_DB"] = str(db)
    from benchmarks import _peer_huey as h

    consumer = HueyConsumer(db)
    try:
        for i in range(5):
            h.wait(h.noop(i))
        return fan_out(procs, per, _huey_client, str(db))
    finally:
        consumer.stop()


# ------------------------------------------------------------------------ DBOS


def _dbos_client(url: str, per: int, go: Any, out: Any, ready: Any) -> None:
    try:
        from dbos import DBOSClient

        from benchmarks._peer_dbos import POLL, QUEUE, WORKFLOW

        c = DBOSClient(system_database_url=url)
        ready.put(1)
        go.wait()
        hs = [c.enqueue({"queue_name": QUEUE, "workflow_name": WORKFLOW}, i) for i in range(per)]
        bad = sum(hd.get_result(polling_interval_sec=POLL) != i for i, hd in enumerate(hs))
        out.put((per, time.perf_counter(), bad, ""))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        out.put((0, 0.0, per, f"{type(e).__name__}: {e}"))


def dbos_both(tmp: Path, n: int, procs: int, per: int) -> tuple[dict, dict | None]:
    import logging

    from dbos import DBOS

    from benchmarks._peer_dbos import POLL, QUEUE, noop_workflow

    url = f"sqlite:///{tmp / 'dbos.sqlite'}"
    DBOS(config={"name": "jbench", "system_database_url": url, "log_level": "WARNING"})
    DBOS.launch()
    logging.getLogger("dbos").setLevel(logging.WARNING)
    try:
        DBOS.register_queue(QUEUE, polling_interval_sec=POLL)
        for i in range(3):
            DBOS.start_workflow(noop_workflow, i).get_result(polling_interval_sec=POLL)
        serial = timed_loop(n, lambda i: DBOS.start_workflow(noop_workflow, i).get_result(
            polling_interval_sec=POLL))
        many = fan_out(procs, per, _dbos_client, url) if procs else None
    finally:
        DBOS.destroy()
    return serial, many


# ------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small counts (seconds)")
    ap.add_argument("--runs", type=int, default=0,
                    help="runs in each serial loop (default 2,000; DBOS a tenth; --quick 40)")
    ap.add_argument("--clients", type=int, default=0,
                    help="client processes (default 16; --quick 4)")
    ap.add_argument("--rounds", type=int, default=0,
                    help="serial loops of journaled and Huey, alternated; the best of each "
                    "counts, so a burst of outside load cannot decide a ratio (default 3; "
                    "--quick 1)")
    args = ap.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    n = args.runs or (40 if args.quick else 2_000)
    procs = args.clients or (4 if args.quick else 16)
    per = max(1, (n // 2 if args.quick else n) // procs)
    dbos_n = max(20, n // 10)

    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="jbench-peers-"))
    try:
        has_huey = installed("huey")
        j_loops: list[dict[str, Any]] = []
        h_loops: list[dict[str, Any]] = []
        for r in range(rounds):  # alternated: journaled, Huey, journaled, Huey, ...
            j_loops.append(journaled_serial(tmp / f"r{r}", n))
            if has_huey:
                h_loops.append(huey_serial(tmp, n))
        j_serial = best(j_loops)
        j_procs, path = journaled_procs(tmp, procs, per)
        peers: dict[str, tuple[dict, dict | None]] = {}
        # --quick: the peers' serial loops only (their client shapes take tens of seconds)
        peer_procs = 0 if args.quick else procs
        if has_huey:
            peers["huey"] = (best(h_loops), huey_procs(tmp, peer_procs, per) if peer_procs
                             else None)
        else:
            skipped.append("huey not installed: skipped (pip install huey, or the bench extra)")
        if installed("dbos"):
            # DBOS client processes contend for the SQLite write lock: a few runs each
            peers["dbos"] = dbos_both(tmp, dbos_n, peer_procs, max(1, min(3, per // 5)))
        else:
            skipped.append("dbos not installed: skipped (pip install dbos, or the bench extra)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def rate(m: dict[str, Any]) -> float:
        return m["runs"] / m["seconds"]

    targets = {("serial", "huey"): ">= 5x", ("serial", "dbos"): ">= 50x"}
    for shape, jm, jpath in (("serial", j_serial, "in-process"),
                             (f"{procs} client processes", j_procs, path)):
        rows.append({"shape": shape, "system": "journaled", "path": jpath, "runs": jm["runs"],
                     "seconds": jm["seconds"], "runs_per_s": rate(jm),
                     "rounds": jm.get("rounds", "-"), "not_succeeded": jm["not_succeeded"]})
        for name, (ps, pm) in peers.items():
            m = ps if shape == "serial" else pm
            if m is None:
                continue
            rows.append({"shape": shape, "system": name, "path": "sqlite", "runs": m["runs"],
                         "seconds": m["seconds"], "runs_per_s": rate(m),
                         "rounds": m.get("rounds", "-"),
                         f"journaled_over_{name}": rate(jm) / rate(m),
                         "target": targets.get(("serial" if shape == "serial" else "", name),
                                               "-"),
                         "not_succeeded": m["not_succeeded"]})
    for line in skipped:
        print(line, file=sys.stderr)
    emit(rows, ["shape", "system", "path", "runs", "seconds", "runs_per_s", "rounds",
                "journaled_over_huey", "journaled_over_dbos", "target", "not_succeeded"],
         "journaled vs durable peers, no-op one-step runs, submit -> durable outcome, "
         "2 workers each" + (f" ({'; '.join(skipped)})" if skipped else ""))


if __name__ == "__main__":
    main()
