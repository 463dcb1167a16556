"""The crash test's report: a JSON-able dict, and the text table a user reads."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from .checks import CHECKS


def build_report(test: Any) -> dict[str, Any]:
    s, cfg = test.stats, test.cfg
    kinds = [k for k in CHECKS if any(v.check == k for v in test.violations)]
    return {
        "ok": not test.violations,
        "app": cfg.app,
        "seed": cfg.seed,
        "runs": len(test.reference),
        "rounds": s.rounds,
        "power_loss": cfg.power_loss,
        "kill_workers": cfg.kill_workers,
        "kill_helpers": cfg.kill_helpers,
        "payload_bytes": cfg.payload_bytes,
        "workers": cfg.workers,
        "max_attempts": cfg.max_attempts,
        "kills": {"total": s.kills, "budget": cfg.kills, "supervisor": s.supervisor_kills,
                  "workers": s.worker_kills, "failpoint": s.failpoint_kills,
                  "forkserver": s.helper_kills["forkserver"],
                  "resource_tracker": s.helper_kills["resource_tracker"],
                  "helper_kills_missed": s.helper_kills_missed,
                  "worker_kills_skipped": s.worker_kills_skipped,
                  "worker_kills_idle": s.worker_kills_idle,
                  "points_hit": dict(sorted(s.points_hit.items())),
                  "points_aimed": dict(sorted(s.points_aimed.items()))},
        "restarts": s.restarts,
        "compactions_requested": s.compactions_requested,
        "reference_steps": s.reference_steps,
        "executed_steps": s.executed_steps,
        "re_executed_steps": s.re_executed_steps,
        "max_attempt_seen": s.max_attempt_seen,
        "re_executions_per_kill": round(s.re_executed_steps / s.kills, 3) if s.kills else 0.0,
        "self_exits": s.self_exits,
        "dirty_stderr": s.dirty_stderr,
        "reader": {"on": cfg.readers, "lines": s.reader_lines, "errors": s.reader_errors,
                   "first_errors": list(test.reader_errors)},
        "reference_seconds": round(s.reference_seconds, 3),
        "longest_step_seconds": round(test.longest_step, 3),
        "elapsed": round(time.monotonic() - test.started, 3),
        "failed_checks": kinds,
        "first_failed_check": kinds[0] if kinds else None,
        "violations": [v.as_dict() for v in test.violations],
        "records": test.details,
        "kept": str(test.kept) if test.kept else None,
        "failing_state": str(test._failing_round) if test._failing_round else None,
    }


def format_report(rep: dict[str, Any]) -> str:
    """The summary table and, on failure, the violations with their runs' records."""
    k = rep["kills"]
    hit = ", ".join(f"{p} {n}" for p, n in k["points_hit"].items()) or "-"
    aimed = ", ".join(f"{p} {n}" for p, n in k["points_aimed"].items()) or "-"
    rows = [
        ("app", rep["app"]),
        ("seed", str(rep["seed"])),
        ("runs", f"{rep['runs']} x {rep['rounds']} round(s)"),
        ("mode", ("power loss" if rep["power_loss"] else "kill -9 only")
         + (", worker kills" if rep["kill_workers"] else "")
         + (", helper kills" if rep.get("kill_helpers") else "")
         + (f", {rep['payload_bytes']:,}-byte payloads" if rep.get("payload_bytes") else "")),
        ("kills", f"{k['total']} of {k['budget']}: supervisor {k['supervisor']}, "
                  f"workers {k['workers']}, failpoint-aimed {k['failpoint']}, forkserver "
                  f"{k.get('forkserver', 0)}, resource tracker {k.get('resource_tracker', 0)}"),
        ("failpoints aimed", aimed),
        ("failpoints hit", hit),
        ("worker kills skipped", f"{k['worker_kills_skipped']} (the step had no failure to "
                                 f"spare), {k['worker_kills_idle']} (worker had not run yet)"),
        ("restarts", str(rep["restarts"])),
        ("compactions asked", str(rep["compactions_requested"])),
        ("executed steps", f"{rep['executed_steps']} (crash-free: {rep['reference_steps']} "
                           "per round)"),
        ("re-executed steps", f"{rep['re_executed_steps']} (at-least-once exposure; "
                              f"{rep.get('re_executions_per_kill', 0):.2f} per kill)"),
        ("self-exits", f"{rep.get('self_exits', 0)} (supervisors that ended by themselves)"),
        ("stderr", "clean" if not rep.get("dirty_stderr") else
         f"{rep['dirty_stderr']} supervisor run(s) with a Traceback / leaked / KeyError line"),
        ("reader", _reader_row(rep.get("reader"))),
        ("max attempt seen", str(rep["max_attempt_seen"])),
        ("elapsed", f"{rep['elapsed']:.1f} s (reference {rep['reference_seconds']:.1f} s)"),
        ("verdict", "PASS" if rep["ok"] else
         f"FAIL: check ({rep['first_failed_check']}) "
         f"{CHECKS[rep['first_failed_check']]}"),
    ]
    w = max(len(r[0]) for r in rows)
    out = ["journaled crashtest"] + [f"  {name:<{w}}  {value}" for name, value in rows]
    if not rep["ok"]:
        out.append("")
        by_kind: dict[str, list[dict[str, str]]] = defaultdict(list)
        for v in rep["violations"]:
            by_kind[v["check"]].append(v)
        for kind, vs in by_kind.items():
            out.append(f"check ({kind}) failed: {CHECKS[kind]} ({len(vs)} violation(s))")
            for v in vs[:20]:
                out.append("  " + v["message"].replace("\n", "\n    "))  # a diff's lines
            if len(vs) > 20:
                out.append(f"  ... {len(vs) - 20} more")
        for rid, lines in rep["records"].items():
            out.append("")
            out.append(f"journal records of run {rid} (as 'journaled log --run {rid}'), "
                       "then its exec-log lines:")
            out += [f"  {ln}" for ln in lines[:80]]
    if rep["kept"]:
        out.append("")
        failing = rep.get("failing_state")
        out.append(f"state kept in {rep['kept']}" + (
            f" (the failing one: {failing}; see it with 'journaled log --state {failing}')"
            if failing and failing != rep["kept"] else ""))
    return "\n".join(out)


def _reader_row(r: dict[str, Any] | None) -> str:
    if not r or not r.get("on"):
        return "off"
    out = f"{r['lines']} status changes seen by a Client in another process"
    if r.get("errors"):
        out += f"; {r['errors']} read error(s), first: {r['first_errors'][0]}"
    return out
