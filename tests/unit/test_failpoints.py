"""Failpoint parsing, modifiers and actions; crash actions run in a child process."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from journaled import failpoints

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _reset_failpoints():
    failpoints.reset()
    yield
    failpoints.reset()


def _run_child(code: str, spec: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "JOURNALED_FAILPOINTS": spec, **env}
    return subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.timeout(10)
def test_off_by_default_and_hit_returns_none():
    assert failpoints.ENABLED is False
    assert failpoints.hit("journal.before_write") is None


@pytest.mark.timeout(10)
def test_every_required_point_is_registered_with_a_description():
    required = {
        "journal.before_write", "journal.before_sync", "journal.fdatasync", "journal.after_sync",
        "journal.before_rotate", "compact.before_rename", "compact.after_rename",
        "compact.before_delete", "supervisor.before_dispatch", "supervisor.after_dispatch",
        "supervisor.before_hook", "supervisor.after_hook", "inbox.before_rename",
        "inbox.before_unlink", "worker.before_step", "worker.after_step",
        "blobs.before_fsync", "blobs.after_fsync",
    }
    missing = required - set(failpoints.POINTS)
    assert not missing, f"unregistered failpoints: {missing}"
    assert all(isinstance(d, str) and d and "\n" not in d for d in failpoints.POINTS.values())


@pytest.mark.timeout(10)
def test_error_and_enospc_raise_oserror_like_the_real_call():
    failpoints.configure("journal.before_write=error,journal.fdatasync=enospc")
    assert failpoints.ENABLED
    with pytest.raises(OSError) as exc:
        failpoints.hit("journal.before_write")
    assert exc.value.errno == errno.EIO
    with pytest.raises(OSError) as exc:
        failpoints.hit("journal.fdatasync")
    assert exc.value.errno == errno.ENOSPC
    assert failpoints.hit("journal.after_sync") is None


@pytest.mark.timeout(10)
def test_skip_and_short_write_are_returned_to_the_caller():
    failpoints.configure("journal.fdatasync=skip, journal.before_write=short-write")
    assert failpoints.hit("journal.fdatasync") == "skip"
    assert failpoints.hit("journal.before_write") == "short-write"


@pytest.mark.timeout(10)
def test_delay_sleeps_then_continues():
    failpoints.configure("worker.before_step=delay:50")
    start = time.monotonic()
    assert failpoints.hit("worker.before_step") is None
    assert time.monotonic() - start >= 0.045


@pytest.mark.timeout(10)
def test_nth_hit_fires_once():
    failpoints.configure("journal.fdatasync=skip@3")
    fired = [failpoints.hit("journal.fdatasync") for _ in range(6)]
    assert fired == [None, None, "skip", None, None, None]


@pytest.mark.timeout(10)
def test_percent_is_seeded_and_repeatable(monkeypatch):
    monkeypatch.setenv("JOURNALED_FAILPOINT_SEED", "7")
    failpoints.configure("journal.fdatasync=skip%30")
    first = [failpoints.hit("journal.fdatasync") for _ in range(1000)]
    failpoints.configure("journal.fdatasync=skip%30")
    second = [failpoints.hit("journal.fdatasync") for _ in range(1000)]
    assert first == second, "the same seed must replay the same firing pattern"
    fired = first.count("skip")
    assert 230 < fired < 370, f"30% of 1000 hits should fire about 300 times, got {fired}"


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "spec, words",
    [
        ("journal.before_write", "missing '='"),
        ("journal.before_write=explode", "unknown action 'explode'"),
        ("journal.nope=crash", "unknown point 'journal.nope'"),
        ("journal.before_write=delay:soon", "whole milliseconds"),
        ("journal.before_write=crash@0", "hit number"),
        ("journal.before_write=crash%150", "percentage"),
        ("journal.before_write=crash%x", "percentage"),
        ("journal.before_write=crash@1%5", "not both"),
        ("journal.before_write=crash,journal.before_write=exit", "named twice"),
    ],
)
def test_malformed_spec_names_the_entry_and_the_allowed_actions(spec, words):
    with pytest.raises(ValueError) as exc:
        failpoints.configure(spec)
    msg = str(exc.value)
    assert words in msg and "\n" not in msg
    if "unknown point" not in msg:
        assert "crash, exit, error, enospc, short-write, skip, delay:MS" in msg
    assert failpoints.ENABLED is False, "a rejected spec must change nothing"


@pytest.mark.timeout(10)
def test_unregistered_name_is_quietly_ignored_when_not_configured():
    failpoints.configure("journal.before_sync=skip")
    assert failpoints.hit("some.other.point") is None


@pytest.mark.timeout(30)
def test_crash_is_a_real_sigkill_and_env_is_read_at_import():
    code = (
        "from journaled import failpoints\n"
        "assert failpoints.ENABLED\n"
        "print('before', flush=True)\n"
        "failpoints.hit('worker.before_step')\n"
        "print('after', flush=True)\n"
    )
    proc = _run_child(code, "worker.before_step=crash")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout == "before\n"


@pytest.mark.timeout(30)
def test_exit_is_os_exit_137():
    proc = _run_child(
        "from journaled import failpoints\nfailpoints.hit('worker.after_step')\nprint('after')",
        "worker.after_step=exit",
    )
    assert proc.returncode == 137, proc.stderr
    assert proc.stdout == ""


@pytest.mark.timeout(30)
def test_malformed_env_fails_loudly_at_first_use_not_at_import():
    code = "import journaled.failpoints as f\nprint('imported')\nf.hit('journal.before_write')"
    proc = _run_child(code, "journal.before_write=boom")
    assert proc.stdout == "imported\n", "importing must not raise (issue 11 item 13)"
    assert proc.returncode == 1
    assert "bad failpoint entry 'journal.before_write=boom'" in proc.stderr
