"""Helpers for the end-to-end tests: journal reading, polling, process checks, CLI env."""

from __future__ import annotations

import os
import subprocess
import sys
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


def state_cli(state: Path, timeout: float = 60
              ) -> Callable[..., subprocess.CompletedProcess[bytes]]:
    """``cli(*args)``: ``journaled ARGS --state STATE`` in a fresh process, output captured."""
    def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "journaled.cli", *args, "--state",
                               str(state)], cwd=ROOT, env=cli_env(), capture_output=True,
                              timeout=timeout)
    return cli


def most_held(state: Path) -> tuple[dict[str, float], dict[str, int], list[str]]:
    """Fold the journal in order: the most of each resource and the most steps per run key
    ever leased at once, and the run id of every lease in order.

    The journal is the order of the supervisor's decisions, so this is what it decided;
    a ``Recovered`` record (a restart) ends every open lease, as replay does.
    """
    from journaled.records import (
        AttemptFailed,
        Leased,
        Recovered,
        Released,
        StepDone,
        Submitted,
        Terminated,
    )

    res: dict[str, dict[str, float]] = {}
    keys: dict[str, str] = {}
    open_: set[str] = set()
    peak: dict[str, float] = {}
    peak_key: dict[str, int] = {}
    order: list[str] = []
    for rec in journal_records(state):
        if isinstance(rec, Submitted):
            res[rec.run_id], keys[rec.run_id] = dict(rec.resources), rec.key
        elif isinstance(rec, Leased):
            open_.add(rec.run_id)
            order.append(rec.run_id)
        elif isinstance(rec, (StepDone, AttemptFailed, Released, Terminated)):
            open_.discard(rec.run_id)
        elif isinstance(rec, Recovered):
            open_.clear()
        now: dict[str, float] = {}
        per_key: dict[str, int] = {}
        for rid in open_:
            for k, v in res[rid].items():
                now[k] = now.get(k, 0.0) + v
            if keys[rid]:
                per_key[keys[rid]] = per_key.get(keys[rid], 0) + 1
        for k, v in now.items():
            peak[k] = max(peak.get(k, 0.0), v)
        for k, n in per_key.items():
            peak_key[k] = max(peak_key.get(k, 0), n)
    return peak, peak_key, order
DOORS = ["socket", "inbox"]


@pytest.fixture(params=DOORS)
def client_door(request: Any, monkeypatch: Any) -> str:
    """Run the test once per door: every ``Client`` it makes uses that one.

    ``socket``: the default (a listening supervisor's socket, the inbox when
    none listens); ``inbox``: ``Client(..., use_socket=False)`` unless the test
    asks otherwise. Use it with ``pytestmark = pytest.mark.usefixtures("client_door")``
    and check the door with ``assert_door`` once a supervisor runs.
    """
    from journaled.client import Client

    if request.param == "inbox":
        init = Client.__init__

        def inbox_init(self: Any, *args: Any, use_socket: bool = False, **kw: Any) -> None:
            init(self, *args, use_socket=use_socket, **kw)

        monkeypatch.setattr(Client, "__init__", inbox_init)
    return str(request.param)


def assert_door(client: Any, door: str) -> None:
    """With a supervisor up: the client talks through ``door`` (the socket or the inbox)."""
    assert (client._door() is not None) == (door == "socket"), \
        f"the {door} door must be the one in use"
