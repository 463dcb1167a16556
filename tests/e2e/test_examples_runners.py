"""The named-runner and chain examples, end to end as their docstrings say to run them.

(Kept beside ``test_examples.py`` and using its helpers: same real processes
from the repository root, ``journaled submit`` then ``journaled run
examples.X:... --until-idle``.)
"""

from __future__ import annotations

import json

import pytest

from .helpers import cli_env
from .test_examples import cli, ok, run_until_idle, runs, submit


@pytest.mark.timeout(60)
def test_multi_serves_thumbs_and_stats_from_one_state_directory(tmp_path):
    state = tmp_path / "s"
    big = submit(state, "--runner", "thumbs", "128x96")
    st = submit(state, "--runner", "stats", "3 1 4 1 5 9 2 6")
    dflt = submit(state, "64x64")
    bad = submit(state, "--runner", "stats", "three")
    run_until_idle("examples.multi:app", state)
    got = runs(state)
    assert got[big]["result"].startswith("16x12 mean=") and got[big]["steps"] == 4, got[big]
    assert got[st]["result"] == "n=8 mean=3.875 stdev=2.748 range=1..9"
    assert got[dflt]["result"].startswith("16x16 "), "no --runner: the first registered"
    assert got[bad]["status"] == "failed" and "must be numbers" in got[bad]["error"]
    refused = cli("submit", "--runner", "nope", "x", state=state)
    assert refused.returncode == 2 and "unknown runner 'nope'" in refused.stderr
    assert "thumbs, stats" in refused.stderr


@pytest.mark.timeout(60)
def test_chain_counts_words_and_a_retry_resumes_at_count(tmp_path):
    state = tmp_path / "s"
    env = cli_env(JOURNALED_EXAMPLE_FLAKY="1")
    a = submit(state, "7 2000")
    b = submit(state, "7 2000")
    run_until_idle("examples.chain:pipeline", state, env=env)
    got = runs(state)
    assert got[a]["status"] == "succeeded"
    assert got[a]["result"] == got[b]["result"], "the same seed makes the same text"
    assert got[a]["result"].startswith("2000 words, ") and "top: the=" in got[a]["result"]
    hist = json.loads(ok(cli("status", a, "--json", state=state)))["history"]
    assert [(h["step"], h["attempt"], h["outcome"]) for h in hist] == [
        (0, 1, "completed"), (1, 1, "retried"), (1, 2, "completed"), (2, 1, "completed")]
