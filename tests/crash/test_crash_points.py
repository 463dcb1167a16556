"""Kill the supervisor (or a worker) at each named failpoint; the restart must recover.

Every test names a fault, a moment and a place, and runs through one driver,
``_check_recovers(point, expect=...)``: submit a few multi-step runs, start a
supervisor with ``JOURNALED_FAILPOINTS=<point>=crash@N`` (``exit@N`` for a
worker point), then restart it without failpoints until idle, and check that
every run finished exactly once with the result a crash-free run gives, that
no attempt ran twice, that nothing ran after its outcome was reported and
that the terminal hook fired at least once per run. Supervisors run in
power-loss mode, so a kill loses exactly what a power cut would.

Steps log themselves through ``journaled.crashtest:wrapped_runner`` and the
hook through ``journaled.crashtest:record_terminal`` (one line each, O_APPEND).
A supervisor costs about a second and a half of start-up here, so the cases
of this module run ahead, a few at a time, as soon as its first test starts;
each test then waits for its own case and asserts on it. A hang dumps every
stack (faulthandler) and kills the process group before failing.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import subprocess
import sys
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from journaled.client import Client
from journaled.crashtest import (
    ENV_APP,
    ENV_LOG,
    HOOK,
    WRAPPED,
    Archive,
    ExecLog,
    Line,
    final_outcomes,
)
from journaled.inbox import CompactMsg, post
from journaled.journal import verify
from journaled.records import AttemptFailed, Leased, Submitted, Terminated
from journaled.tools import check
from tests.apps.reference import primes_below

ROOT = Path(__file__).resolve().parents[2]
APP = "examples.primes:runner"  # four steps per run, one chunk of [0, N) each
INPUTS = [b"60000", b"90000", b"120000"]
RUN_IDS = [f"ct-{i:04d}" for i in range(len(INPUTS))]
SUPERVISOR_TIMEOUT = 40.0
PARALLEL = 4

KILLED = "supervisor killed"  # the failpoint SIGKILLs the supervisor
# The failpoint ends a worker; the supervisor carries on. It fires on the N-th
# step of every worker process, fresh ones too; with N = 5 or 6 and 12 steps
# the replacements never get that far, so no step fails three times.
WORKER_DIED = "worker died"




EXPECTED = {rid: str(primes_below(int(data))).encode()
            for rid, data in zip(RUN_IDS, INPUTS, strict=True)}


# ------------------------------------------------------------------------ driver


@dataclass(frozen=True)
class Case:
    point: str
    expect: str
    nths: tuple[int, ...]
    compact: bool = False  # ask for a compaction before the first start

    @property
    def name(self) -> str:
        return self.point.replace(".", "_")


@dataclass
class Recovery:
    """What one scenario (one N) left behind, for the test's own assertions."""

    nth: int
    state: Path
    first_exit: int
    lines: list[Line]
    records: list[Any]
    inbox_after_crash: list[str] = field(default_factory=list)
    torn_after_crash: bool = False  # the journal ended in a partial frame right after it

    def execs(self) -> list[Line]:
        return [ln for ln in self.lines if ln.kind == "exec"]

    def terms(self) -> list[Line]:
        return [ln for ln in self.lines if ln.kind == "term"]


def _fail_on_hang(proc: subprocess.Popen[bytes], err: Path, what: str) -> None:
    """Dump the stacks of the hung supervisor, its children and this process; kill; fail."""
    for pid in [proc.pid, *_descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGABRT)  # PYTHONFAULTHANDLER=1: stacks to stderr
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    pytest.fail(f"{what} hung for {SUPERVISOR_TIMEOUT} s; its output and stacks:\n"
                f"{err.read_text(errors='replace')[-6000:]}")


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
                out += kids
                todo += kids
        except OSError:
            pass
    return out


def supervise(state: Path, log: Path, failpoints: str, label: str, power_loss: bool = True,
              timeout: float = SUPERVISOR_TIMEOUT, app: str = APP) -> int:
    """One ``journaled run --until-idle`` (in power-loss mode unless told); its exit code.

    0 or -9 (killed at a failpoint); anything else, or a hang, fails the test.
    """
    env = dict(os.environ)
    env.pop("JOURNALED_STATE", None)
    env.update({ENV_APP: app, ENV_LOG: str(log), "JOURNALED_FAILPOINTS": failpoints,
                "JOURNALED_SIMULATE_POWER_LOSS": "1" if power_loss else "0",
                "PYTHONFAULTHANDLER": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))})
    err = state.parent / f"{state.name}.stderr"
    with open(err, "ab") as f:
        f.write(f"--- {label}: JOURNALED_FAILPOINTS={failpoints}\n".encode())
        f.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "journaled.cli", "run", WRAPPED, "--state", str(state),
             "--until-idle", "-w", "2", "--backoff", "0.05", "--on-terminal", HOOK],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f,
            start_new_session=True)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _fail_on_hang(proc, err, f"the supervisor ({label})")
    if code not in (0, -signal.SIGKILL):
        pytest.fail(f"the supervisor ({label}) exited with {code}; its output:\n"
                    f"{err.read_text(errors='replace')[-4000:]}")
    return code


def _one(case: Case, nth: int, tmp: Path) -> Recovery:
    state, log = tmp / f"state-{nth}", tmp / f"exec-{nth}.log"
    Client(state).submit_many(INPUTS, run_ids=RUN_IDS)
    if case.compact:
        post(state, CompactMsg(0.0))
    archive = Archive(state)
    action = "exit" if case.expect == WORKER_DIED else "crash"
    first = supervise(state, log, f"{case.point}={action}@{nth}", f"{case.point} @{nth}")
    archive.update()
    inbox = sorted(n for n in os.listdir(state / "inbox") if not n.startswith("."))
    torn = verify(state / "journal").torn is not None
    if case.expect == KILLED:
        assert first == -signal.SIGKILL, (
            f"failpoint {case.point}=crash@{nth} must be reached and kill the supervisor, "
            f"but it exited with {first}")
        assert supervise(state, log, "", "clean restart") == 0
        archive.update()
    else:
        assert first == 0, "a worker's death must not stop the supervisor"
    exec_log = ExecLog(log)
    exec_log.poll()
    rec = Recovery(nth, state, first, exec_log.lines, archive.records, inbox, torn)
    _assert_invariants(case, rec)
    return rec


def _assert_invariants(case: Case, rec: Recovery) -> None:
    where = f"({case.point} @{rec.nth})"
    final = final_outcomes(rec.state)
    ends = Counter(r.run_id for r in rec.records if type(r) is Terminated)
    for rid, result in EXPECTED.items():
        out = final.get(rid)
        assert out is not None, f"run {rid} must finish after the restart {where}"
        assert ends[rid] == 1, f"run {rid} must finish exactly once, got {ends[rid]} {where}"
        assert (out.status, out.result) == ("succeeded", result), (
            f"run {rid} must succeed with the crash-free result {result!r}, got {out} {where}")
    seen: dict[tuple[str, int, int], int] = {}
    for ln in rec.execs():
        key = (ln.run_id, ln.step, ln.attempt)
        assert key not in seen, (
            f"run {ln.run_id} step {ln.step} attempt {ln.attempt} ran twice (exec lines "
            f"{seen[key] + 1} and {ln.index + 1}): a lease was used before it was durable "
            f"{where}")
        seen[key] = ln.index
    first_term: dict[str, int] = {}
    for ln in rec.lines:
        if ln.kind == "term":
            first_term.setdefault(ln.run_id, ln.index)
            assert (ln.status, ln.result) == ("succeeded", EXPECTED[ln.run_id]), (
                f"the hook reported run {ln.run_id} {ln.status} {ln.result!r}, which is not "
                f"its final outcome {where}")
        elif ln.run_id in first_term:
            pytest.fail(f"run {ln.run_id} step {ln.step} ran after its outcome was reported: "
                        f"the result was reported before it was durable {where}")
    for rid in EXPECTED:
        assert rid in first_term, f"the hook must fire at least once for run {rid} {where}"
    verdict = check(rec.state)
    assert verdict.ok, f"the journal must verify {where}: {verdict.report.damage} " \
                       f"{verdict.violations}"


_AHEAD: dict[Case, Future[list[Recovery]]] = {}


def _check_recovers(point: str, *, expect: str, nths: tuple[int, ...] = (1,),
                    compact: bool = False, tmp: Path | None = None) -> list[Recovery]:
    """Crash at ``point`` on its N-th hit for each N, restart, check every invariant."""
    case = Case(point, expect, nths, compact)
    fut = _AHEAD.get(case)
    if fut is not None:
        return fut.result()
    assert tmp is not None
    return [_one(case, n, tmp / f"{case.name}") for n in nths]


def _run_case(case: Case, tmp: Path) -> list[Recovery]:
    return [_one(case, n, tmp) for n in case.nths]


def crash_case(point: str, *, expect: str, nths: tuple[int, ...] = (1,),
               slow_nths: tuple[int, ...] = (), compact: bool = False) -> Callable[[Any], Any]:
    """Mark a test with its case, so the module can start it ahead of time.

    With ``slow_nths`` the test runs twice: at ``nths`` in the suite, and at
    ``nths + slow_nths`` (the full sweep) under ``-m slow``; each N is a kill, a
    restart and a check, seconds of supervisor start-ups.
    """

    def deco(fn: Any) -> Any:
        fn.case = Case(point, expect, nths, compact)
        fn.full_case = Case(point, expect, nths + slow_nths, compact)
        if slow_nths:
            fn = pytest.mark.parametrize(
                "sweep", ["short", pytest.param("full", marks=pytest.mark.slow)],
                indirect=True)(fn)
        return fn

    return deco


def _case(fn: Any, sweep: str | None) -> Case:
    return fn.full_case if sweep == "full" else fn.case


@pytest.fixture
def sweep(request: pytest.FixtureRequest) -> str:
    """``short`` (the suite's N) unless a test's ``slow`` variant asks for ``full``."""
    return str(getattr(request, "param", "short"))


@pytest.fixture(scope="module", autouse=True)
def _cases_ahead(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Start every selected case of this module now, PARALLEL at a time."""
    mod = request.module
    cases = [_case(item.function, getattr(getattr(item, "callspec", None), "params", {})
                   .get("sweep"))
             for item in request.session.items
             if getattr(item, "module", None) is mod and hasattr(item.function, "case")]
    pool = ThreadPoolExecutor(max_workers=PARALLEL, thread_name_prefix="crash-case")
    for case in cases:
        _AHEAD[case] = pool.submit(_run_case, case, tmp_path_factory.mktemp(case.name))
    yield
    pool.shutdown(wait=True, cancel_futures=True)
    _AHEAD.clear()


@pytest.fixture
def recover(request: pytest.FixtureRequest, tmp_path: Path, sweep: str
            ) -> Callable[[], list[Recovery]]:
    """The test's case, run by ``_check_recovers`` (or awaited, if it started ahead)."""
    c = _case(request.function, sweep)
    return lambda: _check_recovers(c.point, expect=c.expect, nths=c.nths, compact=c.compact,
                                   tmp=tmp_path)


# ------------------------------------------------------------------------- tests


@pytest.mark.timeout(120)
@crash_case("supervisor.before_dispatch", expect=KILLED, nths=(1,), slow_nths=(3,))
def test_kill_after_leased_before_dispatch(recover: Callable[[], list[Recovery]]) -> None:
    """Leases durable, steps never sent: each costs an attempt, not the step."""
    for rec in recover():
        leased = {(r.run_id, r.step, r.attempt) for r in rec.records if type(r) is Leased}
        ran = {(ln.run_id, ln.step, ln.attempt) for ln in rec.execs()}
        assert leased - ran, (
            f"@{rec.nth}: some durable lease must have been abandoned unsent by the crash")
        assert any(ln.attempt >= 2 for ln in rec.execs()), (
            f"@{rec.nth}: an abandoned lease must cost an attempt: the step's next "
            "delivery is attempt 2")


@pytest.mark.timeout(120)
@crash_case("journal.before_sync", expect=KILLED, nths=(2,), slow_nths=(6,))
def test_kill_between_write_and_fdatasync(recover: Callable[[], list[Recovery]]) -> None:
    """The batch was written but never synced: power-loss mode drops it; nothing acted on it."""
    for rec in recover():
        assert not rec.torn_after_crash, (
            f"@{rec.nth}: in power-loss mode a batch killed before its sync never reaches "
            "the file, not even in part")


@pytest.mark.timeout(120)
@crash_case("journal.after_sync", expect=KILLED, nths=(2,), slow_nths=(6,))
def test_kill_after_fdatasync(recover: Callable[[], list[Recovery]]) -> None:
    """The batch is durable but none of its acts were done; replay redoes them."""
    for rec in recover():
        assert not rec.torn_after_crash, f"@{rec.nth}: a synced batch is whole on disk"


@pytest.mark.timeout(120)
@crash_case("inbox.before_unlink", expect=KILLED)
def test_kill_before_inbox_unlink(recover: Callable[[], list[Recovery]]) -> None:
    """Submitted is durable, the inbox file is still there: re-reading it is a no-op."""
    for rec in recover():
        assert rec.inbox_after_crash, "the submission file must survive a crash before unlink"
        subs = Counter(r.run_id for r in rec.records if type(r) is Submitted)
        assert all(subs[rid] == 1 for rid in RUN_IDS), (
            f"each run must be submitted exactly once, got {dict(subs)}")
        left = [n for n in os.listdir(rec.state / "inbox") if not n.startswith(".")]
        assert left == [], f"the restart must remove the re-read inbox file, left {left}"


@pytest.mark.timeout(120)
@crash_case("supervisor.before_hook", expect=KILLED, nths=(1,), slow_nths=(3,))
def test_kill_before_hook(recover: Callable[[], list[Recovery]]) -> None:
    """The outcome is durable, the hook never ran for it: the restart fires it."""
    for rec in recover():
        hooked = {ln.run_id for ln in rec.terms()}
        assert hooked == set(RUN_IDS), f"@{rec.nth}: every run's hook must fire, got {hooked}"


@pytest.mark.timeout(120)
@crash_case("supervisor.after_hook", expect=KILLED, nths=(1,), slow_nths=(3,))
def test_kill_after_hook_before_delivered(recover: Callable[[], list[Recovery]]) -> None:
    """The hook ran but HookDelivered was not durable: at-least-once fires it again."""
    for rec in recover():
        fired = Counter(ln.run_id for ln in rec.terms())
        assert max(fired.values()) >= 2, (
            f"@{rec.nth}: the hook of the run whose HookDelivered was lost must fire again "
            f"after the restart, got {dict(fired)}")


@pytest.mark.timeout(120)
@crash_case("worker.before_step", expect=WORKER_DIED, nths=(5,), slow_nths=(6,))
def test_worker_exit_before_step(recover: Callable[[], list[Recovery]]) -> None:
    """A worker dies holding a step it never started: a counted failure, then a retry."""
    for rec in recover():
        died = [r for r in rec.records if type(r) is AttemptFailed and r.kind == "worker_died"]
        assert died, f"@{rec.nth}: the worker's death must be recorded as a failed attempt"


@pytest.mark.timeout(120)
@crash_case("worker.after_step", expect=WORKER_DIED, nths=(5,), slow_nths=(6,))
def test_worker_exit_after_step(recover: Callable[[], list[Recovery]]) -> None:
    """A worker dies after its step ran, before the result left: the step runs again."""
    for rec in recover():
        died = [r for r in rec.records if type(r) is AttemptFailed and r.kind == "worker_died"]
        assert died, f"@{rec.nth}: the worker's death must be recorded as a failed attempt"
        per_step = Counter((ln.run_id, ln.step) for ln in rec.execs())
        assert max(per_step.values()) >= 2, (
            f"@{rec.nth}: the step whose result was lost must run again (at-least-once)")


@pytest.mark.timeout(120)
@crash_case("compact.before_rename", expect=KILLED, compact=True)
def test_kill_during_compaction_before_rename(recover: Callable[[], list[Recovery]]) -> None:
    """The snapshot is a synced temp file: replay ignores it, the next open deletes it."""
    for rec in recover():
        leftovers = [n for n in os.listdir(rec.state / "journal") if n.startswith(".")]
        assert leftovers == [], f"the temp snapshot must be deleted on restart: {leftovers}"


@pytest.mark.timeout(120)
@crash_case("compact.after_rename", expect=KILLED, compact=True)
def test_kill_during_compaction_after_rename(recover: Callable[[], list[Recovery]]) -> None:
    """The snapshot segment is in place, old segments remain: replay starts at the snapshot."""
    for rec in recover():
        assert rec.first_exit == -signal.SIGKILL


@pytest.mark.timeout(120)
@crash_case("compact.before_delete", expect=KILLED, compact=True)
def test_kill_during_compaction_before_delete(recover: Callable[[], list[Recovery]]) -> None:
    """Appends went to the snapshot segment, old segments not yet deleted."""
    for rec in recover():
        segs = sorted(n for n in os.listdir(rec.state / "journal") if n.endswith(".log"))
        assert len(segs) == 1, f"the restart must delete the superseded segments, got {segs}"
