"""A first real pipeline: big byte arrays carried between many steps.

Each step turns the payload into a new array of the same size (a cheap,
deterministic transform), so the final digest proves every step ran on the
previous step's bytes exactly once per recorded step. The input names the
array size and the chain length: ``b"<bytes>:<steps>:<seed>"``.
"""

from __future__ import annotations

import hashlib

from journaled import Continue, Step, Succeed


def make(size: int, seed: int) -> bytes:
    """The step-0 array: ``size`` bytes derived from ``seed``."""
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def transform(data: bytes, k: int) -> bytes:
    """Step ``k``'s work: rotate by ``k + 1`` bytes (same size, order-sensitive)."""
    r = (k + 1) % len(data) if data else 0
    return data[r:] + data[:r]


def expected(spec: bytes) -> bytes:
    """What the run must return, computed without journaled."""
    size, steps, seed = (int(x) for x in spec.split(b":"))
    data = make(size, seed)
    for k in range(1, steps):
        data = transform(data, k)
    return hashlib.sha256(data).hexdigest().encode()


def runner(step: Step) -> Continue | Succeed:
    if step.step_number == 0:
        head = step.payload.split(b"|", 1)[0]
        size, steps, seed = (int(x) for x in head.split(b":"))
        data = make(size, seed)
        return Continue(b"%d|" % steps + data)
    steps_b, data = step.payload.split(b"|", 1)
    steps = int(steps_b)
    data = transform(data, step.step_number)
    if step.step_number >= steps - 1:
        return Succeed(hashlib.sha256(data).hexdigest().encode())
    return Continue(steps_b + b"|" + data)
