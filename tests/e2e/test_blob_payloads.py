"""Big bytes out of line, end to end: every kind (input, payload, result, memo) at real sizes.

The journal must stay small whatever the payloads (records carry a ref), the
bytes must come back exact, through ``Runtime``, a ``Client`` in another
process and the CLI, and at the threshold edge a value of exactly the
threshold stays inline while one byte more becomes a blob.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from journaled.blobs import DEFAULT_THRESHOLD, BlobRef, BlobStore
from journaled.client import Client
from journaled.errors import RunConflict
from journaled.records import MemoPut, StepDone, Submitted, Terminated
from journaled.tools import check
from tests.apps import blob_apps
from tests.apps.blob_apps import shifted
from tests.e2e.helpers import ROOT, cli_env, journal_records

CLI = [sys.executable, "-m", "journaled.cli"]
T = DEFAULT_THRESHOLD
SIZES = [100, 4 << 10, T - 1, T, T + 1, 1 << 20, 10 << 20]


def _refs(state: Path) -> dict[str, list[object]]:
    """The value field of every record that carries one, by record type."""
    out: dict[str, list[object]] = {"sub": [], "don": [], "end": [], "mem": []}
    for r in journal_records(state):
        if type(r) is Submitted:
            out["sub"].append(r.input)
        elif type(r) is StepDone:
            out["don"].append(r.payload)
        elif type(r) is Terminated:
            out["end"].append(r.result)
        elif type(r) is MemoPut:
            out["mem"].append(r.value)
    return out


def _journal_bytes(state: Path) -> int:
    return sum(p.stat().st_size for p in (state / "journal").glob("*.log"))


@pytest.mark.timeout(300)
def test_every_size_through_a_three_step_pipeline_via_runtime(runtime, state_dir: Path) -> None:
    rt = runtime(blob_apps.pipeline)
    inputs = {n: os.urandom(n) for n in SIZES}
    ids = {n: rt.submit(data, headers={"steps": "3"}) for n, data in inputs.items()}
    for n, rid in ids.items():
        out = rt.wait(rid, timeout=120)
        assert out.status.value == "succeeded", (n, out)
        assert out.result == shifted(inputs[n], 3), f"{n} bytes came back changed"
        assert bytes(rt.result_view(rid)) == out.result
    recs = _refs(state_dir)
    for kind in ("sub", "don", "end"):
        by_size = {(v.size if isinstance(v, BlobRef) else len(v)): v for v in recs[kind]}
        for n in SIZES:
            v = by_size[n]
            if n > T:
                assert isinstance(v, BlobRef), f"{kind} of {n} bytes must be a blob ref"
                assert BlobStore(state_dir).exists(v)
            else:
                assert isinstance(v, bytes), f"{kind} of {n} bytes (<= threshold) stays inline"
    # Every value over the threshold (22 MB of them, times 4) is out of line.
    assert _journal_bytes(state_dir) < 2 * T * 4 * 4 + (64 << 10)
    c = check(state_dir)
    assert c.ok, c.violations


@pytest.mark.timeout(120)
def test_payload_view_is_a_read_only_mmap_for_a_blob_and_a_view_for_inline(runtime) -> None:
    rt = runtime(blob_apps.view_kind)
    big, small = os.urandom(1 << 20), os.urandom(100)
    got_big = json.loads(rt.wait(rt.submit(big), 60).result)
    got_small = json.loads(rt.wait(rt.submit(small), 60).result)
    assert got_big == {"readonly": True, "mmap": True, "size": len(big),
                       "sha": hashlib.sha256(big).hexdigest()}
    assert got_small["readonly"] and not got_small["mmap"]
    assert got_small["sha"] == hashlib.sha256(small).hexdigest()


@pytest.mark.timeout(120)
def test_pipeline_reading_through_payload_view(runtime) -> None:
    rt = runtime(blob_apps.pipeline)
    data = os.urandom(3 << 20)
    out = rt.wait(rt.submit(data, headers={"steps": "4", "view": "1"}), 60)
    assert out.result == shifted(data, 4)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("size", [T + 1, 1 << 20])
def test_a_big_memo_survives_the_worker_dying_and_is_a_ref_in_the_journal(
        runtime, state_dir: Path, size: int) -> None:
    rt = runtime(blob_apps.memo_then_die)
    data = os.urandom(size)
    out = rt.wait(rt.submit(data), 60)
    assert out.status.value == "succeeded", out
    assert out.result == shifted(data, 7), "the retry read the memo from its blob"
    assert len(rt.history(out.run_id)) == 2
    (memo,) = _refs(state_dir)["mem"]
    assert isinstance(memo, BlobRef) and memo.size == size


@pytest.mark.timeout(120)
def test_resubmitting_the_same_big_input_is_a_no_op_and_other_input_conflicts(
        runtime, state_dir: Path) -> None:
    rt = runtime(blob_apps.pipeline)
    data = os.urandom(1 << 20)
    assert rt.submit(data, run_id="same") == "same"
    assert rt.submit(bytearray(data), run_id="same") == "same"
    client = Client(state_dir)
    assert client.submit(data, run_id="same") == "same"
    with pytest.raises(RunConflict):
        rt.submit(data[:-1] + b"!", run_id="same")
    with pytest.raises(RunConflict):
        client.submit(data[:-1] + b"!", run_id="same")
    rt.wait("same", 60)
    assert sum(1 for v in _refs(state_dir)["sub"]) == 1
    # Inline at another threshold, the same content is still the same input.
    assert Client(state_dir, blob_threshold=64 << 20).submit(data, run_id="same") == "same"


@pytest.mark.timeout(120)
def test_the_threshold_is_configurable(runtime, state_dir: Path) -> None:
    rt = runtime(blob_apps.pipeline, blob_threshold=1000)
    data = os.urandom(1001)
    out = rt.wait(rt.submit(data, headers={"steps": "2"}), 60)
    assert out.result == shifted(data, 2)
    recs = _refs(state_dir)
    assert all(isinstance(v, BlobRef) for v in recs["sub"] + recs["don"] + recs["end"])


_CLIENT = textwrap.dedent("""
    import os, sys, hashlib
    from journaled.client import Client
    c = Client(sys.argv[1])
    data = bytes(range(256)) * (int(sys.argv[2]) // 256)
    rid = c.submit(data, headers={"steps": "3"}, run_id="from-client")
    inbox = os.path.join(sys.argv[1], "inbox")
    print(max(os.path.getsize(os.path.join(inbox, n)) for n in os.listdir(inbox)
              if not n.startswith(".") and n != "rejected"), flush=True)
    out = c.wait(rid, timeout=float(sys.argv[3]))
    print(out.status.value, hashlib.sha256(out.result).hexdigest(), len(out.result))
""")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("size", [T + 256, 10 << 20])
def test_client_in_another_process_and_the_cli_supervisor(tmp_path: Path, size: int) -> None:
    state = tmp_path / "state"
    env = cli_env()
    client = subprocess.Popen([sys.executable, "-c", _CLIENT, str(state), str(size), "120"],
                              env=env, stdout=subprocess.PIPE, text=True)
    assert client.stdout is not None
    inbox_file = int(client.stdout.readline())
    assert inbox_file < 4096, "the inbox message carries a ref, not the input"
    sup = subprocess.run([*CLI, "run", "tests.apps.blob_apps:pipeline", "--until-idle",
                          "-w", "2", "--state", str(state)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=240)
    assert sup.returncode == 0, sup.stderr
    status, sha, n = client.stdout.readline().split()
    assert client.wait(60) == 0
    want = shifted(bytes(range(256)) * (size // 256), 3)
    assert (status, sha, int(n)) == ("succeeded", hashlib.sha256(want).hexdigest(), len(want))
    # The CLI streams the result out of its blob, to a file or to stdout.
    out_file = tmp_path / "result.bin"
    got = subprocess.run([*CLI, "result", "from-client", "--out", str(out_file),
                          "--state", str(state)], env=env, capture_output=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert out_file.read_bytes() == want
    got = subprocess.run([*CLI, "result", "from-client", "--state", str(state)], env=env,
                         capture_output=True, timeout=60)
    assert got.returncode == 0 and got.stdout == want
    ver = subprocess.run([*CLI, "verify", "--json", "--state", str(state)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert ver.returncode == 0, ver.stdout
    assert json.loads(ver.stdout)["blobs"]["count"] == 4  # input, 2 payloads, result


@pytest.mark.timeout(120)
def test_cli_submit_of_a_big_file_writes_a_blob(tmp_path: Path) -> None:
    state = tmp_path / "state"
    big = tmp_path / "in.bin"
    data = os.urandom(9 << 20)  # over the old 8 MiB inline limit
    big.write_bytes(data)
    sub = subprocess.run([*CLI, "submit", "--input-file", str(big), "--run-id", "f",
                          "--state", str(state)], env=cli_env(), capture_output=True,
                         text=True, timeout=60)
    assert sub.returncode == 0, sub.stderr
    (msg,) = [p for p in (state / "inbox").iterdir() if p.is_file()]
    assert msg.stat().st_size < 4096
    assert BlobStore(state).read(BlobRef(hashlib.sha256(data).hexdigest(), len(data))) == data


@pytest.mark.timeout(120)
def test_on_terminal_hooks_get_the_result_bytes(state_dir: Path, runtime) -> None:
    seen: list[bytes | None] = []
    rt = runtime(blob_apps.pipeline, on_terminal=lambda o: seen.append(o.result))
    data = os.urandom(1 << 20)
    rid = rt.submit(data, headers={"steps": "1"})
    rt.wait(rid, 60)
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen == [shifted(data, 1)]


@pytest.mark.timeout(120)
def test_sweep_takes_superseded_payload_blobs_and_keeps_what_runs_name(
        runtime, state_dir: Path) -> None:
    rt = runtime(blob_apps.pipeline)
    sup = rt.supervisor
    data = os.urandom(T + 10)
    rid = rt.submit(data, headers={"steps": "3"})
    rt.wait(rid, 60)
    store = BlobStore(state_dir)
    refs = _refs(state_dir)
    (inp,), (p1, p2), (res,) = refs["sub"], refs["don"], refs["end"]
    # Succeeded: it goes to the archive, which names its input and result only.
    deadline = time.monotonic() + 30
    while rid in sup.state.runs and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rid not in sup.state.runs, "the finished run was archived"
    old = time.time() - 7 * 86400 - 3600
    for _p, _st in store.names():
        os.utime(_p, (old, old))
    sup.retention, sup.blob_grace = 3600.0, 0.0
    before = sup.blobs_swept
    sup.retention_check = 0.05
    rt.supervisor.wake()
    deadline = time.monotonic() + 30
    while sup.blobs_swept == before and time.monotonic() < deadline:
        time.sleep(0.05)
        rt.supervisor.wake()
    assert sup.blobs_swept - before == 2
    for ref in (p1, p2):
        assert not store.exists(ref), "payloads nothing names any more are swept"
    for ref in (inp, res):
        assert store.exists(ref), "what the archived run still names is kept"
    assert rt.result(rid) == shifted(data, 3)
    c = check(state_dir)
    assert c.ok, c.violations
    assert c.blobs.gone == 2 and c.blobs.orphans == 0


@pytest.mark.timeout(120)
def test_verify_reports_a_missing_and_a_damaged_blob_and_orphans(runtime, state_dir: Path
                                                                  ) -> None:
    rt = runtime(blob_apps.pipeline)
    rid = rt.submit(os.urandom(T + 1), headers={"steps": "1"})
    rt.wait(rid, 60)
    rt.close()
    store = BlobStore(state_dir)
    (inp,), (res,) = _refs(state_dir)["sub"], _refs(state_dir)["end"]
    store.put(b"o" * (T + 5))  # an orphan
    assert check(state_dir).ok
    os.unlink(store.path(res))
    p = store.path(inp)
    p.write_bytes(b"x" * inp.size)  # same size, other content
    c = check(state_dir)
    assert not c.ok
    text = "\n".join(c.violations)
    assert res.sha256 in text and "missing" in text
    assert inp.sha256 in text and "damaged" in text
    assert c.blobs.orphans == 1 and any("orphan" in w for w in c.warnings)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_100_mb_input_payloads_and_result(runtime, state_dir: Path) -> None:
    rt = runtime(blob_apps.pipeline)
    data = os.urandom(100 << 20)
    rid = rt.submit(data, headers={"steps": "3"})
    out = rt.wait(rid, 600)
    assert out.status.value == "succeeded", out
    want = shifted(data, 3)
    del data
    assert out.result == want
    assert _journal_bytes(state_dir) < 64 << 10


@pytest.mark.timeout(120)
def test_journaled_step_and_log_handle_blob_payloads(runtime, state_dir: Path) -> None:
    rt = runtime(blob_apps.pipeline)
    data = os.urandom(T + 100)
    rid = rt.submit(data, headers={"steps": "3"})
    rt.wait(rid, 60)
    rt.close()
    env = cli_env()
    step = subprocess.run([*CLI, "step", rid, "2", "--app", "tests.apps.blob_apps:pipeline",
                           "--state", str(state_dir)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert step.returncode == 0, step.stderr
    assert f"{T + 100} payload bytes" in step.stderr and "Succeed" in step.stdout
    log = subprocess.run([*CLI, "log", "--json", "--state", str(state_dir)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert log.returncode == 0, log.stderr
    subs = [json.loads(ln) for ln in log.stdout.splitlines() if '"sub"' in ln]
    assert subs and subs[0]["input"] == {"blob": hashlib.sha256(data).hexdigest(),
                                         "size": T + 100}


@pytest.mark.timeout(120)
def test_submitting_a_stored_blob_by_its_ref(runtime, state_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    data = os.urandom(2 << 20)
    src.write_bytes(data)
    client = Client(state_dir)
    ref = client.blobs.put_file(src)  # streamed: the file is never read whole
    rid = client.submit(ref, headers={"steps": "1"})
    with pytest.raises(ValueError, match="no blob"):
        client.submit(BlobRef("0" * 64, 5))
    rt = runtime(blob_apps.pipeline)
    assert rt.wait(rid, 60).result == shifted(data, 1)
    assert client.submit(data, run_id=rid, headers={"steps": "1"}) == rid  # same content
