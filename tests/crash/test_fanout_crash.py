"""Kill -9 the supervisor during a spawn and during a fan-in; the restart must lose nothing.

Two parents (one flat with 40 children, one whose 12 children each spawn
3 grandchildren) run under ``journaled run`` with a failpoint that SIGKILLs
the supervisor: while a ``Spawn`` is folded but not written
(``fanout.spawn``), once the ``Spawned`` record is durable
(``fanout.spawned``), while a fan-in step is leased with its children's
outcomes (``fanout.fan_in``), and at commits cut before their sync
(``journal.before_sync``), and once finished children are only in the
archive (``archive.after_drop``). Supervisors run in power-loss mode (unsynced
writes vanish at the kill) unless the case says otherwise. A second
supervisor, without failpoints, runs until idle. Then: every parent
succeeded once with every child's outcome, each parent's children exist
exactly once (one ``Spawned`` record per spawning step, the ids the derived
ones), no attempt of any step ran twice, and ``journaled verify`` finds
nothing wrong.
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from journaled.client import Client
from journaled.crashtest import ExecLog, final_outcomes
from journaled.records import Spawned, Terminated
from journaled.tools import check
from tests.crash.test_crash_points import supervise
from tests.e2e.helpers import journal_records

APP = "tests.apps.fanout_apps:runner"
FLAT, NESTED = "fp-flat", "fp-nest"
INPUTS = {FLAT: {"n": 40}, NESTED: {"n": 12, "do": "nested", "child": {"k": 3}}}
TOTALS = {FLAT: sum(i * i for i in range(40)), NESTED: 12 * (0 + 1 + 4)}
# (failpoint, nth hit, power loss)
CASES = [("fanout.spawn", 1, True), ("fanout.spawned", 1, True), ("fanout.fan_in", 1, True),
         ("journal.before_sync", 4, True), ("fanout.spawned", 6, False),
         ("archive.after_drop", 1, True)]  # children only in the archive before the fan-in
SLOW_CASES = [("fanout.spawn", 5, True), ("fanout.spawned", 13, True), ("fanout.fan_in", 7, True),
              ("fanout.fan_in", 14, False), ("journal.before_sync", 9, True),
              ("journal.before_sync", 20, True), ("supervisor.before_dispatch", 8, True)]


def _scenario(tmp: Path, point: str, nth: int, power_loss: bool) -> tuple[int, Path, Path]:
    state, log = tmp / f"state-{point}-{nth}", tmp / f"exec-{point}-{nth}.log"
    Client(state).submit_many([json.dumps(v).encode() for v in INPUTS.values()],
                              run_ids=list(INPUTS))
    first = supervise(state, log, f"{point}=crash@{nth}", f"{point} @{nth}", power_loss,
                      app=APP)
    supervise(state, log, "", f"restart after {point} @{nth}", power_loss, app=APP)
    return first, state, log


def _check(first: int, state: Path, log: Path, label: str) -> None:
    assert first == -9, f"{label}: the failpoint never fired, so this case tests nothing"
    outs = final_outcomes(state)
    for parent, total in TOTALS.items():
        out = outs.get(parent)
        assert out is not None and out.status == "succeeded", f"{label}: {parent} {out}"
        seen = json.loads(out.result)
        n = INPUTS[parent]["n"]
        assert seen["count"] == n and seen["statuses"] == ["succeeded"] * n, \
            f"{label}: {parent} must fan in over all {n} children once: {seen}"
        assert seen["total"] == total, f"{label}: {parent} total {seen['total']} != {total}"
    want = {f"{FLAT}:s0.{i}" for i in range(40)} | {f"{NESTED}:s0.{i}" for i in range(12)} | {
        f"{NESTED}:s0.{i}:s0.{j}" for i in range(12) for j in range(3)}
    assert set(outs) == want | set(INPUTS), \
        f"{label}: lost {sorted(want - set(outs))[:5]}, extra {sorted(set(outs) - want)[:5]}"
    assert all(o is not None and o.status == "succeeded" for o in outs.values()), label
    recs = journal_records(state)
    spawns = Counter(r.run_id for r in recs if type(r) is Spawned)
    assert set(spawns.values()) == {1} and len(spawns) == 2 + 12, \
        f"{label}: each parent must spawn exactly once: {spawns}"
    ends = Counter(r.run_id for r in recs if type(r) is Terminated)
    assert ends[FLAT] == ends[NESTED] == 1, f"{label}: a parent ended twice: {ends}"
    execs = Counter((ln.run_id, ln.step, ln.attempt) for ln in ExecLog(log).poll()
                    if ln.kind == "exec")
    twice = [k for k, c in execs.items() if c > 1]
    assert not twice, f"{label}: attempts ran twice: {twice[:5]}"
    report = check(state)
    assert not report.violations, f"{label}: {report.violations[:5]}"


def _run(cases: list[tuple[str, int, bool]], tmp: Path) -> None:
    with ThreadPoolExecutor(max_workers=2) as ex:
        futs = [(f"{p}@{n}{'' if pl else ' (no power loss)'}", ex.submit(_scenario, tmp, p, n, pl))
                for p, n, pl in cases]
        for label, fut in futs:
            _check(*fut.result(), label)


@pytest.mark.timeout(240)
def test_kill_during_spawn_and_fan_in_loses_and_duplicates_no_child(tmp_path):
    _run(CASES, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_at_more_points_of_spawn_and_fan_in(tmp_path):
    _run(SLOW_CASES, tmp_path)
