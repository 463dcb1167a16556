"""Helpers for the end-to-end tests: journal reading, polling, process checks, CLI env."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from journaled.journal import Journal
from journaled.records import decode

ROOT = Path(__file__).resolve().parent.parent.parent


def journal_records(state: Path) -> list[Any]:
    """Every record of the state directory's journal, decoded, oldest first (read-only)."""
    return [decode(body) for _seg, _off, body in Journal(state / "journal").replay()]


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a live process (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for ``journaled`` subprocesses: the repository root importable."""
    env = dict(os.environ)
    env.pop("JOURNALED_STATE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env
