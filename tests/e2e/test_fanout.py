"""Fan-out / fan-in end to end: ``Spawn`` through the embedded ``Runtime`` and ``journaled run``.

Real worker processes, a real journal: the children and the parent's step
outcome land in one ``Spawned`` record, children are ordinary runs with
ids derived from the parent's, the parent's next step sees every child's
outcome in order (failed ones too, blobs read back), cancelling the parent
cancels its live children, and fan-in works across a compaction, a
restart and children already moved to the archive.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from journaled import RunStatus
from journaled.records import Archived, Leased, Spawned, Submitted
from tests.apps import fanout_apps

from .helpers import ROOT, cli_env, journal_records, wait_for


def _spec(**kw: object) -> bytes:
    return json.dumps(kw).encode()


@pytest.mark.timeout(60)
def test_children_are_journaled_in_one_record_and_the_fan_in_sees_them_all_in_order(
        runtime, state_dir):
    rt = runtime(fanout_apps.runner)
    rid = rt.submit(_spec(n=6, fail=[2]), run_id="p1", headers={"team": "a"})
    out = rt.wait(rid, timeout=40)
    child = rt.status("p1:s0.5")
    rt.close()

    assert out.status is RunStatus.SUCCEEDED, f"a failed child must not fail the parent: {out}"
    seen = json.loads(out.result)
    assert seen["count"] == 6 and seen["ids"] == ["p1:s0.0", "p1:s0.1", "p1:s0.2", "p1:s0.5"], \
        f"children are ordered and named PARENT:s<step>.<i>: {seen}"
    assert seen["statuses"] == ["succeeded"] * 2 + ["failed"] + ["succeeded"] * 3, seen
    assert seen["total"] == 0 + 1 + 9 + 16 + 25, "each child's result must reach the fan-in"
    assert seen["errors"] == ["child 2 says no"], "a failed child's error must reach the fan-in"
    assert child.status is RunStatus.SUCCEEDED and child.result == b"25", \
        "a child is an ordinary run: status works on it"
    recs = journal_records(state_dir)
    spawned = [r for r in recs if type(r) is Spawned]
    assert len(spawned) == 1 and len(spawned[0].children) == 6 and spawned[0].run_id == "p1", \
        "one Spawned record must carry every child"
    assert not [r for r in recs if type(r) is Submitted and r.run_id.startswith("p1:")], \
        "children are submitted by the Spawned record alone"
    leases = [r for r in recs if type(r) is Leased and r.run_id == "p1"]
    assert [r.step for r in leases] == [0, 1], "the parent must run exactly two steps"


@pytest.mark.timeout(60)
def test_children_inherit_the_parents_headers_unless_spawn_names_others(runtime):
    rt = runtime(fanout_apps.runner)
    rt.submit(_spec(n=2, do="headers", headers=None), run_id="inh", headers={"team": "a"})
    rt.submit(_spec(n=1, do="headers", headers={"role": "child", "x": "1"}), run_id="own",
              headers={"team": "b"})
    assert rt.wait("inh", timeout=40).status is RunStatus.SUCCEEDED
    assert rt.wait("own", timeout=40).status is RunStatus.SUCCEEDED
    assert json.loads(rt.result("inh:s0.1")) == {"team": "a"}, "headers=None inherits"
    assert json.loads(rt.result("own:s0.0")) == {"role": "child", "x": "1"}, \
        "Spawn.headers replaces the parent's"


@pytest.mark.timeout(60)
def test_blob_results_nested_parents_a_second_spawn_and_zero_children(runtime):
    rt = runtime(fanout_apps.runner)
    rt.submit(_spec(n=3, do="big", child={"size": 200_000}, then="sizes"), run_id="big")
    rt.submit(_spec(n=3, do="nested", child={"k": 4}), run_id="nest")
    rt.submit(_spec(n=2, then="again"), run_id="twice")
    rt.submit(_spec(n=0), run_id="none")
    big = json.loads(rt.wait("big", timeout=40).result)
    assert big["sizes"] == [200_000] * 3 and big["firsts"] == ["00", "01", "02"], \
        f"child results over the blob threshold must be read back whole: {big}"
    nest = json.loads(rt.wait("nest", timeout=40).result)
    assert nest["total"] == 3 * (0 + 1 + 4 + 9), "a child may fan out itself"
    assert rt.status("nest:s0.1:s0.3").result == b"9", "grandchildren ids nest"
    twice = json.loads(rt.wait("twice", timeout=40).result)
    assert twice["ids"] == ["twice:s1.0", "twice:s1.1", "twice:s1.1"] and \
        twice["total"] == 100 + 121, f"a second Spawn must fan in its own children: {twice}"
    none = json.loads(rt.wait("none", timeout=40).result)
    assert none["count"] == 0, "a Spawn of no children fans in at once"


@pytest.mark.timeout(60)
def test_cancelling_the_parent_cancels_its_live_children(runtime, tmp_path):
    rt = runtime(fanout_apps.runner)
    mark = tmp_path / "started"
    rt.submit(_spec(n=4, do="sleep", child={"secs": 30, "mark": str(mark)}), run_id="c")
    wait_for(mark.exists, 20, "a child step to start")
    rt.cancel("c", "enough")
    outs = [rt.wait(f"c:s0.{i}", timeout=20) for i in range(4)]
    parent = rt.wait("c", timeout=20)
    assert parent.status is RunStatus.CANCELLED, parent
    assert [o.status for o in outs] == [RunStatus.CANCELLED] * 4, \
        f"every live child must be cancelled with its parent: {outs}"
    assert all("parent c cancelled" in (o.error or "") or "token" in (o.error or "")
               for o in outs), [o.error for o in outs]


@pytest.mark.timeout(90)
def test_a_parked_parent_survives_compaction_and_a_restart(runtime, state_dir, tmp_path):
    rt = runtime(fanout_apps.runner)
    mark = tmp_path / "started"
    rt.submit(_spec(n=3, do="sleep", child={"secs": 1.0, "mark": str(mark)}), run_id="k")
    wait_for(mark.exists, 20, "a child step to start")
    assert rt.supervisor.compact(), "compaction must run while the parent is parked"
    rt.close(drain=False)
    rt2 = runtime(fanout_apps.runner)
    out = rt2.wait("k", timeout=40)
    assert out.status is RunStatus.SUCCEEDED, out
    seen = json.loads(out.result)
    assert seen["statuses"] == ["succeeded"] * 3, seen
    assert [r.step for r in journal_records(state_dir)
            if type(r) is Leased and r.run_id == "k"] == [1], \
        "after the snapshot the parent runs only its fan-in step, once"


@pytest.mark.timeout(60)
def test_fan_in_reads_children_the_archive_already_took(runtime, state_dir):
    rt = runtime(fanout_apps.runner)
    # Child 0 is slow: the fast ones finish and go to the archive before the parent fans in.
    rt.submit(_spec(n=4, do="slow", child={"first": 1.5}), run_id="a")
    out = rt.wait("a", timeout=40)
    rt.close()
    assert out.status is RunStatus.SUCCEEDED, out
    assert json.loads(out.result)["total"] == 0 + 1 + 2 + 3, \
        "archived children's results must reach the fan-in"
    recs = journal_records(state_dir)
    fan_in = next(n for n, r in enumerate(recs) if type(r) is Leased and r.run_id == "a"
                  and r.step == 1)
    early = {rid for r in recs[:fan_in] if type(r) is Archived for rid in r.run_ids}
    assert {"a:s0.1", "a:s0.2", "a:s0.3"} <= early, \
        "the test must have children archived before the fan-in (else it proves nothing)"


@pytest.mark.timeout(90)
def test_journaled_run_fans_out_and_status_lists_the_children(tmp_path):
    state = tmp_path / "s"

    def cli(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "journaled.cli", *args, "--state",
                               str(state)], cwd=ROOT, env=cli_env(), capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
        return proc.stdout

    cli("submit", json.dumps({"n": 25}), "--run-id", "cli-p")
    cli("run", "tests.apps.fanout_apps:runner", "-w", "2", "--until-idle")
    text = cli("status", "cli-p")
    assert "children:  25 spawned by step 0, 0 not finished" in text, text
    data = json.loads(cli("status", "cli-p:s0.24", "--json"))
    assert data["status"] == "succeeded" and data["parent"] == "cli-p", data
    runs = json.loads(cli("runs", "--json"))
    assert len(runs) == 26, "the children are listed as runs"
    assert json.loads(cli("result", "cli-p"))["total"] == sum(i * i for i in range(25))
    again = cli("step", "cli-p", "1")
    assert "outcome: Succeed" in again and '"count": 25' in again and '"total": 4900' in again, \
        f"'journaled step' re-runs a fan-in step with its children: {again}"

