"""Runners the benchmarks drive; module level so worker processes import them."""

from __future__ import annotations

import time

from journaled import Continue, Succeed


def noop(step):  # type: ignore[no-untyped-def]
    """A one-step run: only journaled's own cost is measured."""
    return Succeed(b"")


def ten_steps(step):  # type: ignore[no-untyped-def]
    """Ten no-op steps per run."""
    if step.step_number < 9:
        return Continue(b"")
    return Succeed(b"")


def burn(seconds: float) -> int:
    """Pure-Python CPU work for about ``seconds`` (calibrated by the caller)."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def cpu_step(step):  # type: ignore[no-untyped-def]
    """One CPU-bound step of ``payload`` milliseconds."""
    burn(float(step.payload or b"50") / 1000)
    return Succeed(b"")
