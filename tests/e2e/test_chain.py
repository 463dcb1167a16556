"""``journaled.chain(f0, f1, f2)``: step N runs f_N, retries and crashes resume at f_N.

The chain functions append their name (and attempt) to a log file, so each
test sees exactly which functions ran, how often and in which order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import journaled
from journaled import Runtime
from journaled.client import Client
from tests.apps import runner_apps
from tests.apps.runner_apps import CHAIN_LOG, Order

from .helpers import ROOT, cli_env, wait_for

APPS = "tests.apps.runner_apps"


def names(log: Path) -> list[str]:
    return [ln.split()[0] for ln in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.timeout(60)
def test_a_retry_resumes_at_the_failing_function_not_at_the_first(state_dir, tmp_path,
                                                                   monkeypatch):
    log = tmp_path / "chain.log"
    monkeypatch.setenv(CHAIN_LOG, str(log))
    with Runtime(state_dir, runner_apps.pipeline, workers=1, backoff_base=0.01) as rt:
        rid = rt.submit(b"abc")
        out = rt.wait(rid, timeout=30)
        hist = rt.history(rid)
    assert out.status.value == "succeeded", out
    assert out.result == b"done:ABCABC", "each function gets the previous one's return value"
    assert out.steps == 3
    assert names(log) == ["parse", "double#1", "double#2", "finish"], \
        "the retry of step 1 must run f1 again, and f0 only once"
    assert [(a.step, a.attempt, a.outcome) for a in hist][:3] == \
        [(0, 1, "completed"), (1, 1, "retried"), (1, 2, "completed")]


@pytest.mark.timeout(90)
def test_a_supervisor_killed_mid_chain_resumes_at_the_running_function(state_dir, tmp_path):
    log = tmp_path / "chain.log"
    mark = tmp_path / "mark"
    env = cli_env(**{CHAIN_LOG: str(log)})
    s = str(state_dir)
    sub = subprocess.run([sys.executable, "-m", "journaled.cli", "submit", "in", "--run-id",
                          "c1", "-H", f"mark={mark}", "--state", s], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=30)
    assert sub.returncode == 0, sub.stderr
    sup = subprocess.Popen([sys.executable, "-m", "journaled.cli", "run", f"{APPS}:crashy",
                            "--state", s, "-w", "1"], cwd=ROOT, env=env,
                           stderr=subprocess.DEVNULL)
    try:
        wait_for(mark.exists, 30, "the chain's middle function to start")
    finally:
        os.kill(sup.pid, signal.SIGKILL)
        sup.wait(10)
    again = subprocess.run([sys.executable, "-m", "journaled.cli", "run", f"{APPS}:crashy",
                            "--state", s, "-w", "1", "--until-idle"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert Client(state_dir).result("c1") == b"done:IN+slow"
    assert names(log) == ["parse", "slow#1", "slow#2", "finish"], \
        "after the crash the chain must go on at f1 (its step), not start over"


@pytest.mark.timeout(60)
def test_chains_as_named_runners_typed_async_and_permanent_errors(state_dir):
    runners = {"typed": runner_apps.typed_chain, "refuse": runner_apps.refusing,
               "async": runner_apps.async_chain, "pipeline": runner_apps.pipeline}
    with Runtime(state_dir, runners, workers=1) as rt:
        ok = rt.submit(Order("tea", 4), runner="typed")
        bad = rt.submit({"sku": "tea", "qty": "four"}, runner="typed")
        no = rt.submit(b"abc", runner="refuse")
        aio = rt.submit(b"x", runner="async")
        assert rt.wait(ok, timeout=30).status.value == "succeeded"
        assert rt.result(ok, type=dict) == {"sku": "tea", "total": 10.0}
        out = rt.wait(bad, timeout=30)
        assert out.status.value == "failed"
        assert "$.qty" in (out.error or "") and "Order" in (out.error or ""), out.error
        assert len(rt.history(bad)) == 1, "a payload that does not validate is permanent"
        out = rt.wait(no, timeout=30)
        assert out.status.value == "failed" and "refused ABC" in (out.error or "")
        assert len(rt.history(no)) == 2, "StepError.permanent in f1: one attempt of step 1"
        assert rt.wait(aio, timeout=30).result == b"stored:x+fetched"


@pytest.mark.timeout(10)
def test_chain_refuses_what_is_not_a_chain():
    with pytest.raises(ValueError):
        journaled.chain()
    with pytest.raises(TypeError, match="argument 1"):
        journaled.chain(len, b"not callable")  # type: ignore[arg-type]
