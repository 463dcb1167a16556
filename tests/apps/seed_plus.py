"""Runners for the features beyond the seed: signals, memo, priority, hooks.

``headers["app"]`` picks the scenario; side files named in headers let the
tests see from outside what ran and how often.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from journaled import ContinueOnSignal, Step, Succeed


def _append(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def approval(step: Step) -> Any:
    """Park on ``approve`` (timeout from headers), then report what woke us."""
    if step.step_number == 0:
        gate = step.headers.get("gate")
        while gate and not os.path.exists(gate):  # the test holds step 0 until it is ready
            time.sleep(0.01)
        timeout = float(step.headers.get("timeout", "0")) or None
        return ContinueOnSignal(step.payload, key="approve", timeout=timeout)
    s = step.signal
    if s is None:
        return Succeed(b"no signal?")
    return Succeed(b"timed out" if s.timed_out else b"approved:" + s.data)


def wait_twice(step: Step) -> Any:
    """Waits on the same key twice: the second wait is a permanent error."""
    if step.step_number < 2:
        return ContinueOnSignal(b"", key="k")
    return Succeed(b"unreachable")


def memo(step: Step) -> Any:
    """The expensive part runs once per step even when the worker dies after it."""
    value = step.memo.get("charge")
    if value is None:
        _append(step.headers["calls"], f"{step.run_id} {step.attempts}")
        value = f"charged-{step.run_id}".encode()
        step.memo.put("charge", value)
    if step.headers.get("die") == "1" and step.attempts == 1:
        os._exit(3)
    hold = step.headers.get("hold")
    if hold and step.attempts == 1:
        Path(hold).touch()
        time.sleep(30)  # the test kills the supervisor now
    return Succeed(value)


def order(step: Step) -> Any:
    """Record the order steps start in."""
    _append(step.headers["log"], step.payload.decode())
    time.sleep(0.02)
    return Succeed(step.payload)


def counted(step: Step) -> Any:
    """A two-step run whose every execution is logged (for output replay)."""
    _append(step.headers["log"], f"{step.run_id} {step.step_number} {step.attempts}")
    if step.step_number == 0:
        from journaled import Continue

        return Continue(b"next")
    return Succeed(b"done")


def hang(step: Step) -> Any:
    """Takes the supervisor down with it: used to exceed max_abandons."""
    Path(step.headers["mark"]).touch()
    time.sleep(60)
    return Succeed(b"")


APPS = {f.__name__: f for f in (approval, wait_twice, memo, order, counted, hang)}


def runner(step: Step) -> Any:
    return APPS[step.headers["app"]](step)
