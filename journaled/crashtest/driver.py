"""The crash test itself: the crash-free reference, the crash rounds, the checks.

``CrashTest(cfg).run()`` returns the report (``report.build_report``).
Planning each restart (``plan.Planner``) and carrying one supervisor
through its plan (``supervise.Supervising``) are its two halves, kept in
their own modules.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .archive import (
    Archive,
    Outcome,
    failures_per_step,
    final_outcomes,
    longest_step,
    short,
    steps_done,
)
from .checks import CHECKS, Violation, WriteAheadCheck, check_round
from .execlog import ENV_APP, ENV_LOG, ENV_PAYLOAD, HOOK, WRAPPED, ExecLog
from .plan import AIM_POINTS, CRITICAL, Config, Plan, Planner, Stats
from .reader import Seen, read_log
from .supervise import Result, Supervising

# Crash rounds: a supervisor crash is crashtest's doing, never the step's.
NO_ABANDON_LIMIT = 1_000_000
# Environment a caller may set to break the supervisor on purpose; passed to
# the crash rounds, kept from the reference.
PASS_THROUGH = ("JOURNALED_FAILPOINTS", "JOURNALED_FAILPOINT_SEED",
                "JOURNALED_UNSAFE_DISPATCH_BEFORE_SYNC", "JOURNALED_SIMULATE_POWER_LOSS")


class UsageError(Exception):
    """A user error: bad APP, bad input file, bad failpoint spec (exit 2)."""


class Aborted(Exception):
    """The crash test could not run (the reference itself failed); exit 1."""


class CrashTest(Planner, Supervising):
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
        self._self_exits_in_a_row = 0
        self.reader_errors: list[str] = []  # the first few, for the report

    # ---------------------------------------------------------------- set-up

    def _load(self) -> list[bytes]:
        from ..pool import load_import_string

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
        from .. import failpoints

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
        env[ENV_PAYLOAD] = str(self.cfg.payload_bytes)
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
        # A named runner: the supervisor serves the wrapper under that name, and the
        # wrapper calls the user's runner of the same name (execlog.wrapped_runner).
        target = f"{self.cfg.runner}={WRAPPED}" if self.cfg.runner else WRAPPED
        cmd = [sys.executable, "-m", "journaled.cli", "run", target, "--state", str(state),
               "--until-idle", "-w", str(self.cfg.workers),
               "--max-attempts", str(self.cfg.max_attempts), "--on-terminal", HOOK]
        if crash:
            cmd += ["--max-abandons", str(NO_ABANDON_LIMIT)]
        return cmd

    def _submit(self, state: Path, ids: list[str], inputs: list[bytes]) -> None:
        from ..client import Client

        client = Client(state)
        # --runner only when given: a keyword that older clients do not take.
        named: dict[str, Any] = {"runner": self.cfg.runner} if self.cfg.runner else {}
        client.submit_many(inputs, self.cfg.headers or None, run_ids=ids, **named)
        # Signals go in right behind the submissions: the journal buffers each
        # until its run waits on the key, so workflows that park get woken.
        for rid in ids:
            for key, data in self.cfg.signals:
                client.signal(rid, key, data)

    # ------------------------------------------------------------ reference

    def _reference(self, ids: list[str], inputs: list[bytes]) -> None:
        from ..tools import records

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
            if res.code == 2:  # 'journaled run' exits 2 for a bad APP or bad options
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
        self.longest_step = longest_step(rec for _s, _o, rec in records(state))
        self.work_window = max(min(1.5, max(0.3, work)), self.longest_step)

    # ---------------------------------------------------------------- round

    def _round(self, n: int, ids: list[str], inputs: list[bytes]) -> None:
        from ..tools import check

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
        reader = self._start_reader(state, self.root / f"round-{n:03d}.reader")
        try:
            finished, fatal = self._restarts(n, state, log, archive, exec_log, len(ids))
        finally:
            seen = self._stop_reader(reader, self.root / f"round-{n:03d}.reader")
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
                                          self.reference, self.cfg.max_attempts, check(state),
                                          seen)
        found.sort(key=lambda v: list(CHECKS).index(v.check))
        if found:
            self.violations += found
            self._failing_round = state
            self._collect_details(archive, exec_log)
        elif not self.cfg.keep:
            shutil.rmtree(state, ignore_errors=True)
            log.unlink(missing_ok=True)
            (self.root / f"round-{n:03d}.reader").unlink(missing_ok=True)

    def _restarts(self, n: int, state: Path, log: Path, archive: Archive, exec_log: ExecLog,
                  runs: int) -> tuple[bool, bool]:
        """Restart and kill until the budget is spent; returns (finished, fatal)."""
        while self.kills_left > 0 and not self.stop_early:
            plan = self._plan(state, archive)
            done = steps_done(archive)
            res = self._restart(state, log, archive, exec_log, plan)
            self._after_exit(archive, exec_log, res)
            self._stalled = 0 if steps_done(archive) > done else self._stalled + 1
            self._progress_round(n, exec_log, runs)
            if res.code == 0:
                return True, False
            if res.fatal:
                return False, True
        return False, False

    def _start_reader(self, state: Path, path: Path) -> subprocess.Popen[bytes] | None:
        """A Client in another process, polling statuses for check (h), across restarts."""
        if not self.cfg.readers:
            return None
        return subprocess.Popen([sys.executable, "-m", "journaled.crashtest.reader", str(state),
                                 str(path)], env=self._base_env(path, crash=False),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    def _stop_reader(self, proc: subprocess.Popen[bytes] | None, path: Path) -> list[Seen] | None:
        if proc is None:
            return None
        time.sleep(0.1)  # one more look at the journal as the last supervisor left it
        proc.kill()
        proc.wait()
        seen, errors = read_log(path)
        self.stats.reader_lines += len(seen)
        self.stats.reader_errors += len(errors)
        self.reader_errors += errors[: max(0, 5 - len(self.reader_errors))]
        return seen

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

    def _after_exit(self, archive: Archive, exec_log: ExecLog, res: Result) -> None:
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
        from ..tools import record_line

        shown = set()
        for v in self.violations:
            if v.run_id in shown or v.run_id == "-" or len(shown) >= 5:
                continue
            shown.add(v.run_id)
            lines = [record_line(r) for r in archive.of_run(v.run_id)]
            lines += [f"exec-log {ln.index + 1}: {ln.kind} step {ln.step} attempt "
                      f"{ln.attempt} pid {ln.pid}" if ln.kind == "exec" else
                      f"exec-log {ln.index + 1}: term {ln.status} {short(ln.result)}"
                      for ln in exec_log.lines if ln.run_id == v.run_id]
            self.details[v.run_id] = lines

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
        from .report import build_report

        return build_report(self)
