"""examples/tenants.py end to end as its docstring says: keys take turns under one gpu."""

from __future__ import annotations

import pytest

from journaled.records import Leased

from .helpers import journal_records
from .test_examples import cli, run_until_idle, runs, submit


@pytest.mark.timeout(90)
def test_tenants_share_one_gpu_and_take_turns(tmp_path):
    state = tmp_path / "s"
    big = [submit(state, "--key", "big-co", "--resource", "gpu=1", str(i)) for i in range(6)]
    small = [submit(state, "--key", "small-co", "--resource", "gpu=1", s) for s in ("99", "98")]
    run_until_idle("examples.tenants:render", state, "--limit", "gpu=1")
    got = runs(state)
    for rid in big + small:
        assert got[rid]["status"] == "succeeded" and "inside" in got[rid]["result"], got[rid]
    order = [r.run_id for r in journal_records(state) if type(r) is Leased]
    assert order.index(small[0]) < order.index(big[2]), \
        f"small-co must not wait for all of big-co's runs: {order}"
    refused = cli("submit", "--resource", "gpu=2", "x", state=state)
    assert refused.returncode == 2 and "gpu" in refused.stderr and "Traceback" not in refused.stderr
