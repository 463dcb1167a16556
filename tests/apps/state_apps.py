"""Runners for the state and accounting regression tests (``tests/regression/test_state_*``).

``step.headers["app"]`` picks the scenario; ``headers["mark"]`` names a file
the step writes its worker's pid to once it runs, so a test can see it started.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from journaled import Continue, ContinueAfter, ContinueOnSignal, Step, Succeed


def _mark(step: Step) -> None:
    mark = step.headers.get("mark")
    if mark:
        tmp = Path(f"{mark}.{os.getpid()}.tmp")
        tmp.write_text(str(os.getpid()))
        os.replace(tmp, mark)


def sleep(step: Step) -> Any:
    """Sleep (payload, else ``headers["seconds"]``) seconds, ignoring the cancel token."""
    _mark(step)
    time.sleep(float(step.payload or step.headers.get("seconds", "5")))
    return Succeed(b"slept")


def three_steps(step: Step) -> Any:
    """Three short steps (long enough that the batch depth stays at one)."""
    time.sleep(float(step.headers.get("seconds", "0.02")))
    if step.step_number < 2:
        return Continue(step.payload)
    return Succeed(step.payload)


def approval(step: Step) -> Any:
    """Step 0 parks on signal key ``go`` with no timeout; step 1 reports what it saw."""
    if step.step_number == 0:
        return ContinueOnSignal(b"parked", key="go", timeout=None)
    sig = step.signal
    seen = {"key": sig.key, "data": sig.data.decode(), "timed_out": sig.timed_out} \
        if sig is not None else None
    return Succeed(json.dumps(seen).encode())


def hold(step: Step) -> Any:
    """Keep the (large) input as payload for an hour: the run stays live in snapshots."""
    if step.step_number == 0:
        return ContinueAfter(step.payload, delay=3600)
    return Succeed(b"")


def segfault(step: Step) -> Any:
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(10)
    return Succeed(b"unreachable")


def echo(step: Step) -> Any:
    return Succeed(step.payload)


APPS = {f.__name__: f for f in (sleep, three_steps, approval, hold, segfault, echo)}


def runner(step: Step) -> Any:
    return APPS[step.headers.get("app", "echo")](step)
