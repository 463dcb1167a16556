"""Crash-free reference results, computed independently of the examples."""

from __future__ import annotations

import math


def primes_below(n: int) -> int:
    """How many primes are below ``n``, by a sieve (the primes example uses trial division)."""
    sieve = bytearray([1]) * n
    sieve[0:2] = b"\x00\x00"
    for p in range(2, math.isqrt(n - 1) + 1):
        if sieve[p]:
            sieve[p * p :: p] = bytes(len(range(p * p, n, p)))
    return sum(sieve)
