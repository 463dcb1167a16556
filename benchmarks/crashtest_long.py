"""The long crash test: ``journaled crashtest examples.primes:runner --kills 1000 --seed 1``.

It runs crashtest as a user would (a subprocess, from the repository root),
in power-loss mode with worker kills, and reports what it did: kills by
kind and failpoint, restarts, rounds, executed and re-executed steps, and
the verdict. The suite runs small crash tests; this is the one that makes
a thousand kills land at many distinct points. It takes a while (a
supervisor start costs over a second here: roughly 2-3 s per kill).

Run: ``python benchmarks/crashtest_long.py [--kills N] [--seed S] [--app APP]
[-- extra crashtest options]``. JSON (crashtest's own report, plus the
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
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", default="examples.primes:runner")
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("extra", nargs="*", help="more crashtest options (after --)")
    args = parser.parse_args(argv)

    try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.crashtest_long
        from _table import format_table, machine  # type: ignore[import-not-found]
    except ImportError:
        from benchmarks._table import format_table, machine

    code, report = run(args.app, args.kills, args.seed, args.extra)
    try:
        from journaled.crashtest import format_report

        print(format_report(report), file=sys.stderr)
    except Exception:  # noqa: BLE001 - a partial report still gets the table below
        pass
    columns = ["verdict", "kills", "supervisor", "workers", "failpoint", "points_hit",
               "restarts", "rounds", "runs", "executed_steps", "re_executed", "max_attempt",
               "elapsed_s"]
    title = f"crashtest {args.app} --kills {args.kills} --seed {args.seed}"
    print(format_table([row(report)], columns, title), file=sys.stderr, flush=True)
    print(json.dumps({"title": title, "machine": machine(), "report": report}), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
