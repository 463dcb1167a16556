"""Every example, end to end through the command line, as its docstring says to run it.

Real processes from the repository root: ``journaled submit`` then ``journaled run
examples.X:runner --until-idle`` (the approval flow keeps a supervisor in the
background and answers it with ``journaled signal``), and ``bin/demo``, which
kills a supervisor with ``kill -9`` mid-run and restarts it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from examples.fanout import child_ids
from journaled.client import Client

from .helpers import ROOT, cli_env, wait_for


def cli(*args: str, state: Path, timeout: float = 60,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "journaled.cli", *args, "--state", str(state)],
                          cwd=ROOT, env=env or cli_env(), capture_output=True, text=True,
                          timeout=timeout)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def submit(state: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return ok(cli("submit", *args, state=state, env=env)).strip()


def run_until_idle(app: str, state: Path, *extra: str,
                   env: dict[str, str] | None = None) -> None:
    ok(cli("run", app, "-w", "2", "--until-idle", "--backoff", "0.05", *extra, state=state,
           env=env))


def runs(state: Path) -> dict[str, dict]:
    return {r["run_id"]: r for r in json.loads(ok(cli("runs", "--json", state=state)))}


@pytest.mark.timeout(60)
def test_primes_counts_primes_in_four_steps(tmp_path):
    state = tmp_path / "s"
    inputs = tmp_path / "inputs"
    inputs.write_text("1000\n20000\n\nnot-a-number\n")
    ok(cli("submit", "--each-line", str(inputs), state=state))
    run_until_idle("examples.primes:runner", state)
    got = sorted((r["status"], r["result"] or r["error"], r["steps"])
                 for r in runs(state).values())
    assert got[:2] == [("failed", "input must be a decimal integer N, got 'not-a-number'", 1),
                       ("succeeded", "168", 4)]
    assert got[2] == ("succeeded", "2262", 4)


@pytest.mark.timeout(60)
def test_flaky_retries_a_transient_error_and_fails_a_bad_order(tmp_path):
    state = tmp_path / "s"
    good = submit(state, "order-17")
    bad = submit(state, "bad-order-3")
    run_until_idle("examples.flaky:runner", state)
    all_ = runs(state)
    assert all_[good]["status"] == "succeeded" and all_[good]["result"] == "shipped:order-17"
    assert all_[bad]["status"] == "failed" and "failed validation" in all_[bad]["error"]
    hist = json.loads(ok(cli("status", good, "--json", state=state)))["history"]
    assert [(h["step"], h["attempt"], h["outcome"]) for h in hist][:3] == [
        (0, 1, "completed"), (1, 1, "retried"), (1, 2, "completed")]


@pytest.mark.timeout(60)
def test_fanout_spawns_children_with_derived_ids_and_sums_their_results(tmp_path):
    state = tmp_path / "s"
    n, k = 30_000, 3
    parent = submit(state, f"{n} {k}", "--run-id", "fan-1")
    assert parent == "fan-1"
    run_until_idle("examples.fanout:runner", state)
    all_ = runs(state)
    assert child_ids("fan-1", k) == ["fan-1:s0.0", "fan-1:s0.1", "fan-1:s0.2"]
    assert set(all_) == {"fan-1", *child_ids("fan-1", k)}, "exactly K children, once each"
    assert all(r["status"] == "succeeded" for r in all_.values()), all_
    assert int(all_["fan-1"]["result"]) == sum(i * i for i in range(n))
    assert sum(int(all_[c]["result"]) for c in child_ids("fan-1", k)) == sum(
        i * i for i in range(n))
    assert all_["fan-1"]["steps"] == 2, "step 0 spawns, step 1 fans in: no poll loop"
    for c in child_ids("fan-1", k):
        hist = json.loads(ok(cli("status", c, "--json", state=state)))["history"]
        assert len(hist) == 1, f"{c} ran {len(hist)} times"
    assert "children:  3 spawned by step 0" in ok(cli("status", "fan-1", state=state))


@pytest.mark.timeout(60)
def test_wordcount_maps_200_chunks_and_reduces_them_in_the_parent(tmp_path):
    from examples.wordcount import count_words, generate, reduce_counts

    state = tmp_path / "s"
    submit(state, "200 300 11", "--run-id", "wc")
    run_until_idle("examples.wordcount:runner", state)
    got = json.loads(ok(cli("result", "wc", state=state)))
    want = reduce_counts([count_words(t) for t in generate(200, 300, 11)])
    assert got == json.loads(json.dumps(want)), "the reduce must equal a direct count"
    assert got["words"] == 200 * 300
    listed = json.loads(ok(cli("runs", "--json", "--limit", "0", state=state)))
    assert len(listed) == 201, "one map run per chunk, plus the parent"


@pytest.mark.timeout(60)
def test_wordcount_prints_its_counts_when_run_as_a_script():
    proc = subprocess.run([sys.executable, "-m", "examples.wordcount", "20", "100", "3"],
                          cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("2,000 words"), proc.stdout
    assert "most common" in proc.stdout and " the " in proc.stdout, proc.stdout


@pytest.mark.timeout(60)
def test_memo_charges_once_although_the_step_crashes_after_charging(tmp_path):
    state = tmp_path / "s"
    ledger = tmp_path / "ledger.txt"
    rid = submit(state, "order-17", "-H", "crash=1", "-H", f"ledger={ledger}")
    run_until_idle("examples.memo:runner", state)
    out = json.loads(ok(cli("status", rid, "--json", state=state)))
    assert out["status"] == "succeeded"
    assert out["result"] == f"shipped with receipt:{rid}:order-17"
    step0 = [(h["attempt"], h["outcome"]) for h in out["history"] if h["step"] == 0]
    assert step0 == [(1, "worker_died"), (2, "completed")], out["history"]
    assert ledger.read_text().splitlines() == [f"receipt:{rid}:order-17 attempt=1"], \
        "the retried step must skip the charge its memo recorded"


@pytest.mark.timeout(60)
def test_approval_waits_for_a_signal_or_times_out(tmp_path):
    state = tmp_path / "s"
    sup = subprocess.Popen([sys.executable, "-m", "journaled.cli", "run",
                            "examples.approval:runner", "-w", "1", "--state", str(state)],
                           cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    try:
        yes = submit(state, "deploy v2 to prod", "-H", "timeout=600")
        no = submit(state, "drop the database", "-H", "timeout=600")
        late = submit(state, "nobody answers", "-H", "timeout=0.5")
        # Parked: step 0 done, nothing more runs until the signal. Polled in process
        # (a CLI process per poll costs more than the wait); the CLI says it below.
        reader = Client(state)
        wait_for(lambda: reader.status(yes).steps == 1, timeout=30,
                 what="the approval run to park")
        assert json.loads(ok(cli("status", yes, "--json", state=state)))["steps"] == 1
        assert json.loads(ok(cli("status", yes, "--json", state=state)))["status"] == "waiting"
        assert "signal 'approve' sent" in ok(cli("signal", yes, "approve", "yes", state=state))
        ok(cli("signal", no, "approve", "no", state=state))
        w = cli("wait", yes, "--timeout", "30", state=state)
        assert w.returncode == 0 and "approved: deploy v2 to prod" in w.stdout, w
        w = cli("wait", no, "--timeout", "30", state=state)
        assert w.returncode == 1 and "rejected: drop the database" in w.stdout, w
        w = cli("wait", late, "--timeout", "30", state=state)
        assert w.returncode == 1 and "in time" in w.stdout, w
        again = cli("signal", yes, "approve", "yes", state=state)
        assert again.returncode == 2 and "already succeeded" in again.stderr
    finally:
        sup.send_signal(signal.SIGINT)
        try:
            sup.wait(20)
        except subprocess.TimeoutExpired:
            sup.kill()
            sup.wait(5)
    assert sup.returncode == 0, sup.stderr.read() if sup.stderr else ""


@pytest.mark.timeout(60)
def test_bin_demo_kills_the_supervisor_and_every_run_still_finishes(tmp_path):
    env = cli_env(DEMO_STATE=str(tmp_path / "state"),
                  DEMO_INPUTS="200000 300000 400000 500000")
    proc = subprocess.run([str(ROOT / "bin" / "demo")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=55)
    out = proc.stdout
    assert proc.returncode == 0, f"{out}\n{proc.stderr}"
    assert "$ kill -9" in out
    assert "no orphans" in out
    assert "4 of 4 runs succeeded" in out
    assert "\nok\n" in out, "journaled verify passes"
    assert "all 4 runs finished exactly once" in out
    results = sorted(r["result"] for r in runs(tmp_path / "state").values())
    assert results == sorted(["17984", "25997", "33860", "41538"])
    assert os.access(ROOT / "bin" / "demo", os.X_OK)
