"""Runners the benchmarks drive; module level so worker processes import them."""

from __future__ import annotations

import os
import time

from journaled import Cancel, Continue, ContinueAfter, Fail, Succeed


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


# --------------------------------------------------------------- fixed CPU work


def spin(iterations: int) -> int:
    """A fixed amount of pure-Python work (unlike ``burn``, not a wall-clock wait).

    Two processes sharing one core each take twice as long here, so a
    speed-up measured with it is real; ``burn`` would hide oversubscription.
    """
    x = 0
    for i in range(iterations):
        x = (x + i * i) & 0xFFFF
    return x


def spin_timed(iterations: int) -> float:
    """``spin(iterations)``; returns the seconds it took (time inside the task)."""
    t0 = time.perf_counter()
    spin(iterations)
    return time.perf_counter() - t0


def spin_steps(step):  # type: ignore[no-untyped-def]
    """Payload ``b"ITERATIONS:STEPS[:BUSY]"``: ``spin(ITERATIONS)`` per step, STEPS a run.

    BUSY accumulates the seconds spent inside steps; the result is the run's
    total, so a benchmark can tell time in steps from time between them.
    """
    parts = step.payload.split(b":")
    its = parts[0]
    steps = parts[1] if len(parts) > 1 else b"1"
    busy = parts[2] if len(parts) > 2 else b"0"
    busy_s = float(busy) + spin_timed(int(its))
    if step.step_number + 1 < int(steps):
        return Continue(b"%s:%s:%r" % (its, steps, busy_s))
    return Succeed(repr(busy_s).encode())


# ------------------------------------------------------- markers for latency


def _mark(step) -> None:  # type: ignore[no-untyped-def]
    """Write ``time.perf_counter()`` to the file named by the ``marker`` header, atomically.

    ``perf_counter`` is ``CLOCK_MONOTONIC`` on Linux: one clock for every
    process on the machine, so the benchmark can subtract its own readings.
    """
    path = step.headers.get("marker")
    if not path:
        return
    t = time.perf_counter()
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(repr(t))
    os.rename(tmp, path)


def mark_step(step):  # type: ignore[no-untyped-def]
    """One step that records when it started (submit latency)."""
    _mark(step)
    return Succeed(b"")


def poll_cancel(step):  # type: ignore[no-untyped-def]
    """Mark the start, then spin on the cancel token (no sleep) until it is set."""
    _mark(step)
    token = step.cancel_token
    deadline = time.monotonic() + 60
    while not token.is_cancelled():
        if time.monotonic() > deadline:
            return Succeed(b"never cancelled")
    return Cancel("saw the token")


def ignore_cancel(step):  # type: ignore[no-untyped-def]
    """Mark the start, then sleep without ever looking at the token (killed after grace)."""
    _mark(step)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return Succeed(b"never killed")


def noop_or_fail(step):  # type: ignore[no-untyped-def]
    """One no-op step; an input starting with ``fail`` ends the run failed (scale.py)."""
    if step.payload.startswith(b"fail"):
        return Fail("asked to fail")
    return Succeed(b"ok")


def delayed_steps(step):  # type: ignore[no-untyped-def]
    """Three steps, each after ``headers["delay"]`` seconds (benchmarks/harness.py)."""
    if step.step_number < 2:
        return ContinueAfter(step.payload, float(step.headers.get("delay", "0")))
    return Succeed(step.payload)


def spawn_noop(step):  # type: ignore[no-untyped-def]
    """A parent spawning ``int(payload)`` one-step no-op children, then counting them."""
    from journaled import Spawn

    if step.headers.get("role") == "child":
        return Succeed(b"")
    if step.step_number == 0:
        return Spawn([b""] * int(step.payload or b"0"), then=b"", headers={"role": "child"})
    return Succeed(str(len(step.children or ())).encode())
