"""The long crash test: ``journaled crashtest examples.primes:runner --kills 1000 --seed 1``.

It runs crashtest as a user would (a subprocess, from the repository root),
in power-loss mode with worker kills, and reports what it did: kills by
kind and failpoint, restarts, rounds, executed and re-executed steps, and
the verdict. The suite runs small crash tests; this is the one that makes
a thousand kills land at many distinct points. It takes a while (a
supervisor start costs over a second here: roughly 2-3 s per kill).

Run: ``python benchmarks/crashtest_long.py [--kills N] [--seed S] [--app APP]
[--kill-helpers] [--payload-bytes B] [-- extra crashtest options]``. The
issue-11 tortures::

    python benchmarks/crashtest_long.py --kills 1000 --seed 1
    python benchmarks/crashtest_long.py --kills 1000 --seed 1 --kill-helpers
    python benchmarks/crashtest_long.py --kills 1000 --seed 1 --kill-helpers --payload-bytes 65536

``--kill-helpers`` also kills the forkserver and the resource tracker;
``--payload-bytes`` carries that many bytes in every payload between steps.
The table adds what "done" asks of a torture: re-executions per kill,
supervisor self-exits (0 expected) and whether supervisor stderr stayed
clean (no Traceback, leaked, KeyError). JSON (crashtest's own report, plus the
machine) goes to stdout, a table to stderr (see ``_table.py``), and
crashtest's progress and summary also to stderr. Exit status is crashtest's.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def options(kill_helpers: bool, payload_bytes: int) -> list[str]:
    """The crashtest options for the torture's extras."""
    out = ["--kill-helpers"] if kill_helpers else []
    if payload_bytes:
        out += ["--payload-bytes", str(payload_bytes)]
    return out


def run(app: str, kills: int, seed: int, extra: list[str]) -> tuple[int, dict[str, Any]]:
    """Run crashtest once; returns its exit code and its JSON report."""
    env = dict(os.environ)
    env.pop("JOURNALED_STATE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "journaled.cli", "crashtest", app, "--kills", str(kills),
           "--seed", str(seed), "--json", *extra]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate()
    except KeyboardInterrupt:
        # Let crashtest stop its supervisors itself (it keeps its state and says where).
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate()
    try:
        report = json.loads(out)
    except json.JSONDecodeError:
        report = {"ok": False, "error": out[-2000:] or f"exit {proc.returncode}"}
    report.setdefault("elapsed", round(time.monotonic() - t0, 3))
    report["command"] = " ".join(["journaled", *cmd[3:]])
    return proc.returncode, report


def row(report: dict[str, Any]) -> dict[str, Any]:
    """One table row from a crashtest report."""
    k = report.get("kills", {})
    return {
        "verdict": "PASS" if report.get("ok") else
        f"FAIL ({report.get('first_failed_check') or report.get('error', '?')})",
        "kills": k.get("total"), "supervisor": k.get("supervisor"),
        "workers": k.get("workers"), "failpoint": k.get("failpoint"),
        "points_hit": len(k.get("points_hit", {})), "restarts": report.get("restarts"),
        "rounds": report.get("rounds"), "runs": report.get("runs"),
        "executed_steps": report.get("executed_steps"),
        "re_executed": report.get("re_executed_steps"),
        "max_attempt": report.get("max_attempt_seen"), "elapsed_s": report.get("elapsed"),
        "forkserver": k.get("forkserver"), "tracker": k.get("resource_tracker"),
        "reexec_per_kill": report.get("re_executions_per_kill"),
        "self_exits": report.get("self_exits"),
        "stderr": None if "dirty_stderr" not in report else
        ("clean" if not report["dirty_stderr"] else f"dirty x{report['dirty_stderr']}"),
        "payload_bytes": report.get("payload_bytes"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", default="examples.primes:runner")
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kill-helpers", action="store_true",
                        help="also kill the forkserver and the resource tracker")
    parser.add_argument("--payload-bytes", type=int, default=0,
                        help="bytes carried in every payload between steps (e.g. 65536)")
    parser.add_argument("extra", nargs="*", help="more crashtest options (after --)")
    args = parser.parse_args(argv)

    try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.crashtest_long
        from _table import format_table, machine  # type: ignore[import-not-found]
    except ImportError:
        from benchmarks._table import format_table, machine

    extra = options(args.kill_helpers, args.payload_bytes) + list(args.extra)
    code, report = run(args.app, args.kills, args.seed, extra)
    try:
        from journaled.crashtest import format_report

        print(format_report(report), file=sys.stderr)
    except Exception:  # noqa: BLE001 - a partial report still gets the table below
        pass
    columns = ["verdict", "kills", "supervisor", "workers", "failpoint", "forkserver",
               "tracker", "points_hit", "restarts", "rounds", "runs", "executed_steps",
               "re_executed", "reexec_per_kill", "self_exits", "stderr", "max_attempt",
               "elapsed_s"]
    title = " ".join([f"crashtest {args.app} --kills {args.kills} --seed {args.seed}", *extra])
    print(format_table([row(report)], columns, title), file=sys.stderr, flush=True)
    print(json.dumps({"title": title, "machine": machine(), "report": report}), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
