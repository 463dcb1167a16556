"""The checks of a crash round, each a pure function of the logs and the journal.

Every violation names its check (a letter, or a process check), its run
and what broke, in words a user can act on.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .archive import Archive, Outcome, failures_per_step, short
from .diff import describe
from .execlog import Line
from .reader import Seen

# How long a killed supervisor's processes may take to notice and exit. Polled (the
# check ends as soon as they are gone), so it only bounds a loaded machine's slow exits.
ORPHAN_GRACE = 10.0
TERMINAL = ("succeeded", "failed", "cancelled")
# What a supervisor's stderr must never hold, even after a kill -9 and a restart.
DIRTY_STDERR = ("Traceback", "leaked", "KeyError")

CHECKS: dict[str, str] = {
    "a": "every run has exactly one Terminated record",
    "b": "final status, result and error equal the crash-free reference",
    "c": "no attempt of a step ran twice (dispatch before the lease was durable)",
    "d": "no step ran after its run's outcome was reported "
         "(result reported before its outcome was durable)",
    "e": "every outcome reported to on_terminal equals the final one",
    "f": "failures per step stay within --max-attempts",
    "g": "the journal passes 'journaled verify'",
    "h": "no reader (a Client polling from another process) ever saw an outcome the journal "
         "later lost or changed",
    "orphan": f"no process of a killed supervisor outlives it by more than {ORPHAN_GRACE:.0f} s",
    "hang": "every supervisor finishes its work within --timeout",
    "exit": "no supervisor exits by itself with an error (only the kills sent to it end it)",
    "stderr": "supervisor stderr stays clean: no 'Traceback', 'leaked' or 'KeyError'",
}


@dataclass
class Violation:
    check: str
    run_id: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "run_id": self.run_id, "message": self.message}


def _norm_error(err: str | None) -> str | None:
    # A worker's pid is the one fact of an error that no rerun can repeat.
    return None if err is None else re.sub(r"pid \d+", "pid N", err)


def mismatch(rid: str, got: Outcome, ref: Outcome) -> str:
    """Check (b)'s message: the outcomes, then where a result or error first differs."""
    if got.status == ref.status:
        head = f"run {rid} ended {got.status} like the crash-free reference, but"
        parts = []
        if got.result != ref.result:
            parts.append(describe("its result", got.result, ref.result))
        if _norm_error(got.error) != _norm_error(ref.error):
            parts.append(describe("its error", got.error, ref.error))
        return f"{head} " + "\n".join(parts)
    msg = f"run {rid} ended {got.show()}, but the crash-free reference ended {ref.show()}"
    if got.result is not None and ref.result is not None and got.result != ref.result:
        msg += "\n" + describe("the result", got.result, ref.result)
    return msg


def check_exec_log(lines: list[Line]) -> list[Violation]:
    """Checks (c) and (d), which need only the exec log."""
    out: list[Violation] = []
    seen: dict[tuple[str, int, int], Line] = {}
    first_term: dict[str, Line] = {}
    for ln in lines:
        if ln.kind == "term":
            first_term.setdefault(ln.run_id, ln)
            continue
        key = (ln.run_id, ln.step, ln.attempt)
        if key in seen:
            out.append(Violation("c", ln.run_id, (
                f"run {ln.run_id} step {ln.step} attempt {ln.attempt} ran twice "
                f"(exec-log lines {seen[key].index + 1} and {ln.index + 1}, pids "
                f"{seen[key].pid} and {ln.pid}): the second delivery reused the attempt "
                "number, so the first lease was not durable when its step was sent "
                "(dispatch before the lease was durable)")))
        else:
            seen[key] = ln
        term = first_term.get(ln.run_id)
        if term is not None:
            out.append(Violation("d", ln.run_id, (
                f"run {ln.run_id} step {ln.step} attempt {ln.attempt} ran (exec-log line "
                f"{ln.index + 1}) after on_terminal had reported the run {term.status} "
                f"(line {term.index + 1}): the result was reported before its outcome "
                "was durable")))
    return out


class WriteAheadCheck:
    """Checks (c) and (d) at the moment a supervisor is gone, before anyone replays.

    Whatever a worker ran must have had its ``Leased`` record on disk, and
    whatever the hook reported its ``Terminated`` record: the write-ahead
    rule, checked directly rather than by waiting for its consequence (an
    attempt run twice, a step run after its result). Each exec-log line is
    judged once, against the journal as the supervisor that ran it left it.
    """

    def __init__(self) -> None:
        self.checked = 0

    def after_exit(self, lines: list[Line], archive: Archive, how: str) -> list[Violation]:
        from ..records import Leased, Snapshot, Terminated

        new, self.checked = lines[self.checked:], len(lines)
        if not new:
            return []
        leases: set[tuple[str, int, int]] = set()
        ended: set[str] = set()
        snap: dict[str, tuple[int, int]] = {}  # compaction: the furthest (step, attempt) seen
        for r in archive.records:
            t = type(r)
            if t is Leased:
                leases.add((r.run_id, r.step, r.attempt))
            elif t is Terminated:
                ended.add(r.run_id)
            elif t is Snapshot:
                for sr in r.runs:
                    snap[sr.run_id] = max(snap.get(sr.run_id, (0, 0)), (sr.step, sr.attempt))
                    if sr.status in ("succeeded", "failed", "cancelled"):
                        ended.add(sr.run_id)
        out: list[Violation] = []
        for ln in new:
            if ln.kind == "exec":
                if (ln.run_id, ln.step, ln.attempt) in leases:
                    continue
                if snap.get(ln.run_id, (-1, 0)) >= (ln.step, ln.attempt):
                    continue
                out.append(Violation("c", ln.run_id, (
                    f"run {ln.run_id} step {ln.step} attempt {ln.attempt} ran (exec-log line "
                    f"{ln.index + 1}, pid {ln.pid}), but its Leased record was not in the "
                    f"journal after the supervisor {how}: the step was sent to a worker "
                    "before its lease was durable (dispatch before the lease was durable)")))
            elif ln.run_id not in ended:
                out.append(Violation("d", ln.run_id, (
                    f"on_terminal reported run {ln.run_id} {ln.status} (exec-log line "
                    f"{ln.index + 1}), but its Terminated record was not in the journal after "
                    f"the supervisor {how}: the result was reported before its outcome was "
                    "durable")))
        return out


def check_round(lines: list[Line], archive: Archive, final: dict[str, Outcome | None],
                reference: dict[str, Outcome], max_attempts: int,
                verify: Any, seen: list[Seen] | None = None) -> list[Violation]:
    """Every check of one finished round, in check order."""
    from ..records import Released, Terminated

    out: list[Violation] = []
    # (a) one Terminated per run, over the whole durable history
    ends = Counter(r.run_id for r in archive.records if type(r) is Terminated)
    for rid in reference:
        if ends[rid] > 1:
            out.append(Violation("a", rid, f"run {rid} has {ends[rid]} Terminated records "
                                           "(it must finish exactly once)"))
        elif final.get(rid) is None:
            where = "is missing from the journal" if rid not in final else "did not finish"
            out.append(Violation("a", rid, f"run {rid} {where} (it must finish exactly once)"))
    for rid in sorted(set(final) - set(reference)):
        out.append(Violation("a", rid, f"run {rid} was never submitted but is in the journal"))
    # (b) same outcome as the reference
    for rid, ref in reference.items():
        got = final.get(rid)
        if got is None:
            continue
        if (got.status, got.result, _norm_error(got.error)) != (
                ref.status, ref.result, _norm_error(ref.error)):
            out.append(Violation("b", rid, mismatch(rid, got, ref)))
    # (c), (d) from the exec log; (c) says when a Released lease explains the reuse
    released = {(r.run_id, r.step, r.attempt) for r in archive.records if type(r) is Released}
    for v in check_exec_log(lines):
        if v.check == "c":
            m = re.search(r"step (\d+) attempt (\d+)", v.message)
            if m and (v.run_id, int(m.group(1)), int(m.group(2))) in released:
                v.message += ("; the journal has a Released record for that attempt: the "
                              "supervisor handed back as unstarted a lease whose step had "
                              "already run (its worker died before sending the result)")
        out.append(v)
    # (e) reported outcomes agree with the final one
    for ln in lines:
        if ln.kind != "term":
            continue
        got = final.get(ln.run_id)
        if got is None or (ln.status, ln.result) != (got.status, got.result):
            shown = got.show() if got is not None else "not finished"
            where = "" if got is None or ln.result == got.result else "\n" + describe(
                "the result", ln.result, got.result, got_name="reported", ref_name="final")
            out.append(Violation("e", ln.run_id, (
                f"on_terminal reported run {ln.run_id} {ln.status} result="
                f"{short(ln.result)} (exec-log line {ln.index + 1}), but the final outcome "
                f"is {shown}{where}")))
    # (f) failures per step
    for (rid, step), n in sorted(failures_per_step(archive.records).items()):
        if n > max_attempts:
            out.append(Violation("f", rid, f"run {rid} step {step} failed {n} times, more "
                                           f"than --max-attempts {max_attempts}"))
    # (g) verify
    if verify.report.damage is not None:
        out.append(Violation("g", "-", f"journal damaged: {verify.report.damage}"))
    for text in verify.violations:
        m = re.search(r"run (\S+?)[,\s]", text)
        out.append(Violation("g", m.group(1) if m else "-", f"invariant broken: {text}"))
    # (h) what readers in other processes were shown
    if seen is not None:
        out += check_readers(seen, final)
    order = list(CHECKS)
    out.sort(key=lambda v: order.index(v.check))
    return out


def check_readers(seen: list[Seen], final: dict[str, Outcome | None]) -> list[Violation]:
    """Check (h): an outcome a reader saw is never taken back, changed, or lost.

    A reader logs every status change it sees; once it saw a run terminal,
    every later look must show the same outcome, and so must the journal at
    the end of the round.
    """
    out: list[Violation] = []
    first: dict[str, Seen] = {}
    for s in seen:
        t = first.get(s.run_id)
        if t is None:
            if s.status in TERMINAL:
                first[s.run_id] = s
            continue
        if (s.status, s.result) != (t.status, t.result):
            out.append(Violation("h", s.run_id, (
                f"a reader saw run {s.run_id} {t.status} result={short(t.result)} (reader-log "
                f"line {t.index + 1}), then {s.status} result={short(s.result)} (line "
                f"{s.index + 1}): an outcome a reader was shown was taken back")))
    for rid, t in first.items():
        got = final.get(rid)
        if got is None or (got.status, got.result) != (t.status, t.result):
            shown = got.show() if got is not None else "not finished"
            out.append(Violation("h", rid, (
                f"a reader saw run {rid} {t.status} result={short(t.result)} (reader-log line "
                f"{t.index + 1}), but the journal's final outcome is {shown}: a reader was "
                "shown an outcome that was not durable")))
    return out


def dirty_lines(text: str) -> list[str]:
    """The stderr lines that break the clean-stderr check."""
    return [ln for ln in text.splitlines() if any(w in ln for w in DIRTY_STDERR)]
