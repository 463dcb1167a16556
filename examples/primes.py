"""CPU-heavy example: count the primes below N in four resumable steps.

Each step counts one quarter of ``[0, N)`` by pure-Python trial division, so
a crash costs at most one chunk of work: the running count travels in the
payload and the journal keeps it. Input is a decimal ``N`` (empty means
100000); the result is the count as decimal bytes.

Run it (from the repository root)::

    journaled submit --each-line examples/primes.inputs
    journaled run examples.primes:runner --until-idle
    journaled runs

Every step is a pure function of its payload, so re-running a step after a
crash (delivery is at-least-once) gives the same answer.
"""

from __future__ import annotations

import json
import math

from journaled import Cancel, Continue, Fail, Step, StepError, Succeed

DEFAULT_N = 100_000
CHUNKS = 4
# How many candidates to test between two looks at the cancel token and two
# progress reports: often enough to stop within milliseconds, rare enough
# to cost nothing.
_BLOCK = 4096

# Default inputs for the quick start; examples/primes.inputs holds the same, one per line.
# About 6 s of CPU in all, so roughly 3 s on two workers.
INPUTS: list[bytes] = [
    b"250000", b"500000", b"750000", b"1000000",
    b"1250000", b"1500000", b"1750000", b"2000000",
]


def _small_primes(limit: int) -> list[int]:
    """Primes ``<= limit`` by a plain sieve; only up to sqrt(N), so tiny."""
    if limit < 2:
        return []
    sieve = bytearray([1]) * (limit + 1)
    sieve[0:2] = b"\x00\x00"
    for p in range(2, math.isqrt(limit) + 1):
        if sieve[p]:
            sieve[p * p :: p] = bytes(len(range(p * p, limit + 1, p)))
    return [i for i, flag in enumerate(sieve) if flag]


def _is_prime(m: int, divisors: list[int]) -> bool:
    """Trial division by ``divisors`` (all primes up to at least sqrt(m))."""
    if m < 2:
        return False
    for d in divisors:
        if d * d > m:
            return True
        if m % d == 0:
            return m == d
    return True


def chunk_bounds(n: int, chunk: int) -> tuple[int, int]:
    """The half-open range of chunk ``chunk`` of ``[0, n)``; chunks tile it exactly."""
    return n * chunk // CHUNKS, n * (chunk + 1) // CHUNKS


def _parse_input(payload: bytes) -> int | Fail:
    text = payload.decode("ascii", "replace").strip()
    if not text:
        return DEFAULT_N
    try:
        n = int(text)
    except ValueError:
        return Fail(f"input must be a decimal integer N, got {text[:40]!r}")
    if n < 0:
        return Fail(f"N must not be negative, got {n}")
    return n


def runner(step: Step) -> Continue | Succeed | Fail | Cancel:
    """Count the primes of one chunk and hand the running total to the next step."""
    if step.step_number == 0:
        parsed = _parse_input(step.payload)
        if isinstance(parsed, Fail):
            return parsed
        n, chunk, count = parsed, 0, 0
    else:
        state = json.loads(step.payload)
        n, chunk, count = int(state["n"]), int(state["chunk"]), int(state["count"])
        if chunk != step.step_number:
            raise StepError.permanent(
                f"payload is for chunk {chunk} but this is step {step.step_number}"
            )

    if step.cancel_token.is_cancelled():
        return Cancel("cooperative")

    lo, hi = chunk_bounds(n, chunk)
    divisors = _small_primes(math.isqrt(max(n - 1, 0)))
    for start in range(lo, hi, _BLOCK):
        stop = min(start + _BLOCK, hi)
        count += sum(1 for m in range(start, stop) if _is_prime(m, divisors))
        step.progress(stop, n, f"chunk {chunk + 1}/{CHUNKS}")
        if step.cancel_token.is_cancelled():
            return Cancel("cooperative")

    if chunk + 1 < CHUNKS:
        state = {"n": n, "chunk": chunk + 1, "count": count}
        return Continue(json.dumps(state, separators=(",", ":")).encode())
    return Succeed(str(count).encode())
