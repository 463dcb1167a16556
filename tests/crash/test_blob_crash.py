"""Kill -9 around blob writes: no record may ever name a blob that is not durable.

A blob is written (temp file, fsync, rename, directory fsync) before any
record names it. So a worker killed while writing a result blob leaves at
most a temp file nothing names, its step is retried, and the run ends with
the crash-free result; a process killed while writing an input blob never
acknowledged the submission. Supervisors and workers run in power-loss mode
(``JOURNALED_SIMULATE_POWER_LOSS=1``: unsynced blob bytes are lost with the
process, as a power cut would lose them).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from journaled.blobs import BlobRef, BlobStore
from journaled.client import Client
from journaled.errors import RunNotFound
from journaled.records import MemoPut, StepDone, Submitted, Terminated
from journaled.runtime import Runtime
from journaled.tools import check
from tests.apps import blob_apps
from tests.apps.blob_apps import shifted
from tests.e2e.helpers import ROOT, cli_env, journal_records, wait_for

CLI = [sys.executable, "-m", "journaled.cli"]
POWER = {"JOURNALED_SIMULATE_POWER_LOSS": "1"}


def _named_refs(state: Path) -> list[BlobRef]:
    out = []
    for r in journal_records(state):
        for f in ("input", "payload", "result", "value"):
            v = getattr(r, f, None)
            if type(r) in (Submitted, StepDone, Terminated, MemoPut) and isinstance(v, BlobRef):
                out.append(v)
    return out


def _assert_every_named_blob_is_whole(state: Path) -> None:
    store = BlobStore(state)
    refs = _named_refs(state)
    assert refs, "the scenario must have put blobs in the journal"
    for ref in refs:
        assert store.exists(ref), f"a record names blob {ref.sha256}, which is not whole"
        assert store.hash_file(store.path(ref)) == ref.sha256
    c = check(state)
    assert c.ok, c.violations


@pytest.mark.timeout(180)
@pytest.mark.parametrize("point", ["blobs.before_fsync", "blobs.after_fsync"])
def test_workers_killed_at_each_blob_failpoint_retry_to_the_right_result(
        tmp_path: Path, point: str) -> None:
    """``crash@2``: every worker process dies at its second blob write (its result or
    payload); the retry on a fresh worker gets one further, and no step fails twice.

    One run and one worker, so each process writes blobs in a known order: with
    several, a fresh worker could be handed two steps and die at the second one's
    blob every time, which says nothing about blobs."""
    state = tmp_path / "state"
    client = Client(state)
    inputs = {"r0": os.urandom(200_000)}
    for rid, data in inputs.items():
        client.submit(data, headers={"steps": "3"}, run_id=rid)
    env = cli_env(JOURNALED_FAILPOINTS=f"{point}=crash@2", **POWER)
    sup = subprocess.run([*CLI, "run", "tests.apps.blob_apps:pipeline", "--until-idle", "-w",
                          "1", "--max-attempts", "5", "--backoff", "0.01", "--state",
                          str(state)], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=150)
    assert sup.returncode == 0, sup.stderr
    died = 0
    for rid, data in inputs.items():
        out = client.status(rid)
        assert out.status.value == "succeeded", out
        assert out.result == shifted(data, 3)
        died += sum(a.outcome == "worker_died" for a in client.history(rid))
    assert died >= 2, "the failpoint must have killed workers mid-write"
    _assert_every_named_blob_is_whole(state)
    temps = [p for p, _ in BlobStore(state).names() if p.name.startswith(".")]
    assert temps, "the killed writers left their temp files (named by nothing)"
    if point == "blobs.before_fsync":
        assert all(p.stat().st_size == 0 for p in temps), "power-loss: unsynced bytes lost"


@pytest.mark.timeout(180)
def test_a_worker_sigkilled_while_writing_a_huge_result_blob(runtime, tmp_path: Path,
                                                              state_dir: Path) -> None:
    mark = tmp_path / "mark"
    rt = runtime(blob_apps.slow_big_result)
    data = os.urandom(1 << 20)
    rid = rt.submit(data, headers={"mark": str(mark), "size": str(96 << 20)})
    pid = int(wait_for(lambda: mark.exists() and mark.read_text(), 60, "the step to start"))
    store = BlobStore(state_dir)

    def writing() -> bool:
        return any(p.name.startswith(".tmp-") for p, _ in store.names())

    wait_for(writing, 60, "the result blob's temp file")
    os.kill(pid, signal.SIGKILL)  # in the middle of writing 96 MB
    out = rt.wait(rid, 120)
    assert out.status.value == "succeeded", out
    assert [a.outcome for a in rt.history(rid)][:1] == ["worker_died"]
    assert out.result == shifted(data, 1) * 96
    rt.close()
    _assert_every_named_blob_is_whole(state_dir)


_SUBMITTER = textwrap.dedent("""
    import sys
    from journaled.runtime import Runtime
    from tests.apps.blob_apps import pipeline
    if __name__ == "__main__":
        with Runtime(sys.argv[1], pipeline, workers=1) as rt:
            print(rt.wait(rt.submit(b"small", run_id="small"), 60).status.value, flush=True)
            rt.submit(bytes(range(256)) * 1000, run_id="big")
            print("acknowledged", flush=True)
""")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("point", ["blobs.before_fsync", "blobs.after_fsync"])
def test_supervisor_killed_at_a_blob_failpoint_never_acknowledged_the_submission(
        tmp_path: Path, point: str) -> None:
    """The Runtime process (the supervisor) writes an input blob and dies at the point."""
    state = tmp_path / "state"
    env = cli_env(JOURNALED_FAILPOINTS=f"{point}=crash", **POWER)
    proc = subprocess.run([sys.executable, "-c", _SUBMITTER, str(state)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.split() == ["succeeded"], "killed before the big submit returned"
    client = Client(state)
    with pytest.raises(RunNotFound):
        client.status("big")
    c = check(state)
    assert c.ok, c.violations
    assert c.blobs.temp_files == 1 and c.blobs.blobs == 0
    # Restarted, the same submission goes through and runs.
    with Runtime(state, blob_apps.pipeline, workers=1) as rt:
        data = bytes(range(256)) * 1000
        rt.submit(data, run_id="big")
        assert rt.wait("big", 60).result == shifted(data, 3)
    _assert_every_named_blob_is_whole(state)


@pytest.mark.timeout(180)
def test_supervisor_sigkilled_while_a_worker_holds_a_synced_unrenamed_blob(tmp_path: Path
                                                                          ) -> None:
    """The worker pauses between the blob's fsync and its rename; the supervisor is
    killed -9 there. The worker exits with it, the result was never sent, and the
    restart runs the step again to the same result."""
    state = tmp_path / "state"
    client = Client(state)
    data = os.urandom(300_000)
    client.submit(data, headers={"steps": "2"}, run_id="held")
    env = cli_env(JOURNALED_FAILPOINTS="blobs.after_fsync=delay:3000", **POWER)
    sup = subprocess.Popen([*CLI, "run", "tests.apps.blob_apps:pipeline", "-w", "1",
                            "--state", str(state)], env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           start_new_session=True)
    store = BlobStore(state)
    try:
        wait_for(lambda: any(p.name.startswith(".tmp-") for p, _ in store.names()), 60,
                 "a synced temp blob")
        os.kill(sup.pid, signal.SIGKILL)
        sup.wait(10)
    finally:
        if sup.poll() is None:
            os.killpg(sup.pid, signal.SIGKILL)
    # The worker notices its supervisor is gone and exits (before the rename lands).
    time.sleep(0.5)
    (inp,) = _named_refs(state)  # the input blob the client wrote
    for p, _ in store.names():
        assert p.name.startswith(".tmp-") or p.name == inp.sha256, \
            "no payload blob was renamed into place"
    c = check(state)
    assert c.ok, c.violations
    env = cli_env(**POWER)
    again = subprocess.run([*CLI, "run", "tests.apps.blob_apps:pipeline", "--until-idle", "-w",
                            "1", "--state", str(state)], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert client.result("held") == shifted(data, 2)
    _assert_every_named_blob_is_whole(state)


@pytest.mark.timeout(200)
@pytest.mark.parametrize("kills", [4, pytest.param(8, marks=pytest.mark.slow)])
def test_crashtest_with_payloads_over_the_blob_threshold_passes_under_kills(tmp_path: Path,
                                                                            kills: int) -> None:
    """Every Continue payload carries 70,000 bytes (a blob): kills of the supervisor and of
    workers, power-loss mode, and every run ends exactly once with the reference result.

    Each kill costs a supervisor restart (seconds): 4 in the suite, 8 under ``-m slow``."""
    import json

    inputs = tmp_path / "inputs.txt"
    inputs.write_text("150000\n200000\n250000\n")
    env = {k: v for k, v in cli_env().items()
           if k not in ("JOURNALED_FAILPOINTS", "JOURNALED_SIMULATE_POWER_LOSS")}
    proc = subprocess.run([*CLI, "crashtest", "examples.primes:runner", "--input-file",
                           str(inputs), "--json", "--state", str(tmp_path / "ct"), "--runs", "4",
                           "--kills", str(kills), "--seed", "5", "--payload-bytes", "70000"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0 and doc["ok"], doc["violations"][:5]
    assert doc["payload_bytes"] == 70000
    assert doc["kills"]["total"] >= kills, f"the kill budget must be spent: {doc['kills']}"
