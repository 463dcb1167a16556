"""One supervisor's life under crashtest: start it, carry out its plan, judge its end.

The supervisor is a ``journaled run`` subprocess in its own session. While
it runs, crashtest follows its process tree (``procs``), reads the journal
and the exec log, and carries out the restart's plan: worker kills
(SIGSTOP first, SIGKILL only if the step can afford a failure), helper
kills (forkserver, resource tracker), a compaction request, and the
supervisor's own kill. After it ends: every process of it must be gone
within ``ORPHAN_GRACE`` s, it must not have exited by itself with an error,
and its stderr must be clean.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import procs
from .archive import Archive, failures_per_step, worker_deaths
from .checks import DIRTY_STDERR, ORPHAN_GRACE, Violation, dirty_lines
from .execlog import ExecLog
from .plan import _WORKER_POINTS, Config, Plan, Stats


class Supervising:
    """The supervising half of ``CrashTest`` (a mixin: it shares the test's figures)."""

    cfg: Config
    rng: random.Random
    stats: Stats
    kills_left: int
    violations: list[Violation]
    root: Path | None
    ref_failures: Counter[tuple[str, int]]
    _self_exits_in_a_row: int

    def _crash_env(self, log: Path, plan: Plan) -> dict[str, str]:
        raise NotImplementedError

    def _command(self, state: Path, crash: bool) -> list[str]:
        raise NotImplementedError

    def _restart(self, state: Path, log: Path, archive: Archive, exec_log: ExecLog,
                 plan: Plan) -> Result:
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
            hits = max(0, worker_deaths(archive.records) - res.worker_deaths_before)
            if hits:
                self.stats.points_hit[plan.aim.partition("=")[0]] += hits
                self.stats.failpoint_kills += hits
                self.kills_left -= hits
        return res

    def _supervise(self, state: Path, env: dict[str, str], cmd: list[str], plan: Plan | None,
                   archive: Archive | None, exec_log: ExecLog, reference: bool = False
                   ) -> Result:
        """Start one supervisor, carry out its plan, wait for it and for every child of it."""
        from ..inbox import CompactMsg, post

        assert self.root is not None
        errpath = state.parent / f"{state.name}.stderr"
        with open(errpath, "ab") as err:
            err.write(f"--- {' '.join(cmd[3:])}; {plan.describe() if plan else ''}\n".encode())
            err.flush()
            start_pos = err.tell()
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True)
        res = Result()
        if archive is not None:
            res.worker_deaths_before = worker_deaths(archive.records)
        seen_exec = len(exec_log.lines)
        t0 = time.monotonic()
        tracked: dict[int, int] = {}
        st = procs.start_time(proc.pid)
        if st is not None:
            tracked[proc.pid] = st
        worker_kills = list(plan.worker_kills) if plan else []
        helper_kills = list(plan.helper_kills) if plan else []
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
                if helper_kills and now >= helper_kills[0][0]:
                    _at, kind = helper_kills.pop(0)
                    if self.kills_left > 1:
                        self._kill_a_helper(proc.pid, kind, tracked)
                if worker_kills and now >= worker_kills[0]:
                    worker_kills.pop(0)
                    if archive is not None and self.kills_left > 1:
                        self._kill_a_worker(proc.pid, archive, exec_log, tracked)
                if kill_at is not None and now >= kill_at:
                    self._track(proc.pid, tracked)
                    res.killed_by_us = procs.send(proc.pid, signal.SIGKILL)
                    proc.wait()
                    break
                if kill_at is None and now > self.cfg.timeout:
                    self._hang(proc, tracked, now)
                    res.fatal = True
                    break
                time.sleep(0.01 if kill_at is not None or worker_kills or helper_kills
                           else 0.05)
        except BaseException:
            # Interrupted (Ctrl-C, a bug): leave no supervisor or worker behind.
            self._track(proc.pid, tracked)
            for pid in [proc.pid, *procs.alive(tracked)]:
                procs.send(pid, signal.SIGKILL)
            raise
        res.code = proc.wait()
        res.how = _how(res.code)
        self._reap(proc.pid, tracked, res)
        res.stderr_tail = _tail(errpath, start_pos)
        if res.code not in (0, -signal.SIGKILL) and not res.fatal and not reference:
            # It ended by itself: the kills we sent never end it with an error.
            self.stats.self_exits += 1
            self._self_exits_in_a_row += 1
            if self.stats.self_exits <= 3:
                self.violations.append(Violation("exit", "-", (
                    f"the supervisor {res.how} by itself (state {state}); its last output:\n"
                    + res.stderr_tail)))
            if self._self_exits_in_a_row >= 5:
                res.fatal = True  # a crash loop: restarting again shows nothing new
        else:
            self._self_exits_in_a_row = 0
        self._check_stderr(errpath, start_pos, state)
        return res

    def _check_stderr(self, errpath: Path, start: int, state: Path) -> None:
        """The clean-stderr check: no traceback, leak warning or KeyError, even after a kill."""
        dirty = dirty_lines(_tail(errpath, start, lines=10_000))
        if not dirty:
            return
        self.stats.dirty_stderr += 1
        if self.stats.dirty_stderr <= 3:
            shown = "\n".join(f"  {ln[:200]}" for ln in dict.fromkeys(dirty).keys())
            self.violations.append(Violation("stderr", "-", (
                f"a supervisor's stderr ({errpath.name}, state {state}) has "
                f"{len(dirty)} line(s) with {' / '.join(DIRTY_STDERR)}:\n{shown}")))

    def _track(self, pid: int, tracked: dict[int, int]) -> None:
        for p in procs.descendants(pid):
            if p not in tracked:
                st = procs.start_time(p)
                if st is not None:
                    tracked[p] = st

    def _reap(self, sup_pid: int, tracked: dict[int, int], res: Result) -> None:
        """Every process of a gone supervisor must be gone within ORPHAN_GRACE seconds."""
        tracked.pop(sup_pid, None)
        deadline = time.monotonic() + ORPHAN_GRACE
        left = procs.alive(tracked)
        while left and time.monotonic() < deadline:
            time.sleep(0.02)
            left = procs.alive(tracked)
        if left:
            desc = ", ".join(f"pid {p} ({procs.cmdline(p)[:80]})" for p in left)
            self.violations.append(Violation("orphan", "-", (
                f"{len(left)} process(es) of supervisor pid {sup_pid} were still running "
                f"{ORPHAN_GRACE:.0f} s after it {res.how}: {desc}; an orphan worker would "
                "run steps after the restart")))
            res.fatal = True
            for p in left:
                procs.send(p, signal.SIGKILL)

    def _hang(self, proc: subprocess.Popen[bytes], tracked: dict[int, int], now: float) -> None:
        self._track(proc.pid, tracked)
        for p in [proc.pid, *procs.alive(tracked)]:
            procs.send(p, signal.SIGABRT)  # PYTHONFAULTHANDLER=1: every thread's stack to stderr
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        for p in [proc.pid, *procs.alive(tracked)]:
            procs.send(p, signal.SIGKILL)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.violations.append(Violation("hang", "-", (
            f"a supervisor without any kill planned was still running after {now:.0f} s "
            f"(--timeout {self.cfg.timeout:g}); its stacks are in its stderr file")))

    def _kill_a_helper(self, sup_pid: int, kind: str, tracked: dict[int, int]) -> None:
        """kill -9 the supervisor's forkserver or resource tracker; it must replace it."""
        pid = procs.helpers(sup_pid).get(kind)
        st = procs.start_time(pid) if pid is not None else None
        if pid is None or st is None:
            self.stats.helper_kills_missed += 1
            return
        tracked[pid] = st
        if procs.send(pid, signal.SIGKILL):
            self.stats.helper_kills[kind] += 1
            self.kills_left -= 1

    def _kill_a_worker(self, sup_pid: int, archive: Archive, exec_log: ExecLog,
                       tracked: dict[int, int]) -> None:
        """SIGSTOP a random worker, and SIGKILL it only if its step can afford a failure."""
        workers = sorted(procs.workers(sup_pid))
        if not workers:
            return
        pid = self.rng.choice(workers)
        if not procs.send(pid, signal.SIGSTOP):
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
                st = procs.start_time(pid)
                if st is not None:
                    tracked[pid] = st
                if procs.send(pid, signal.SIGKILL):
                    self.stats.worker_kills += 1
                    self.kills_left -= 1
                    return
            self.stats.worker_kills_skipped += 1
        finally:
            procs.send(pid, signal.SIGCONT)


@dataclass
class Result:
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
