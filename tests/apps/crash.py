"""A deterministic multi-step workflow for the supervisor kill -9 test.

Run ``n`` (its input) has ``steps_for(n)`` steps of 5-20 ms each; every
step is a pure function of ``(payload, step_number)``, so it is idempotent
and ``expected_result(input)`` is what a crash-free run gives.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from journaled import Continue, Step, Succeed


def steps_for(data: bytes) -> int:
    return 4 + int(data) % 5


def _advance(payload: bytes, step_number: int) -> bytes:
    return hashlib.sha256(payload + b"/" + str(step_number).encode()).hexdigest().encode()


def _pause(payload: bytes, step_number: int) -> float:
    return 0.005 + (hashlib.sha256(payload).digest()[0] + step_number) % 16 / 1000


def runner(step: Step) -> Any:
    """Hash the payload forward once per step; the last step returns the input and the digest."""
    if step.step_number == 0:
        data = step.payload
        payload = data + b"|" + data
    else:
        payload = step.payload
    data, _, digest = payload.partition(b"|")
    time.sleep(_pause(digest, step.step_number))
    digest = _advance(digest, step.step_number)
    if step.step_number + 1 < steps_for(data):
        return Continue(data + b"|" + digest)
    return Succeed(data + b":" + digest)


def expected_result(data: bytes) -> bytes:
    """What the run with input ``data`` ends with when nothing crashes."""
    digest = data
    for k in range(steps_for(data)):
        digest = _advance(digest, k)
    return data + b":" + digest
