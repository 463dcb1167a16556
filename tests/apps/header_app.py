"""A runner whose result is its ``greeting`` header: proves headers reach every step."""

from __future__ import annotations

from typing import Any

from journaled import Continue, Step, StepError, Succeed


def runner(step: Step) -> Any:
    greeting = step.headers.get("greeting")
    if greeting is None:
        raise StepError.permanent("no greeting header")
    if step.step_number == 0:
        return Continue(step.payload)
    return Succeed(f"{greeting}, {step.payload.decode()} ({step.headers.get('lang', '-')})"
                   .encode())
