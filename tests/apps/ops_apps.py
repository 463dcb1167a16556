"""Runners for the metrics and dashboard tests; the payload says what a run does.

``b"fail"``: dead-letters at once (a permanent error with a traceback).
``b"flaky:PATH"``: dead-letters until the file PATH exists, then succeeds
(a test creates it before clicking retry). ``b"sleep:S"``: sleeps S seconds
then succeeds. ``b"steps:N"``: N ``Continue`` steps, then succeeds. Anything
else succeeds at once with the payload as its result.
"""

from __future__ import annotations

import os
import time
from typing import Any

from journaled import Continue, Step, StepError, Succeed


def _explode(what: str) -> None:
    raise StepError.permanent(what)


def runner(step: Step) -> Any:
    data = bytes(step.payload)
    if data == b"fail":
        _explode("told to fail")
    if data.startswith(b"flaky:"):
        if not os.path.exists(data[6:].decode()):
            _explode("the flag file is not there yet")
        return Succeed(b"recovered")
    if data.startswith(b"sleep:"):
        end = time.monotonic() + float(data[6:])
        while time.monotonic() < end:
            if step.cancel_token.is_cancelled() or step.cancel_token.stopping():
                break
            time.sleep(0.02)
        return Succeed(b"slept")
    if data.startswith(b"steps:"):
        left = int(data[6:].split(b":")[0])
        if step.step_number < left:
            return Continue(data)
        return Succeed(b"done")
    return Succeed(data)
