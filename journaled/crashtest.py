"""``journaled crashtest``: crash-recovery testing of a user's own runner.

A user points it at their runner and inputs and gets a verdict: every run
ends exactly once, with the outcome a crash-free run gives, however often
the supervisor and its workers are killed with ``kill -9``::

    crashtest ──Popen──> journaled run journaled.crashtest:wrapped_runner   (the supervisor)
      │  SIGKILL at a seeded moment, or          ├── forkserver ── worker, worker, ...
      │  a failpoint aimed through the env       └── resource tracker
      │  SIGSTOP + SIGKILL of single workers
      └── reads, between restarts: the journal, and the exec log every
          worker and the terminal hook append to (O_APPEND, one line each):

            exec <run_id> <step> <attempt> <pid>     a worker is about to run a step
            term <run_id> <status> <result-hex>      on_terminal reported an outcome

Phases:

1. Reference: the workload runs crash-free in a temporary state directory;
   each run's outcome (status, result, error) is what every later run must
   end with. Run ids are fixed (``ct-0000``, ...) so the phases line up.
2. Crash rounds, each in a fresh state directory, in power-loss mode
   (``JOURNALED_SIMULATE_POWER_LOSS=1``: a kill loses what a power cut
   would) unless ``--no-power-loss``: submit everything, then restart the
   supervisor over and over, each time killing it after a seeded random
   delay, or letting a failpoint aimed at one exact place
   (``journal.before_sync``, ``supervisor.before_dispatch``, ``compact.*``,
   ...) kill it, and meanwhile killing single workers. Once ``--kills``
   kills are spent a last clean supervisor finishes the work. A round that
   finishes before the budget is spent is checked and followed by another.
3. Checks, per round (each names its run and shows that run's records):

   a. every run has exactly one ``Terminated`` record and is terminal;
   b. final status, result and error equal the reference;
   c. dispatch only after the lease is durable: whenever a supervisor is
      gone, every attempt a worker ran has its ``Leased`` record on disk;
      and no ``(run, step, attempt)`` ran twice (a lost lease comes back
      after the restart with the same attempt number);
   d. report only after the outcome is durable: whenever a supervisor is
      gone, every outcome the hook reported has its ``Terminated`` record
      on disk; and no step of a run ran after its outcome was reported;
   e. every reported outcome equals the final one;
   f. failures per step stay within ``--max-attempts``;
   g. ``journaled verify`` passes (frames, CRCs, invariants);

   plus process checks: no process of a killed supervisor survives it by
   more than 3 s (an orphan would run steps twice), no supervisor hangs,
   no supervisor exits with an error.

The caller's ``JOURNALED_FAILPOINTS`` and
``JOURNALED_UNSAFE_DISPATCH_BEFORE_SYNC`` reach the supervisors of the
crash rounds (never the reference): that is how the suite proves a broken
write-ahead ordering makes crashtest fail.

Aimed failpoints go two times in three to the windows of the write-ahead
rule (before the write, before the sync, right after a send, before the
hook), round-robin, at a random one of the commits left to do; a crash
before the write or the sync comes with a short delay after each send, so
a step sent too early has the time to start and the crash can show it.

Kills that crashtest itself makes must not change a run's outcome:
supervisor crashes are not the step's fault, so the crash rounds raise
``--max-abandons`` out of reach; a worker kill is a counted failure, so a
worker is first stopped (SIGSTOP), and killed only if the step it runs
stays below ``--max-attempts`` failures counting the ones the reference
run needed, else resumed.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, NoReturn

import click

__all__ = ["crashtest", "wrapped_runner", "record_terminal", "CrashTest", "Config",
           "ExecLog", "Line", "Archive", "WriteAheadCheck", "check_exec_log", "check_round",
           "final_outcomes", "format_report", "CHECKS", "AIM_POINTS"]

ENV_APP = "JOURNALED_CRASHTEST_APP"
ENV_LOG = "JOURNALED_CRASHTEST_LOG"
WRAPPED = "journaled.crashtest:wrapped_runner"
HOOK = "journaled.crashtest:record_terminal"
ORPHAN_GRACE = 3.0
# Crash rounds: a supervisor crash is crashtest's doing, never the step's.
NO_ABANDON_LIMIT = 1_000_000
# Environment a caller may set to break the supervisor on purpose; passed to
# the crash rounds, kept from the reference.
PASS_THROUGH = ("JOURNALED_FAILPOINTS", "JOURNALED_FAILPOINT_SEED",
                "JOURNALED_UNSAFE_DISPATCH_BEFORE_SYNC", "JOURNALED_SIMULATE_POWER_LOSS")

CHECKS: dict[str, str] = {
    "a": "every run has exactly one Terminated record",
    "b": "final status, result and error equal the crash-free reference",
    "c": "no attempt of a step ran twice (dispatch before the lease was durable)",
    "d": "no step ran after its run's outcome was reported "
         "(result reported before its outcome was durable)",
    "e": "every outcome reported to on_terminal equals the final one",
    "f": "failures per step stay within --max-attempts",
    "g": "the journal passes 'journaled verify'",
    "orphan": f"no process of a killed supervisor outlives it by more than {ORPHAN_GRACE:.0f} s",
    "hang": "every supervisor finishes its work within --timeout",
    "exit": "supervisors exit cleanly or by the kill sent to them",
}

# Where crashtest aims failpoints, with the action each gets. ``%P`` is drawn
# per restart: points hit on every commit get a small P so the crash lands
# at varied commits, rare points a large one. Two aims in three go to the
# windows of the write-ahead rule (CRITICAL, where ordering bugs hide), the
# third to the other points, round-robin within each group.
AIM_POINTS: dict[str, str] = {
    "journal.before_sync": "crash%{p}",
    "supervisor.after_dispatch": "crash%{p}",
    "supervisor.before_hook": "crash%{hp}",
    "journal.before_write": "crash%{p}",
    "supervisor.before_dispatch": "crash%{p}",
    "journal.after_sync": "crash%{p}",
    "supervisor.after_hook": "crash%{hp}",
    "inbox.before_unlink": "crash",
    "compact.before_rename": "crash",
    "compact.after_rename": "crash",
    "compact.before_delete": "crash",
    "worker.before_step": "exit@{n}",
    "worker.after_step": "exit@{n}",
}
_WORKER_POINTS = ("worker.before_step", "worker.after_step")
CRITICAL = ("journal.before_sync", "supervisor.after_dispatch", "journal.before_write",
            "supervisor.before_hook")
# Set beside an aimed crash to widen its window: a step sent just before the
# crash gets the time to start on its worker, so a lease that was used before
# it was durable shows (harmless when leases are synced before the send).
AIM_EXTRA = {
    "journal.before_sync": "supervisor.after_dispatch=delay:100",
    "journal.before_write": "supervisor.after_dispatch=delay:100",
}
# Share of restarts that aim a failpoint; the rest are killed by the clock.
AIM_SHARE = 0.5


# ------------------------------------------------ in the supervisor and its workers

_real_runner: Callable[[Any], Any] | None = None
_log_fd = -1
_log_pid = -1


def _append(line: str) -> None:
    """One ``write`` with O_APPEND: lines from many processes never interleave."""
    global _log_fd, _log_pid
    if _log_fd < 0 or _log_pid != os.getpid():
        path = os.environ.get(ENV_LOG)
        if not path:
            raise RuntimeError(f"{ENV_LOG} is not set; wrapped_runner and record_terminal "
                               "are run by 'journaled crashtest', not by hand")
        _log_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        _log_pid = os.getpid()
    os.write(_log_fd, line.encode())


def wrapped_runner(step: Any) -> Any:
    """Runs in a worker: log ``exec run step attempt pid``, then call the user's runner.

    The user's runner (``$JOURNALED_CRASHTEST_APP``) is imported once per
    worker, before the first line is written; the line is written (no
    buffering) before the runner starts, so a step that ran at all is in
    the log even if its worker dies in it.
    """
    global _real_runner
    if _real_runner is None:
        from .pool import resolve_runner

        spec = os.environ.get(ENV_APP)
        if not spec:
            raise RuntimeError(f"{ENV_APP} is not set; wrapped_runner is run by "
                               "'journaled crashtest', not by hand")
        _real_runner = resolve_runner(spec)
    _append(f"exec {step.run_id} {step.step_number} {step.attempts} {os.getpid()}\n")
    return _real_runner(step)


def record_terminal(outcome: Any) -> None:
    """The on_terminal hook (in the supervisor): log ``term run status result-hex``."""
    result = "-" if outcome.result is None else outcome.result.hex()
    _append(f"term {outcome.run_id} {outcome.status.value} {result}\n")


# ------------------------------------------------------------------------ exec log


class Line(NamedTuple):
    """One exec-log line; ``index`` is its position in the file (time order)."""

    index: int
    kind: str  # "exec" or "term"
    run_id: str
    step: int = -1
    attempt: int = -1
    pid: int = -1
    status: str = ""
    result: bytes | None = None


class ExecLog:
    """Incremental reader of the exec log; a line without its newline is not read yet."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[Line] = []
        self._off = 0
        self.last_exec_by_pid: dict[int, Line] = {}

    def poll(self) -> list[Line]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._off)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self._off += end
        new = []
        for raw in data[:end].decode("utf-8", "replace").splitlines():
            line = self._parse(len(self.lines) + len(new), raw)
            if line is not None:
                new.append(line)
                if line.kind == "exec":
                    self.last_exec_by_pid[line.pid] = line
        self.lines += new
        return new

    @staticmethod
    def _parse(index: int, raw: str) -> Line | None:
        parts = raw.split(" ")
        try:
            if parts[0] == "exec" and len(parts) == 5:
                return Line(index, "exec", parts[1], int(parts[2]), int(parts[3]), int(parts[4]))
            if parts[0] == "term" and len(parts) == 4:
                result = None if parts[3] == "-" else bytes.fromhex(parts[3])
                return Line(index, "term", parts[1], status=parts[2], result=result)
        except ValueError:
            pass
        return None


# ------------------------------------------------------------------------ processes


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            pass
    return out


def _start_time(pid: int) -> int | None:
    """Kernel start time of ``pid``: tells it from a later process with its pid; None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return "?"


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = _children(pid)
    while todo:
        p = todo.pop()
        if p not in out:
            out.append(p)
            todo += _children(p)
    return out


def _workers(sup_pid: int) -> list[int]:
    """Worker processes of a supervisor: the children of its forkserver."""
    out: list[int] = []
    for child in _children(sup_pid):
        if "forkserver" in _cmdline(child):
            out += _children(child)
    return out


def _alive(tracked: dict[int, int]) -> list[int]:
    return [p for p, st in tracked.items() if _start_time(p) == st]


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


# ------------------------------------------------------------------------- journal


class Outcome(NamedTuple):
    status: str
    result: bytes | None
    error: str | None

    def show(self) -> str:
        out = self.status
        if self.result is not None:
            out += f" result={_short(self.result)}"
        if self.error:
            out += f" error={self.error!r}"
        return out


def _short(b: bytes | None, n: int = 40) -> str:
    from .tools import short_bytes

    return short_bytes(b, n)


class Archive:
    """Every durable record a round's journal ever held, in order.

    Compaction drops old segments; reading the journal incrementally while
    supervisors run (and right before asking for a compaction) keeps what
    the final journal no longer has. Only what a compaction swallows within
    one turn, between two reads, is seen in its snapshot form only.
    """

    def __init__(self, state: Path) -> None:
        from .journal import JournalTailer

        self.state = state
        self.records: list[Any] = []
        self.resets = 0
        self._tailer = JournalTailer(state / "journal")

    def update(self) -> None:
        from .records import decode

        try:
            reset, bodies = self._tailer.poll()
        except Exception:  # noqa: BLE001 - damage shows up in check (g)
            return
        self.resets += reset
        self.records += [decode(b) for b in bodies]

    def of_run(self, run_id: str) -> list[Any]:
        return [r for r in self.records if getattr(r, "run_id", None) == run_id]


def final_outcomes(state: Path) -> dict[str, Outcome | None]:
    """Each run's outcome as the journal says now (None: not terminal)."""
    from .journal import Journal
    from .records import decode
    from .state import State

    st = State()
    for _seg, _off, body in Journal(state / "journal").replay():
        st.apply(decode(body))
    out: dict[str, Outcome | None] = {}
    for rid, run in st.runs.items():
        out[rid] = Outcome(run.status, run.result, run.error) if run.terminal else None
    return out


def _steps_done(archive: Archive) -> int:
    from .records import StepDone, Terminated

    return sum(1 for r in archive.records if type(r) in (StepDone, Terminated))


def _longest_step(recs: Iterable[Any]) -> float:
    """Seconds from a step's lease to its outcome, the longest of a journal."""
    from .records import Leased, StepDone, Terminated

    leased: dict[tuple[str, int, int], float] = {}
    longest = 0.0
    for r in recs:
        t = type(r)
        if t is Leased:
            leased[(r.run_id, r.step, r.attempt)] = r.at
        elif t is StepDone or t is Terminated:
            start = leased.get((r.run_id, r.step, r.attempt))
            if start is not None:
                longest = max(longest, r.at - start)
    return longest


def _worker_deaths(recs: Iterable[Any]) -> int:
    from .records import AttemptFailed, Terminated

    return sum(1 for r in recs if type(r) in (AttemptFailed, Terminated)
               and r.kind == "worker_died")


def failures_per_step(recs: Iterable[Any]) -> Counter[tuple[str, int]]:
    """Failed attempts per (run, step): AttemptFailed plus the failure that dead-letters.

    A Snapshot (compaction) says how many failures each run's current step
    had; records the compaction swallowed count through it.
    """
    from .records import AttemptFailed, Snapshot, Terminated

    out: Counter[tuple[str, int]] = Counter()
    for r in recs:
        t = type(r)
        if t is AttemptFailed:
            out[(r.run_id, r.step)] += 1
        elif t is Terminated and r.dead and r.kind not in ("abandoned", ""):
            out[(r.run_id, r.step)] += 1
        elif t is Snapshot:
            for s in r.runs:
                if s.failures:
                    out[(s.run_id, s.step)] = max(out[(s.run_id, s.step)], s.failures)
    return out


# --------------------------------------------------------------------------- checks


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
        from .records import Leased, Snapshot, Terminated

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
                verify: Any) -> list[Violation]:
    """Every check of one finished round, in check order."""
    from .records import Released, Terminated

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
            out.append(Violation("b", rid, f"run {rid} ended {got.show()}, but the "
                                           f"crash-free reference ended {ref.show()}"))
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
            out.append(Violation("e", ln.run_id, (
                f"on_terminal reported run {ln.run_id} {ln.status} result="
                f"{_short(ln.result)} (exec-log line {ln.index + 1}), but the final outcome "
                f"is {shown}")))
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
    order = list(CHECKS)
    out.sort(key=lambda v: order.index(v.check))
    return out


# ---------------------------------------------------------------------------- runs


@dataclass
class Config:
    app: str
    runs: int | None = None
    kills: int = 50
    seed: int = 0
    inputs: list[bytes] | None = None
    workers: int = 2
    kill_workers: bool = True
    power_loss: bool = True
    max_attempts: int = 3
    timeout: float = 120.0
    keep: bool = False
    progress: bool = True
    signals: list[tuple[str, bytes]] = field(default_factory=list)
    scratch: Path | None = None  # where the temporary state directories go


@dataclass
class Plan:
    """What one restart of the supervisor gets: its kill, its failpoint, its worker kills."""

    seed: int
    kill_at: float | None  # seconds after start; None: let it finish
    aim: str | None = None  # failpoint entry name=action
    worker_kills: list[float] = field(default_factory=list)
    compact_at: float | None = None

    def describe(self) -> str:
        parts = [f"seed {self.seed}"]
        parts.append(f"kill at {self.kill_at:.2f} s" if self.kill_at is not None
                     else "no kill")
        if self.aim:
            parts.append(f"failpoint {self.aim}")
        if self.worker_kills:
            parts.append("worker kills at " + ", ".join(f"{t:.2f}" for t in self.worker_kills))
        if self.compact_at is not None:
            parts.append(f"compact at {self.compact_at:.2f} s")
        return "; ".join(parts)


@dataclass
class Stats:
    rounds: int = 0
    restarts: int = 0
    supervisor_kills: int = 0
    worker_kills: int = 0
    failpoint_kills: int = 0
    worker_kills_skipped: int = 0  # the step could not afford another failure
    worker_kills_idle: int = 0  # the worker had not run a step yet
    points_hit: Counter[str] = field(default_factory=Counter)
    points_aimed: Counter[str] = field(default_factory=Counter)
    compactions_requested: int = 0
    executed_steps: int = 0
    re_executed_steps: int = 0
    reference_steps: int = 0
    max_attempt_seen: int = 0
    reference_seconds: float = 0.0

    @property
    def kills(self) -> int:
        return self.supervisor_kills + self.worker_kills + self.failpoint_kills


class UsageError(Exception):
    """A user error: bad APP, bad input file, bad failpoint spec (exit 2)."""


class Aborted(Exception):
    """The crash test could not run (the reference itself failed); exit 1."""


class CrashTest:
    """Runs the reference, the crash rounds and the checks; ``run()`` returns the report."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.stats = Stats()
        self.violations: list[Violation] = []
        self.root: Path | None = None
        self.kept: Path | None = None
        self.kills_left = cfg.kills
        self.stop_early = False
        self._write_ahead = WriteAheadCheck()
        self._found: list[Violation] = []  # this round's violations found between restarts
        self.reference: dict[str, Outcome] = {}
        self.ref_failures: Counter[tuple[str, int]] = Counter()
        self.first_step_at = 1.0  # seconds from a supervisor's start to its first step
        self.work_window = 1.5  # seconds after that in which kills land
        self.longest_step = 0.0  # seconds, in the reference
        self._stalled = 0  # restarts in a row that finished no step
        self.step_seconds = 0.1  # a step's length on one worker, from the reference
        self.started = time.monotonic()
        self.details: dict[str, list[str]] = {}  # run id -> its records, for the report
        self._aim_groups = ([p for p in AIM_POINTS if p in CRITICAL],
                            [p for p in AIM_POINTS if p not in CRITICAL])
        self._aim_next = [0, 0]
        self._aims_made = 0
        self._caller_points: set[str] = set()
        self._caller_spec = ""
        self._progress_tty = sys.stderr.isatty()
        self._last_progress = ""
        self._failing_round: Path | None = None

    # ---------------------------------------------------------------- set-up

    def _load(self) -> list[bytes]:
        from .pool import load_import_string

        cfg = self.cfg
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            load_import_string(cfg.app)
        except ImportError as e:
            raise UsageError(f"cannot load {cfg.app!r}: {e}") from None
        except Exception as e:  # noqa: BLE001 - the user's module failed while importing
            raise UsageError(f"importing {cfg.app!r} raised {type(e).__name__}: {e}") from None
        if cfg.inputs is not None:
            inputs = list(cfg.inputs)
            if not inputs:
                raise UsageError("the input file has no non-empty lines")
        else:
            module = sys.modules[cfg.app.partition(":")[0]]
            given = getattr(module, "INPUTS", None)
            if given is not None:
                inputs = [x if isinstance(x, bytes) else str(x).encode() for x in given]
            else:
                inputs = [str(i).encode() for i in range(cfg.runs or 8)]
        n = cfg.runs or len(inputs)
        return [inputs[i % len(inputs)] for i in range(n)]

    def _check_caller_failpoints(self) -> None:
        from . import failpoints

        spec = os.environ.get("JOURNALED_FAILPOINTS", "")
        try:
            failpoints.configure(spec)
        except ValueError as e:
            raise UsageError(f"JOURNALED_FAILPOINTS: {e}") from None
        finally:
            # The caller's failpoints are for the supervisors, not for this process.
            failpoints.configure("")
        self._caller_spec = spec
        self._caller_points = {e.partition("=")[0].strip() for e in spec.split(",") if e.strip()}

    # ------------------------------------------------------------------ run

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        inputs = self._load()
        self._check_caller_failpoints()
        ids = [f"ct-{i:04d}" for i in range(len(inputs))]
        if cfg.scratch is not None:
            cfg.scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="journaled-crashtest-", dir=cfg.scratch))
        try:
            self._reference(ids, inputs)
            while True:
                self.stats.rounds += 1
                self._round(self.stats.rounds, ids, inputs)
                if self.violations or self.stop_early or self.kills_left <= 0:
                    break
        except BaseException:
            self._failing_round = self._failing_round or self.root
            raise
        finally:
            self._end_progress()
            if cfg.keep or self.violations or self._failing_round is not None:
                self.kept = self.root
            else:
                shutil.rmtree(self.root, ignore_errors=True)
        return self.report()

    def _base_env(self, log: Path, crash: bool) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("JOURNALED_STATE", None)
        if not crash:
            for k in PASS_THROUGH:
                env.pop(k, None)
        env[ENV_APP] = self.cfg.app
        env[ENV_LOG] = str(log)
        env["PYTHONFAULTHANDLER"] = "1"  # a hung supervisor dumps its stacks on SIGABRT
        cwd = os.getcwd()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [cwd, env.get("PYTHONPATH")]))
        return env

    def _crash_env(self, log: Path, plan: Plan) -> dict[str, str]:
        """A crash-round supervisor's environment: power loss, its seed, its failpoints."""
        env = self._base_env(log, crash=True)
        env["JOURNALED_SIMULATE_POWER_LOSS"] = "1" if self.cfg.power_loss else "0"
        env["JOURNALED_FAILPOINT_SEED"] = str(plan.seed)
        env["JOURNALED_FAILPOINTS"] = ",".join(filter(None, [self._caller_spec, plan.aim]))
        return env

    def _command(self, state: Path, crash: bool) -> list[str]:
        cmd = [sys.executable, "-m", "journaled.cli", "run", WRAPPED, "--state", str(state),
               "--until-idle", "-w", str(self.cfg.workers),
               "--max-attempts", str(self.cfg.max_attempts), "--on-terminal", HOOK]
        if crash:
            cmd += ["--max-abandons", str(NO_ABANDON_LIMIT)]
        return cmd

    def _submit(self, state: Path, ids: list[str], inputs: list[bytes]) -> None:
        from .client import Client

        client = Client(state)
        client.submit_many(inputs, run_ids=ids)
        # Signals go in right behind the submissions: the journal buffers each
        # until its run waits on the key, so workflows that park get woken.
        for rid in ids:
            for key, data in self.cfg.signals:
                client.signal(rid, key, data)

    # ------------------------------------------------------------ reference

    def _reference(self, ids: list[str], inputs: list[bytes]) -> None:
        from .tools import records

        assert self.root is not None
        state, log = self.root / "reference", self.root / "reference.exec"
        self._submit(state, ids, inputs)
        t0 = time.monotonic()
        self._progress("reference: running the workload crash-free")
        exec_log = ExecLog(log)
        res = self._supervise(state, self._base_env(log, crash=False),
                              self._command(state, crash=False), None, None, exec_log,
                              reference=True)
        self.stats.reference_seconds = time.monotonic() - t0
        if res.code != 0:
            self._failing_round = state
            tail = res.stderr_tail or "(no output)"
            if any(v.check == "hang" for v in self.violations):
                raise Aborted(f"the crash-free reference run did not finish within --timeout "
                              f"{self.cfg.timeout:g} s; every stack was dumped to "
                              f"{state.parent / (state.name + '.stderr')}")
            if "cannot load" in tail or "importing" in tail:
                raise UsageError(tail.splitlines()[-1].removeprefix("journaled: error: "))
            raise Aborted(f"the crash-free reference run {res.how}; its output:\n{tail}")
        final = final_outcomes(state)
        missing = [rid for rid in ids if final.get(rid) is None]
        if missing:
            raise Aborted(f"the crash-free reference left {len(missing)} runs unfinished "
                          f"({', '.join(missing[:5])})")
        self.reference = {rid: o for rid, o in final.items() if o is not None}
        self.ref_failures = failures_per_step(rec for _s, _o, rec in records(state))
        exec_log.poll()
        self.stats.reference_steps = sum(1 for ln in exec_log.lines if ln.kind == "exec")
        # Start-up (interpreter, replay, forkserver, workers) takes a second or
        # more; kills are timed from the first step, within the work's length.
        if res.first_exec is not None:
            self.first_step_at = res.first_exec
            busy = (res.last_line - res.first_exec) * self.cfg.workers
            self.step_seconds = max(0.001, busy / max(1, self.stats.reference_steps))
        work = self.stats.reference_seconds - self.first_step_at
        # The longest step must fit in a restart, or it never completes (and
        # restarts that finish nothing widen the window further; see _plan).
        self.longest_step = _longest_step(rec for _s, _o, rec in records(state))
        self.work_window = max(min(1.5, max(0.3, work)), self.longest_step)

    # ---------------------------------------------------------------- round

    def _round(self, n: int, ids: list[str], inputs: list[bytes]) -> None:
        from .tools import check

        assert self.root is not None
        state = self.root / f"round-{n:03d}"
        log = self.root / f"round-{n:03d}.exec"
        self._submit(state, ids, inputs)
        archive = Archive(state)
        exec_log = ExecLog(log)
        self._write_ahead = WriteAheadCheck()
        self._found = []
        finished = False
        fatal = False
        while self.kills_left > 0 and not self.stop_early:
            plan = self._plan(state, archive)
            done = _steps_done(archive)
            res = self._restart(state, log, archive, exec_log, plan)
            self._after_exit(archive, exec_log, res)
            self._stalled = 0 if _steps_done(archive) > done else self._stalled + 1
            self._progress_round(n, exec_log, len(ids))
            if res.code == 0:
                finished = True
                break
            if res.fatal:
                fatal = True
                break
        if not finished and not fatal:
            fatal = not self._finish(state, log, archive, exec_log)
        archive.update()
        exec_log.poll()
        self._progress_round(n, exec_log, len(ids))
        self._count_steps(exec_log)
        if fatal:
            self._failing_round = state
            self._collect_details(archive, exec_log)
            return
        found = self._found + check_round(exec_log.lines, archive, final_outcomes(state),
                                          self.reference, self.cfg.max_attempts, check(state))
        found.sort(key=lambda v: list(CHECKS).index(v.check))
        if found:
            self.violations += found
            self._failing_round = state
            self._collect_details(archive, exec_log)
        elif not self.cfg.keep:
            shutil.rmtree(state, ignore_errors=True)
            log.unlink(missing_ok=True)

    def _finish(self, state: Path, log: Path, archive: Archive, exec_log: ExecLog) -> bool:
        """Clean runs until the work is done; a caller's crash failpoint may need several."""
        for _ in range(50):
            res = self._supervise(state, self._crash_env(log, Plan(0, None)),
                                  self._command(state, crash=True), Plan(0, None), archive,
                                  exec_log)
            self.stats.restarts += 1
            self._after_exit(archive, exec_log, res)
            if res.code == 0:
                return True
            if res.fatal:
                return False
            if res.code == -signal.SIGKILL:
                self.stats.failpoint_kills += 1
                self.stats.points_hit["(caller's failpoints)"] += 1
        self.violations.append(Violation("hang", "-", "50 clean restarts did not finish "
                                                      "the work"))
        return False

    def _after_exit(self, archive: Archive, exec_log: ExecLog, res: _Result) -> None:
        archive.update()
        exec_log.poll()
        found = self._write_ahead.after_exit(exec_log.lines, archive, res.how)
        if found:
            # A broken ordering is proven: stop killing, finish the round, report it.
            self._found += found
            self.stop_early = True

    def _count_steps(self, exec_log: ExecLog) -> None:
        per_step: Counter[tuple[str, int]] = Counter()
        for ln in exec_log.lines:
            if ln.kind == "exec":
                self.stats.executed_steps += 1
                per_step[(ln.run_id, ln.step)] += 1
                self.stats.max_attempt_seen = max(self.stats.max_attempt_seen, ln.attempt)
        self.stats.re_executed_steps += sum(n - 1 for n in per_step.values())

    def _collect_details(self, archive: Archive, exec_log: ExecLog) -> None:
        from .tools import record_line

        shown = set()
        for v in self.violations:
            if v.run_id in shown or v.run_id == "-" or len(shown) >= 5:
                continue
            shown.add(v.run_id)
            lines = [record_line(r) for r in archive.of_run(v.run_id)]
            lines += [f"exec-log {ln.index + 1}: {ln.kind} step {ln.step} attempt "
                      f"{ln.attempt} pid {ln.pid}" if ln.kind == "exec" else
                      f"exec-log {ln.index + 1}: term {ln.status} {_short(ln.result)}"
                      for ln in exec_log.lines if ln.run_id == v.run_id]
            self.details[v.run_id] = lines

    # ----------------------------------------------------------------- plans

    def _plan(self, state: Path, archive: Archive) -> Plan:
        rng = self.rng
        plan = Plan(seed=rng.randrange(1, 2**31), kill_at=0.0)
        # Restarts that finished nothing widen the window, so the work always
        # moves on, however long its steps or unlucky the draws.
        window = self.work_window * 1.5 ** min(self._stalled, 6)
        if rng.random() < 0.2 and not self._stalled:
            # Some kills land in start-up: replay, recovery, re-fired hooks.
            plan.kill_at = rng.uniform(0.05, self.first_step_at)
        else:
            plan.kill_at = self.first_step_at + rng.uniform(0.0, window)
        if rng.random() < AIM_SHARE and self._stalled < 3:
            # The clock is only the fallback of an aimed restart.
            fallback = self.first_step_at + window + rng.uniform(0.2, 1.0)
            plan.aim = self._next_aim(archive, fallback - self.first_step_at)
            if plan.aim is not None:
                plan.kill_at = fallback
        worker_aim = plan.aim is not None and plan.aim.partition("=")[0] in _WORKER_POINTS
        if self.cfg.kill_workers and not worker_aim and self.kills_left > 1:
            n = rng.choice((0, 1, 1, 2))
            lo = min(self.first_step_at, plan.kill_at)
            plan.worker_kills = sorted(rng.uniform(lo, plan.kill_at) for _ in range(n))
        if plan.aim is not None and plan.aim.startswith(("compact.", "inbox.before_unlink")):
            plan.compact_at = self.first_step_at + rng.uniform(0.0, self.work_window / 2)
        elif rng.random() < 0.1:
            plan.compact_at = rng.uniform(0.0, plan.kill_at)
        return plan

    def _next_aim(self, archive: Archive, work_seconds: float) -> str | None:
        rng = self.rng
        group = 0 if self._aims_made % 3 < 2 else 1
        self._aims_made += 1
        points = self._aim_groups[group]
        for _ in range(len(points)):
            point = points[self._aim_next[group] % len(points)]
            self._aim_next[group] += 1
            if point in self._caller_points:
                continue
            if point in _WORKER_POINTS and not self._worker_faults_ok(archive):
                continue
            # Fire at a random one of the commits left to do, not always the first.
            left = max(2, self.stats.reference_steps - _steps_done(archive))
            p = min(100, max(2, round(100 / rng.uniform(1, left))))
            # A worker point fires on the N-th step of every worker process, a
            # fresh one too. With N above half the steps a worker can run in
            # this restart, the fresh workers never get there: at most the two
            # first ones fail a step, which stays below --max-attempts.
            most = max(2, int(work_seconds / self.step_seconds) + 1)
            action = AIM_POINTS[point].format(p=p, hp=rng.choice((25, 50, 100)),
                                              n=rng.randint(most // 2 + 1, most))
            self.stats.points_aimed[point] += 1
            extra = AIM_EXTRA.get(point)
            if extra and extra.partition("=")[0] not in self._caller_points:
                return f"{point}={action},{extra}"
            return f"{point}={action}"
        return None

    def _worker_faults_ok(self, archive: Archive) -> bool:
        """Whether two more failures of any live step keep it below --max-attempts.

        A worker failpoint can fail the same step on both workers before a
        fresh worker (whose hit count starts over) runs it.
        """
        failures = failures_per_step(archive.records)
        for key, n in failures.items():
            if n + self.ref_failures.get(key, 0) + 2 >= self.cfg.max_attempts:
                return False
        return self.cfg.max_attempts > 2 + max(self.ref_failures.values(), default=0)

    # -------------------------------------------------------------- restarts

    def _restart(self, state: Path, log: Path, archive: Archive, exec_log: ExecLog,
                 plan: Plan) -> _Result:
        res = self._supervise(state, self._crash_env(log, plan),
                              self._command(state, crash=True), plan, archive, exec_log)
        self.stats.restarts += 1
        if res.code == -signal.SIGKILL:
            if res.killed_by_us:
                self.stats.supervisor_kills += 1
                self.kills_left -= 1
            else:
                point = plan.aim.partition("=")[0] if plan.aim else "(caller's failpoints)"
                self.stats.failpoint_kills += 1
                self.stats.points_hit[point] += 1
                self.kills_left -= 1
        if plan.aim and plan.aim.partition("=")[0] in _WORKER_POINTS:
            # Worker deaths of this restart were the failpoint's (no other worker kills).
            archive.update()
            hits = max(0, _worker_deaths(archive.records) - res.worker_deaths_before)
            if hits:
                self.stats.points_hit[plan.aim.partition("=")[0]] += hits
                self.stats.failpoint_kills += hits
                self.kills_left -= hits
        return res

    def _supervise(self, state: Path, env: dict[str, str], cmd: list[str], plan: Plan | None,
                   archive: Archive | None, exec_log: ExecLog, reference: bool = False
                   ) -> _Result:
        """Start one supervisor, carry out its plan, wait for it and for every child of it."""
        from .inbox import CompactMsg, post

        assert self.root is not None
        errpath = state.parent / f"{state.name}.stderr"
        with open(errpath, "ab") as err:
            err.write(f"--- {' '.join(cmd[3:])}; {plan.describe() if plan else ''}\n".encode())
            err.flush()
            start_pos = err.tell()
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True)
        res = _Result()
        if archive is not None:
            res.worker_deaths_before = _worker_deaths(archive.records)
        seen_exec = len(exec_log.lines)
        t0 = time.monotonic()
        tracked: dict[int, int] = {}
        st = _start_time(proc.pid)
        if st is not None:
            tracked[proc.pid] = st
        worker_kills = list(plan.worker_kills) if plan else []
        compact_at = plan.compact_at if plan else None
        kill_at = plan.kill_at if plan else None
        last_track = -1.0
        try:
            while True:
                code = proc.poll()
                if code is not None:
                    break
                now = time.monotonic() - t0
                if now - last_track >= 0.05:
                    self._track(proc.pid, tracked)
                    last_track = now
                    if archive is not None:
                        archive.update()
                    if reference or res.first_exec is None:
                        before = len(exec_log.lines)
                        exec_log.poll()
                        if len(exec_log.lines) > before:
                            res.last_line = now
                        if res.first_exec is None and any(
                                ln.kind == "exec" for ln in exec_log.lines[seen_exec:]):
                            res.first_exec = now
                if compact_at is not None and now >= compact_at:
                    compact_at = None
                    if archive is not None:
                        archive.update()  # what the compaction is about to drop
                    post(state, CompactMsg(time.time()))
                    self.stats.compactions_requested += 1
                if worker_kills and now >= worker_kills[0]:
                    worker_kills.pop(0)
                    if archive is not None and self.kills_left > 1:
                        self._kill_a_worker(proc.pid, archive, exec_log, tracked)
                if kill_at is not None and now >= kill_at:
                    self._track(proc.pid, tracked)
                    res.killed_by_us = _signal(proc.pid, signal.SIGKILL)
                    proc.wait()
                    break
                if kill_at is None and now > self.cfg.timeout:
                    self._hang(proc, tracked, now)
                    res.fatal = True
                    break
                time.sleep(0.01 if kill_at is not None or worker_kills else 0.05)
        except BaseException:
            # Interrupted (Ctrl-C, a bug): leave no supervisor or worker behind.
            self._track(proc.pid, tracked)
            for pid in [proc.pid, *_alive(tracked)]:
                _signal(pid, signal.SIGKILL)
            raise
        res.code = proc.wait()
        res.how = _how(res.code)
        if res.code not in (0, -signal.SIGKILL) and not res.fatal and not reference:
            res.fatal = True
            self.violations.append(Violation("exit", "-", (
                f"the supervisor {res.how} (state {state}); its last output:\n"
                + _tail(errpath, start_pos))))
        res.stderr_tail = _tail(errpath, start_pos)
        self._reap(proc.pid, tracked, res)
        return res

    def _track(self, pid: int, tracked: dict[int, int]) -> None:
        for p in _descendants(pid):
            if p not in tracked:
                st = _start_time(p)
                if st is not None:
                    tracked[p] = st

    def _reap(self, sup_pid: int, tracked: dict[int, int], res: _Result) -> None:
        """Every process of a gone supervisor must be gone within ORPHAN_GRACE seconds."""
        tracked.pop(sup_pid, None)
        deadline = time.monotonic() + ORPHAN_GRACE
        left = _alive(tracked)
        while left and time.monotonic() < deadline:
            time.sleep(0.02)
            left = _alive(tracked)
        if left:
            desc = ", ".join(f"pid {p} ({_cmdline(p)[:80]})" for p in left)
            self.violations.append(Violation("orphan", "-", (
                f"{len(left)} process(es) of supervisor pid {sup_pid} were still running "
                f"{ORPHAN_GRACE:.0f} s after it {res.how}: {desc}; an orphan worker would "
                "run steps after the restart")))
            res.fatal = True
            for p in left:
                _signal(p, signal.SIGKILL)

    def _hang(self, proc: subprocess.Popen[bytes], tracked: dict[int, int], now: float) -> None:
        self._track(proc.pid, tracked)
        for p in [proc.pid, *_alive(tracked)]:
            _signal(p, signal.SIGABRT)  # PYTHONFAULTHANDLER=1: every thread's stack to stderr
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        for p in [proc.pid, *_alive(tracked)]:
            _signal(p, signal.SIGKILL)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.violations.append(Violation("hang", "-", (
            f"a supervisor without any kill planned was still running after {now:.0f} s "
            f"(--timeout {self.cfg.timeout:g}); its stacks are in its stderr file")))

    def _kill_a_worker(self, sup_pid: int, archive: Archive, exec_log: ExecLog,
                       tracked: dict[int, int]) -> None:
        """SIGSTOP a random worker, and SIGKILL it only if its step can afford a failure."""
        workers = sorted(_workers(sup_pid))
        if not workers:
            return
        pid = self.rng.choice(workers)
        if not _signal(pid, signal.SIGSTOP):
            return
        try:
            exec_log.poll()
            cur = exec_log.last_exec_by_pid.get(pid)
            if cur is None:
                # Killing a worker that never ran a step is a start-up death, which
                # the supervisor gives up on after a few in a row: not our test.
                self.stats.worker_kills_idle += 1
                return
            archive.update()
            key = (cur.run_id, cur.step)
            fails = failures_per_step(archive.records)
            if fails[key] + self.ref_failures[key] + 2 <= self.cfg.max_attempts:
                st = _start_time(pid)
                if st is not None:
                    tracked[pid] = st
                if _signal(pid, signal.SIGKILL):
                    self.stats.worker_kills += 1
                    self.kills_left -= 1
                    return
            self.stats.worker_kills_skipped += 1
        finally:
            _signal(pid, signal.SIGCONT)

    # -------------------------------------------------------------- progress

    def _progress(self, text: str) -> None:
        if not self.cfg.progress or text == self._last_progress:
            return
        if self._progress_tty:
            pad = max(0, len(self._last_progress) - len(text))
            sys.stderr.write("\r" + text + " " * pad)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()
        self._last_progress = text

    def _end_progress(self) -> None:
        if self.cfg.progress and self._progress_tty and self._last_progress:
            sys.stderr.write("\n")
            sys.stderr.flush()

    def _progress_round(self, n: int, exec_log: ExecLog, runs: int) -> None:
        s = self.stats
        done = len({ln.run_id for ln in exec_log.lines if ln.kind == "term"})
        self._progress(
            f"crashtest round {n} restart {s.restarts}: kills {s.kills}/{self.cfg.kills} "
            f"(supervisor {s.supervisor_kills}, workers {s.worker_kills}, failpoints "
            f"{s.failpoint_kills}), runs reported {done}/{runs}, "
            f"{time.monotonic() - self.started:.1f} s")

    # ---------------------------------------------------------------- report

    def report(self) -> dict[str, Any]:
        s, cfg = self.stats, self.cfg
        kinds = [k for k in CHECKS if any(v.check == k for v in self.violations)]
        return {
            "ok": not self.violations,
            "app": cfg.app,
            "seed": cfg.seed,
            "runs": len(self.reference),
            "rounds": s.rounds,
            "power_loss": cfg.power_loss,
            "kill_workers": cfg.kill_workers,
            "workers": cfg.workers,
            "max_attempts": cfg.max_attempts,
            "kills": {"total": s.kills, "budget": cfg.kills, "supervisor": s.supervisor_kills,
                      "workers": s.worker_kills, "failpoint": s.failpoint_kills,
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
            "reference_seconds": round(s.reference_seconds, 3),
            "longest_step_seconds": round(self.longest_step, 3),
            "elapsed": round(time.monotonic() - self.started, 3),
            "failed_checks": kinds,
            "first_failed_check": kinds[0] if kinds else None,
            "violations": [v.as_dict() for v in self.violations],
            "records": self.details,
            "kept": str(self.kept) if self.kept else None,
            "failing_state": str(self._failing_round) if self._failing_round else None,
        }


@dataclass
class _Result:
    code: int = 0
    how: str = ""
    killed_by_us: bool = False
    fatal: bool = False
    stderr_tail: str = ""
    worker_deaths_before: int = 0
    first_exec: float | None = None  # seconds from start to the first exec line
    last_line: float = 0.0  # seconds from start to the last exec-log line (reference only)


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _tail(path: Path, start: int, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace").rstrip()
    return "\n".join(text.splitlines()[-lines:])


# ------------------------------------------------------------------- presentation


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
         + (", worker kills" if rep["kill_workers"] else "")),
        ("kills", f"{k['total']} of {k['budget']}: supervisor {k['supervisor']}, "
                  f"workers {k['workers']}, failpoint-aimed {k['failpoint']}"),
        ("failpoints aimed", aimed),
        ("failpoints hit", hit),
        ("worker kills skipped", f"{k['worker_kills_skipped']} (the step had no failure to "
                                 f"spare), {k['worker_kills_idle']} (worker had not run yet)"),
        ("restarts", str(rep["restarts"])),
        ("compactions asked", str(rep["compactions_requested"])),
        ("executed steps", f"{rep['executed_steps']} (crash-free: {rep['reference_steps']} "
                           "per round)"),
        ("re-executed steps", f"{rep['re_executed_steps']} (at-least-once exposure)"),
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
                out.append(f"  {v['message']}")
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


# ----------------------------------------------------------------------- command


def _fail(msg: str, code: int = 2) -> NoReturn:
    click.echo(f"journaled: error: {msg}", err=True)
    sys.exit(code)


def _lines(data: bytes) -> Iterator[bytes]:
    for ln in data.splitlines():
        ln = ln.rstrip(b"\r\n")
        if ln.strip():
            yield ln


@click.command("crashtest")
@click.argument("app", required=False)
@click.option("--runs", type=click.IntRange(min=1), default=None,
              help="Runs per round (inputs are cycled); default: one per input.")
@click.option("--kills", type=click.IntRange(min=0), default=50, show_default=True,
              help="Kills to make in all (supervisor, workers, aimed failpoints).")
@click.option("--seed", type=int, default=None,
              help="Seed of every random choice; the report prints it to repeat a run.")
@click.option("--input-file", type=click.File("rb"),
              help="One input per non-empty line; default: the app module's INPUTS list, "
                   "else 0, 1, 2, ...")
@click.option("-w", "--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Worker processes per supervisor.")
@click.option("--kill-workers/--no-kill-workers", default=True, show_default=True,
              help="Also kill single worker processes.")
@click.option("--power-loss/--no-power-loss", default=True, show_default=True,
              help="Lose unsynced journal writes on every kill, as a power cut would.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=3, show_default=True,
              help="The supervisor's --max-attempts, in every phase.")
@click.option("--timeout", type=click.FloatRange(min=1), default=120.0, show_default=True,
              help="Seconds a supervisor with no kill planned may take before it counts "
                   "as hung.")
@click.option("--keep", is_flag=True, help="Keep the temporary state directories.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--list-failpoints", is_flag=True, help="List the failpoints and exit.")
@click.option("--signal", "signals", multiple=True, metavar="KEY=DATA",
              help="Send this signal to every run right after it is submitted (repeatable), "
                   "for workflows that wait with ContinueOnSignal.")
@click.option("--state", "scratch", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Where crashtest makes its own throw-away state directories "
                                 "(default: the system temp dir). Your state is never touched.")
def crashtest(app: str | None, runs: int | None, kills: int, seed: int | None, input_file: Any,
              workers: int, kill_workers: bool, power_loss: bool, max_attempts: int,
              timeout: float, keep: bool, as_json: bool, list_failpoints: bool,
              signals: tuple[str, ...], scratch: Path | None) -> None:
    """Crash-test APP (``module:function``): kill -9 it at random and check every run.

    Runs the workload once crash-free for reference, then again while killing
    the supervisor (at random moments and at aimed failpoints) and its
    workers, restarting it after each kill, in power-loss mode. Passes when
    every run ended exactly once with the reference outcome, no attempt ran
    twice, no outcome was reported before it was durable, and the journal
    verifies. Temporary state is removed unless --keep or a failure.

    \b
    Exit codes: 0 pass; 1 a check failed (the report names the run and shows
    its journal records); 2 bad APP or options.
    """
    from . import failpoints

    if list_failpoints:
        if as_json:
            click.echo(json.dumps(failpoints.POINTS))
        else:
            w = max(map(len, failpoints.POINTS))
            for name, what in failpoints.POINTS.items():
                aimed = "" if name in AIM_POINTS else "  (not aimed by crashtest)"
                click.echo(f"{name:<{w}}  {what}{aimed}")
        return
    if not app:
        _fail("missing APP: give the runner as module:function, e.g. "
              "'journaled crashtest examples.primes:runner'")
    if seed is None:
        seed = random.randrange(1_000_000)
    inputs = list(_lines(input_file.read())) if input_file is not None else None
    sigs = []
    for spec in signals:
        key, sep, data = spec.partition("=")
        if not sep or not key:
            _fail(f"bad --signal {spec!r}: use KEY=DATA, e.g. --signal approve=yes")
        sigs.append((key, data.encode()))
    cfg = Config(app=app, runs=runs, kills=kills, seed=seed, inputs=inputs, workers=workers,
                 kill_workers=kill_workers, power_loss=power_loss, max_attempts=max_attempts,
                 timeout=timeout, keep=keep, signals=sigs, scratch=scratch)
    test = CrashTest(cfg)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # the same clean-up as Ctrl-C: no supervisor left behind

    signal.signal(signal.SIGTERM, on_term)
    try:
        rep = test.run()
    except UsageError as e:
        _fail(str(e), 2)
    except Aborted as e:
        where = f" (state kept in {test.kept})" if test.kept else ""
        _fail(f"{e}{where}", 1)
    except KeyboardInterrupt:
        _fail(f"interrupted (state kept in {test.kept})", 1)
    if as_json:
        click.echo(json.dumps(rep))
    else:
        click.echo(format_report(rep))
    sys.exit(0 if rep["ok"] else 1)
