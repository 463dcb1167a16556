"""The first real user's pipeline, as they ran it: `journaled run` as a service,
clients in other processes, big arrays between steps, a compaction under load.

Each of these hung, crash-looped or lost runs before issue 11; they run the
whole stack (CLI, supervisor, pool, journal, client), with no part faked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from journaled.client import Client
from tests.apps import pipeline
from tests.e2e.helpers import ROOT, cli_env

APP = "tests.apps.pipeline:runner"


def _serve(state: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "journaled.cli", "run", APP, "--state", str(state), "-w", "2",
         *args], cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True)


def _submit_from_other_process(state: Path, specs: list[bytes], one_by_one: int = 4
                                ) -> list[str]:
    """The first few with their own `journaled submit` each, the rest in one
    `journaled submit --each-line`, as a shell script would."""
    ids = []
    for i, spec in enumerate(specs[:one_by_one]):
        out = subprocess.run(
            [sys.executable, "-m", "journaled.cli", "submit", spec.decode(), "--run-id",
             f"p-{i}", "--state", str(state)], cwd=ROOT, env=cli_env(), capture_output=True,
            timeout=60)
        assert out.returncode == 0, out.stderr.decode()
        ids.append(out.stdout.decode().strip())
    rest = specs[one_by_one:]
    if rest:
        lines = state.parent / "inputs.txt"
        lines.write_bytes(b"\n".join(rest) + b"\n")
        out = subprocess.run(
            [sys.executable, "-m", "journaled.cli", "submit", "--each-line", str(lines),
             "--state", str(state)], cwd=ROOT, env=cli_env(), capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr.decode()
        ids += out.stdout.decode().split()
    assert len(ids) == len(specs)
    return ids


def _stop(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    return err.decode(errors="replace")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("size", [4096, 65536, 300_000])
def test_big_payloads_between_many_steps_never_hang_the_supervisor(
        tmp_path: Path, size: int) -> None:
    state = tmp_path / "state"
    runs, steps = (200, 30) if size <= 65536 else (40, 20)
    specs = [b"%d:%d:%d" % (size, steps, i) for i in range(runs)]
    proc = _serve(state)
    try:
        ids = _submit_from_other_process(state, specs)
        client = Client(state)
        for rid, spec in zip(ids, specs, strict=True):
            out = client.wait(rid, timeout=200)
            assert out.status == "succeeded", (rid, out)
            assert out.result == pipeline.expected(spec), rid
            assert out.steps == steps
    finally:
        err = _stop(proc)
    assert "Traceback" not in err, err[-3000:]


@pytest.mark.timeout(240)
def test_3mb_inputs_survive_a_compaction_under_load_and_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    size = 3 << 20
    specs = [b"%d:%d:%d" % (size, 3, i) for i in range(24)]
    client = Client(state) if state.exists() else None
    proc = _serve(state)
    try:
        ids = _submit_from_other_process(state, specs)
        compact = subprocess.run(
            [sys.executable, "-m", "journaled.cli", "compact", "--state", str(state)],
            cwd=ROOT, env=cli_env(), capture_output=True, timeout=60)
        assert compact.returncode == 0, compact.stderr.decode()
        client = Client(state)
        first = client.wait(ids[0], timeout=200)
        assert first.status == "succeeded", first
    finally:
        err = _stop(proc)
    assert "Traceback" not in err, err[-3000:]
    # A restart replays the compacted journal and finishes whatever is left.
    proc = _serve(state, "--until-idle")
    try:
        assert proc.wait(timeout=200) == 0
    finally:
        err = _stop(proc)
    assert "Traceback" not in err, err[-3000:]
    client = Client(state)
    for rid, spec in zip(ids, specs, strict=True):
        out = client.status(rid)
        assert out.status == "succeeded", (rid, out)
        assert out.result == pipeline.expected(spec)
