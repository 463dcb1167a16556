"""End to end through the ``journaled`` command line, as a user's shell runs it.

Every command is a real subprocess (``python -m journaled.cli``, and the
installed ``journaled`` script for ``--version``). Where a command needs a
supervisor, an embedded ``Runtime`` in this process plays it, except for
the tests of ``journaled run`` itself, the last of which kills it with
``SIGKILL`` at random moments and checks that every run still finishes
exactly once.
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
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

import journaled
from journaled.cli import main as cli_main
from journaled.client import Client
from journaled.records import Submitted, Terminated
from tests.apps import crash

from .helpers import ROOT, cli_env, journal_records, wait_for

RUN_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Commands that make their own temporary state directories instead of using --state.
SCRATCH_STATE: set[str] = set()  # crashtest takes --state as where to put them


def journaled_cli(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None,
                  timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    """Run ``journaled ARGS`` from the repository root; stdout and stderr as bytes."""
    return subprocess.run([sys.executable, "-m", "journaled.cli", *args], cwd=ROOT,
                          env=env or cli_env(), input=stdin, capture_output=True,
                          timeout=timeout)


def out_of(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode()


def one_line_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    """The stderr of a user error: exactly one line, no traceback; returns that line."""
    err = proc.stderr.decode()
    assert "Traceback" not in err, f"a user error must not print a traceback:\n{err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"a user error must be one line on stderr, got:\n{err}"
    return lines[0]


# ----------------------------------------------------------------------- no supervisor


@pytest.mark.timeout(20)
def test_submit_prints_the_run_id_and_the_run_waits_pending(state_dir):
    proc = journaled_cli("submit", "hello", "--state", str(state_dir))
    assert proc.returncode == 0, proc.stderr.decode()
    rid = out_of(proc).strip()
    assert RUN_ID.fullmatch(rid), f"submit must print just the run id, got {out_of(proc)!r}"
    assert Client(state_dir).status(rid).status.value == "pending", \
        "the printed id must name a durable, pending submission"


@pytest.mark.timeout(20)
def test_submit_status_and_runs_json_output_parses(state_dir):
    s = str(state_dir)
    sub = journaled_cli("submit", "--run-id", "js-1", "-H", "k=v", "data", "--json", "--state", s)
    assert sub.returncode == 0, sub.stderr.decode()
    assert json.loads(sub.stdout) == {"run_ids": ["js-1"]}, "submit --json must list the ids"
    st = journaled_cli("status", "js-1", "--json", "--state", s)
    assert st.returncode == 0, st.stderr.decode()
    data = json.loads(st.stdout)
    assert (data["run_id"], data["status"]) == ("js-1", "pending"), \
        "status --json must describe the run"
    runs = journaled_cli("runs", "--json", "--state", s)
    assert [r["run_id"] for r in json.loads(runs.stdout)] == ["js-1"], \
        "runs --json must be a JSON list of the runs"


@pytest.mark.timeout(20)
def test_submit_reads_the_input_from_stdin_with_a_dash(runtime, state_dir):
    runtime()
    data = b"\x00piped bytes\xff"
    proc = journaled_cli("submit", "-", "--state", str(state_dir), stdin=data)
    assert proc.returncode == 0, proc.stderr.decode()
    out = Client(state_dir).wait(out_of(proc).strip(), timeout=10)
    assert out.result == data, "'-' must submit stdin's bytes unchanged (echoed back)"


@pytest.mark.timeout(20)
def test_status_of_an_unknown_run_exits_2_with_one_line_and_no_traceback(state_dir):
    proc = journaled_cli("status", "no-such-run", "--state", str(state_dir))
    assert proc.returncode == 2, "an unknown run is a usage error: exit 2"
    assert "no-such-run" in one_line_error(proc), "the error must name the run"


@pytest.mark.timeout(20)
def test_state_after_the_subcommand_and_the_journaled_state_env_name_the_same_directory(
        state_dir):
    by_env = journaled_cli("submit", "via-env", env=cli_env(JOURNALED_STATE=str(state_dir)))
    assert by_env.returncode == 0, by_env.stderr.decode()
    rid = out_of(by_env).strip()
    by_flag = journaled_cli("status", rid, "--json", "--state", str(state_dir))
    assert by_flag.returncode == 0, "--state after the subcommand must find the env's run"
    assert json.loads(by_flag.stdout)["run_id"] == rid, "both must name the same directory"
    back = journaled_cli("runs", "--json", env=cli_env(JOURNALED_STATE=str(state_dir)))
    assert [r["run_id"] for r in json.loads(back.stdout)] == [rid], \
        "JOURNALED_STATE must be read by every subcommand"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", sorted(cli_main.commands))
def test_every_subcommand_help_exits_0(command):
    proc = journaled_cli(command, "--help")
    assert proc.returncode == 0, f"journaled {command} --help must exit 0"
    if command not in SCRATCH_STATE:
        assert "--state" in out_of(proc), f"journaled {command} must accept --state"


@pytest.mark.timeout(20)
def test_version_prints_the_package_version():
    exe = shutil.which("journaled")
    cmd = [exe] if exe else [sys.executable, "-m", "journaled.cli"]
    proc = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, "--version must exit 0"
    assert journaled.__version__ in proc.stdout, "--version must print the package version"


# ----------------------------------------------------- an embedded supervisor serves


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("headers", "code", "status"), [
    pytest.param(["-H", "app=echo"], 0, "succeeded", id="succeeded-0"),
    pytest.param(["-H", "app=fail"], 1, "failed", id="failed-1"),
])
def test_wait_exits_with_the_code_of_the_runs_ending(runtime, state_dir, headers, code, status):
    runtime()
    s = str(state_dir)
    rid = out_of(journaled_cli("submit", "x", *headers, "--state", s)).strip()
    proc = journaled_cli("wait", rid, "--timeout", "20", "--json", "--state", s)
    assert proc.returncode == code, f"wait must exit {code} for a {status} run"
    assert json.loads(proc.stdout)["status"] == status, "wait --json must print the outcome"


@pytest.mark.timeout(30)
def test_wait_exits_2_for_a_run_cancelled_from_the_command_line(runtime, state_dir):
    runtime()
    s = str(state_dir)
    rid = out_of(journaled_cli("submit", "x", "-H", "app=long_delay", "--state", s)).strip()
    client = Client(state_dir)
    wait_for(lambda: client.status(rid).status.value == "waiting", what="the run to wait")
    cancel = journaled_cli("cancel", rid, "--reason", "cli says stop", "--state", s)
    assert cancel.returncode == 0, cancel.stderr.decode()
    proc = journaled_cli("wait", rid, "--timeout", "20", "--state", s)
    assert proc.returncode == 2, "wait must exit 2 for a cancelled run"
    assert client.status(rid).error == "cli says stop", "the reason must reach the run"


@pytest.mark.timeout(30)
def test_wait_exits_3_when_the_run_is_not_done_in_time(runtime, state_dir):
    runtime()
    s = str(state_dir)
    rid = out_of(journaled_cli("submit", "x", "-H", "app=long_delay", "--state", s)).strip()
    t0 = time.monotonic()
    proc = journaled_cli("wait", rid, "--timeout", "0.3", "--state", s)
    assert proc.returncode == 3, "wait must exit 3 on timeout"
    assert time.monotonic() - t0 >= 0.3, "wait must block for its timeout first"
    one_line_error(proc)


@pytest.mark.timeout(30)
def test_result_writes_the_raw_result_bytes_to_stdout(runtime, state_dir, tmp_path):
    runtime()
    s = str(state_dir)
    data = b"\x00\xff raw\nbytes\r\n"
    (tmp_path / "input.bin").write_bytes(data)
    rid = out_of(journaled_cli("submit", "--input-file", str(tmp_path / "input.bin"),
                               "--state", s)).strip()
    assert journaled_cli("wait", rid, "--timeout", "20", "--state", s).returncode == 0
    proc = journaled_cli("result", rid, "--state", s)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == data, "result must write exactly the result bytes, nothing added"


@pytest.mark.timeout(30)
def test_a_runners_traceback_reaches_status_json_and_dead(runtime, state_dir):
    rt = runtime(max_attempts=2)
    rid = rt.submit(b"", headers={"app": "exception"})
    rt.wait(rid, timeout=10)
    s = str(state_dir)
    status = json.loads(journaled_cli("status", rid, "--json", "--state", s).stdout)
    assert status["status"] == "failed" and status["dead"] is True, \
        "status --json must show the run failed and dead-lettered"
    assert "_explode_with_a_named_frame" in status["traceback"], \
        "status --json must carry the runner's traceback"
    dead = json.loads(journaled_cli("dead", "--json", "--state", s).stdout)
    assert [d["run_id"] for d in dead] == [rid], "dead --json must list the dead-lettered run"
    assert "ValueError: boom" in dead[0]["error"], "dead must show the error"
    assert "_explode_with_a_named_frame" in dead[0]["traceback"], "dead must show the traceback"


# -------------------------------------------------------------------- journaled run


@pytest.mark.timeout(30)
@pytest.mark.parametrize("app", ["no_such_module_xyz:runner", "tests.apps.basic:no_such_attr",
                                 "tests.apps.basic"])
def test_run_with_a_bad_import_string_exits_2_with_one_line(state_dir, app):
    proc = journaled_cli("run", app, "--state", str(state_dir), "-w", "1")
    assert proc.returncode == 2, f"a bad import string {app!r} must exit 2"
    assert app in one_line_error(proc), "the error must name the import string"


@pytest.mark.timeout(30)
def test_run_on_a_state_locked_by_another_supervisor_exits_2_saying_locked(runtime, state_dir):
    runtime()
    proc = journaled_cli("run", "tests.apps.basic:runner", "--state", str(state_dir), "-w", "1",
                         timeout=20)
    assert proc.returncode == 2, "a second supervisor must exit 2"
    assert "locked" in one_line_error(proc), "the one line must say the state is locked"


@pytest.mark.timeout(40)
def test_run_until_idle_finishes_the_submitted_runs_and_exits_0(state_dir):
    s = str(state_dir)
    ids = [out_of(journaled_cli("submit", str(n), "-H", "app=chain", "--state", s)).strip()
           for n in (1, 2)]
    proc = journaled_cli("run", "tests.apps.basic:runner", "--state", s, "-w", "2",
                         "--backoff", "0.01", "--until-idle", timeout=30)
    assert proc.returncode == 0, f"--until-idle must exit 0 once idle: {proc.stderr.decode()}"
    runs = {r["run_id"]: r for r in json.loads(journaled_cli("runs", "--json", "--state", s)
                                               .stdout)}
    assert sorted(runs) == sorted(ids), "runs must list every submitted run"
    assert {r["status"] for r in runs.values()} == {"succeeded"}, "every run must succeed"
    assert sorted(json.loads(r["result"])["n"] for r in runs.values()) == [8, 16], \
        "each run must carry its own result"
    done = journaled_cli("runs", "--status", "succeeded", "--json", "--state", s)
    assert len(json.loads(done.stdout)) == 2, "runs --status must keep the runs with that status"
    none = journaled_cli("runs", "--status", "failed", "--json", "--state", s)
    assert json.loads(none.stdout) == [], "runs --status must leave out other statuses"


@pytest.mark.timeout(40)
def test_sigterm_stops_the_supervisor_with_exit_0_and_a_restart_finishes_the_run(
        state_dir, tmp_path):
    s = str(state_dir)
    mark = tmp_path / "running"
    rid = out_of(journaled_cli("submit", "x", "-H", "app=sleep", "-H", "seconds=0.5",
                               "-H", f"mark={mark}", "--state", s)).strip()
    sup = subprocess.Popen([sys.executable, "-m", "journaled.cli", "run",
                            "tests.apps.basic:runner", "--state", s, "-w", "1"],
                           cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    try:
        wait_for(mark.exists, timeout=20, what="the step to start")
        sup.send_signal(signal.SIGTERM)
        _, err = sup.communicate(timeout=20)
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
    assert sup.returncode == 0, f"SIGTERM must stop the supervisor with exit 0: {err.decode()}"
    assert Client(state_dir).status(rid).status.value == "succeeded", \
        "a step running at SIGTERM must be drained: its outcome recorded before exit 0"
    again = journaled_cli("run", "tests.apps.basic:runner", "--state", s, "-w", "1",
                          "--until-idle", timeout=30)
    assert again.returncode == 0, again.stderr.decode()
    out = Client(state_dir).status(rid)
    assert (out.status.value, out.result) == ("succeeded", b"woke up"), \
        "after a SIGTERM stop and a restart the run must succeed"


# ------------------------------------------------------------------ kill -9 and restart


KILLS = 10
CRASH_RUNS = 50
ORPHAN_GRACE = 2.5


def _tagged(tag: str) -> list[int]:
    """Live (non-zombie) processes whose environment carries ``JOURNALED_TEST_TAG=tag``."""
    needle = f"JOURNALED_TEST_TAG={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    continue
        except OSError:
            continue
        found.append(int(entry))
    return found


def _steps_done(client: Client) -> int:
    return sum(o.steps for o in client.runs())


def _all_done(client: Client) -> bool:
    return all(o.status.terminal for o in client.runs())


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _log_tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@pytest.mark.timeout(150)
def test_supervisor_killed_at_random_moments_finishes_every_run_exactly_once(tmp_path):
    state = tmp_path / "state"
    rng = random.Random(1337)
    inputs = {f"crash-{i:02d}": str(i).encode() for i in range(CRASH_RUNS)}
    rids = list(inputs)
    client = Client(state)
    half = CRASH_RUNS // 2
    client.submit_many([inputs[r] for r in rids[:half]], run_ids=rids[:half])
    cmd = [sys.executable, "-m", "journaled.cli", "run", "tests.apps.crash:runner",
           "--state", str(state), "-w", "2", "--backoff", "0.01", "--max-abandons", "1000"]
    log = tmp_path / "supervisor.log"
    log.touch()
    orphans: list[str] = []
    progress: list[int] = []  # steps completed, as a client sees them after each kill
    tags: list[str] = []
    try:
        for kill in range(KILLS):
            tags.append(tag := uuid.uuid4().hex)
            env = cli_env(JOURNALED_SIMULATE_POWER_LOSS="1", JOURNALED_TEST_TAG=tag)
            with open(log, "ab") as err:
                sup = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                       stderr=err)
            if kill == 1:
                for rid in rids[half:]:  # the rest arrive while supervisors live and die
                    client.submit(inputs[rid], run_id=rid)
            # The n-th supervisor has started once the log holds n "supervising" lines.
            wait_for(lambda n=kill + 1, p=sup: log.read_bytes().count(b": supervising ") >= n
                     or p.poll() is not None, timeout=20, what="the supervisor to start")
            assert sup.poll() is None, \
                f"supervisor {kill} must start after a kill -9:\n{_log_tail(log)}"
            if kill % 2:
                # Odd rounds: kill while steps run, once some progress is durable.
                before = progress[-1] if progress else 0
                wait_for(lambda n=before: _steps_done(client) > n or _all_done(client),
                         timeout=20, what="the supervisor to make progress")
            # Even rounds: kill early, during recovery, leasing or the first steps.
            time.sleep(rng.uniform(0.0, 0.3))
            family = _tagged(tag)
            sup.send_signal(signal.SIGKILL)
            sup.wait()
            progress.append(_steps_done(client))
            assert sup.pid in family and len(family) >= 4, \
                f"the supervisor, its forkserver and 2 workers must carry the tag, got {family}"
            deadline = time.monotonic() + ORPHAN_GRACE
            while (left := _tagged(tag)) and time.monotonic() < deadline:
                time.sleep(0.02)
            if left:
                orphans.append(f"kill {kill}: pids {left} outlived the supervisor by "
                               f"{ORPHAN_GRACE} s")
                _kill_all(left)
        tags.append(tag := uuid.uuid4().hex)
        final = subprocess.run([*cmd, "--until-idle"], cwd=ROOT, capture_output=True,
                               timeout=90, env=cli_env(JOURNALED_SIMULATE_POWER_LOSS="1",
                                                       JOURNALED_TEST_TAG=tag))
    finally:
        for tag in tags:  # on any failure above, leave nothing of ours running
            _kill_all(_tagged(tag))

    assert not orphans, "no worker may outlive its supervisor's kill -9:\n" + "\n".join(orphans)
    assert final.returncode == 0, f"the last supervisor must exit 0: {final.stderr.decode()}"
    outcomes = {o.run_id: o for o in client.runs()}
    assert sorted(outcomes) == rids, "every submitted run must be known, no other"
    for rid, o in outcomes.items():
        assert o.status.value == "succeeded", f"run {rid} must succeed, got {o}"
        assert o.result == crash.expected_result(inputs[rid]), \
            f"run {rid} must end with the result a crash-free run gives"
    records = journal_records(state)
    ends = Counter(r.run_id for r in records if type(r) is Terminated)
    assert ends == Counter(rids), "every run must finish exactly once (one Terminated record)"
    subs = Counter(r.run_id for r in records if type(r) is Submitted)
    assert subs == Counter(rids), "every run must be submitted exactly once despite replays"
    assert len(set(progress)) > KILLS // 2, \
        f"the kills must land while steps are running; steps done at each kill: {progress}"
