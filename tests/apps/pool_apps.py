"""Runners for the pool regression tests; ``step.headers["app"]`` picks the behaviour.

Steps that must be seen running write their pid to ``headers["mark"]``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from journaled import Cancel, Continue, Step, Succeed


def _mark(step: Step) -> None:
    mark = step.headers.get("mark")
    if mark:
        tmp = Path(mark + ".tmp")
        tmp.write_text(str(os.getpid()))
        os.replace(tmp, mark)


def _wait_for_file(path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)


def runner(step: Step) -> object:
    app = step.headers.get("app", "quick")
    if app == "payload":
        # A chain passing `size` bytes from step to step.
        size, steps = int(step.headers["size"]), int(step.headers["steps"])
        if step.step_number > 0 and len(step.payload) != size:
            return Succeed(f"bad payload {len(step.payload)}".encode())
        if step.step_number + 1 >= steps:
            return Succeed(b"ok")
        return Continue(b"x" * size)
    if app == "env":
        return Succeed(json.dumps({"state": os.environ.get("JOURNALED_STATE"),
                                   "var": os.environ.get("POOL_TEST_VAR")}).encode())
    if app == "cooperative":
        # Wait until the test has cancelled this step and one queued behind it,
        # then say whether this step's own token is (still) set.
        _mark(step)
        _wait_for_file(step.headers["go"])
        seen = step.cancel_token.is_cancelled()
        Path(step.headers["seen"]).write_text("set" if seen else "clear")
        return Cancel("saw my token") if seen else Succeed(b"token lost")
    if app == "sleep":
        # Sleep, noting whether the shutdown notice came meanwhile.
        _mark(step)
        deadline = time.monotonic() + float(step.headers.get("seconds", "1"))
        seen = False
        while time.monotonic() < deadline:
            seen = seen or step.cancel_token.stopping()
            if seen and step.headers.get("until") == "stopping":
                break
            time.sleep(0.01)
        return Succeed(b"saw stopping" if seen else b"no notice")
    if app == "segv":
        _mark(step)
        os.kill(os.getpid(), signal.SIGSEGV)
    if app == "big":
        return Continue(b"x" * int(step.headers["size"]))
    if app == "bigmemo":
        step.memo.put("k", b"x" * int(step.headers["size"]))
        return Succeed(b"stored")
    return Succeed(step.payload)
