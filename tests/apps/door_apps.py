"""Runners for the socket tests: ``headers["app"]`` picks one (no header: echo)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from journaled import ContinueOnSignal, Step, StepError, Succeed


def echo(step: Step) -> Any:
    return Succeed(step.payload)


def park(step: Step) -> Any:
    """Wait for the ``go`` signal, then succeed with its data."""
    if step.step_number == 0:
        return ContinueOnSignal(b"", key="go")
    assert step.signal is not None
    return Succeed(b"got:" + step.signal.data)


def needs_file(step: Step) -> Any:
    """Dead-lettered (permanent error) until ``headers["file"]`` exists."""
    if not Path(step.headers["file"]).exists():
        raise StepError.permanent(f"{step.headers['file']} is missing")
    return Succeed(b"found it")


def sleep(step: Step) -> Any:
    time.sleep(float(step.headers.get("seconds", "30")))
    return Succeed(b"woke up")


APPS = {f.__name__: f for f in (echo, park, needs_file, sleep)}


def runner(step: Step) -> Any:
    return APPS[step.headers.get("app", "echo")](step)
