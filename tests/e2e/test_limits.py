"""Resource limits, keys, per-key concurrency and rates, end to end.

Through ``Runtime`` and ``journaled run``: the journal is folded in order
to prove what the supervisor decided (how much was leased at once, per
resource and per key), since the journal is the order of its decisions.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

from journaled import Client
from journaled.aio import AsyncClient
from journaled.errors import OverLimit, SubmissionRejected
from journaled.inbox import SubmitMsg, post
from journaled.records import Leased, Submitted
from tests.apps import limits_apps
from tests.e2e.helpers import ROOT, cli_env, journal_records, most_held, wait_for

APP = "tests.apps.limits_apps:hold"


@pytest.mark.timeout(60)
def test_runtime_limit_is_never_passed_and_plain_runs_pass_the_waiting_ones(runtime, state_dir):
    rt = runtime(limits_apps.hold, workers=3, limits={"gpu": 1, "mem_gb": 12})
    gpu = rt.submit_many([b"0.3"] * 3, resources={"gpu": 1, "mem_gb": 8})
    plain = rt.submit_many([b"0.05"] * 4)
    for rid in gpu + plain:
        assert rt.wait(rid, 30).status.value == "succeeded"
    peak, _, order = most_held(state_dir)
    assert peak == {"gpu": 1.0, "mem_gb": 8.0}
    # The plain runs did not wait behind the gpu runs that could not start.
    assert max(order.index(r) for r in plain) < order.index(gpu[-1])
    with pytest.raises(OverLimit, match="mem_gb=16 but --limit mem_gb=12"):
        rt.submit(b"x", resources={"mem_gb": 16})
    rid = rt.submit(b"0", resources={"disk": 1e6})  # no --limit disk: unlimited
    assert rt.wait(rid, 30).status.value == "succeeded"


@pytest.mark.timeout(60)
def test_keys_take_turns_under_key_concurrency(runtime, state_dir):
    rt = runtime(limits_apps.hold, workers=2, key_concurrency=1)
    big = rt.submit_many([b"0.02"] * 12, key="big")
    small = rt.submit_many([b"0.02"] * 2, key="small")
    for rid in big + small:
        assert rt.wait(rid, 30).status.value == "succeeded"
    _, peak_key, order = most_held(state_dir)
    assert peak_key == {"big": 1, "small": 1}
    # One tenant's twelve runs never starve the other's two: once they are submitted,
    # both start within the next four leases (the big ones leased before that, while
    # a loaded machine was still between the two submit calls, do not count).
    recs = list(journal_records(state_dir))
    came = next(i for i, r in enumerate(recs) if type(r) is Submitted and r.run_id in small)
    before = sum(1 for r in recs[:came] if type(r) is Leased)
    assert max(order.index(r) for r in small) - before <= 4, (before, order)
    assert rt.history(small[0])[0].worker >= 0


@pytest.mark.timeout(90)
def test_cli_limits_keys_rates_and_refusals(tmp_path):
    state = tmp_path / "state"
    env = cli_env()

    def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([sys.executable, "-m", "journaled.cli", *args, "--state", str(state)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert not check or p.returncode == 0, p.stderr
        return p

    cli("submit", "0.05", "--resource", "gpu=1", "--key", "t1", "--run-id", "g0")
    Client(state).submit_many([b"0.05"] * 2, run_ids=["g1", "g2"], resources={"gpu": 1},
                              key="t1")
    Client(state).submit_many([b"0"] * 3, run_ids=["r0", "r1", "r2"], key="t2")
    p = cli("run", APP, "-w", "3", "--until-idle", "--limit", "gpu=1", "--key-concurrency", "2",
            "--rate", "t2=20/s", "--rate", "*=1000/s")
    peak, peak_key, _ = most_held(state)
    assert peak == {"gpu": 1.0} and peak_key["t1"] == 1 and peak_key["t2"] <= 2
    assert "resources: gpu=1  key: t1" in cli("status", "g0").stdout
    served = json.loads((state / "serving.json").read_text())
    assert served["limits"] == {"gpu": 1.0} and served["key_concurrency"] == 2
    assert served["rates"] == {"t2": 20.0, "*": 1000.0}
    # Over the limit the last supervisor announced: refused at submit, one line, exit 2.
    p = cli("submit", "x", "--resource", "gpu=2", check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--limit gpu=1" in p.stderr
    for bad in (["--resource", "gpu"], ["--resource", "gpu=-1"], ["--key", "*"]):
        p = cli("submit", "x", *bad, check=False)
        assert p.returncode == 2 and p.stderr.count("\n") == 1, (bad, p.stderr)
    p = cli("run", APP, "--until-idle", "--rate", "t2=5", check=False)
    assert p.returncode == 2 and "KEY=N/s" in p.stderr and "Traceback" not in p.stderr
    # A submission that got past a client (an old serving.json): the supervisor refuses it.
    post(state, SubmitMsg("sneaky", b"x", time.time(), resources={"gpu": 5.0}))
    p = cli("run", APP, "--until-idle", "--limit", "gpu=1")
    with pytest.raises(SubmissionRejected, match="--limit gpu=1"):
        Client(state).status("sneaky")
    assert Client(state).status("g2").status.value == "succeeded"


@pytest.mark.timeout(60)
def test_rate_limit_spaces_the_steps_of_a_key(runtime, state_dir):
    rt = runtime(limits_apps.hold, workers=2, rates={"slow": 5.0})
    ids = rt.submit_many([b"0"] * 8, key="slow")
    fast = rt.submit_many([b"0"] * 4, key="other")
    for rid in ids + fast:
        assert rt.wait(rid, 30).status.value == "succeeded"
    leased = {r.run_id: r.at for r in journal_records(state_dir) if isinstance(r, Leased)}
    at = sorted(leased[r] for r in ids)
    # A bucket of one second's worth (5 tokens), then 5 a second: the last 3 come >= 0.6 s on.
    assert at[-1] - at[0] >= 0.55
    # Another key is not held back by that one's rate.
    assert max(leased[r] for r in fast) < at[-1]
    wait_for(lambda: rt.status(ids[-1]).status.value == "succeeded")


@pytest.mark.timeout(60)
def test_client_over_the_socket_carries_resources_and_key(runtime, state_dir):
    rt = runtime(limits_apps.hold, workers=2, limits={"gpu": 1})
    client = Client(state_dir)
    with pytest.raises(OverLimit):  # refused by the client from STATE/serving.json
        client.submit(b"0", resources={"gpu": 3})
    ids = client.submit_many([b"0.1"] * 3, resources={"gpu": 1}, key="k")
    for rid in ids:
        assert client.wait(rid, 30).status.value == "succeeded"
    run = rt.supervisor.state.runs.get(ids[0])
    assert run is None or (run.resources == {"gpu": 1.0} and run.key == "k")
    peak, peak_key, _ = most_held(state_dir)
    assert peak == {"gpu": 1.0} and peak_key == {"k": 1}

    async def via_async() -> str:
        async with AsyncClient(state_dir) as ac:
            with pytest.raises(OverLimit):
                await ac.submit(b"0", resources={"gpu": 2})
            rid = await ac.submit(b"0", resources={"gpu": 0.5}, key="a")
            assert (await ac.wait(rid, 30)).status.value == "succeeded"
            return rid

    rid = asyncio.run(via_async())
    sub = [r for r in journal_records(state_dir) if isinstance(r, Submitted) and r.run_id == rid]
    assert [(r.resources, r.key) for r in sub] == [({"gpu": 0.5}, "a")]
