"""The numpy step of ``thread_cap.py``: imports numpy at the top, as a user's module would,
so the forkserver loads BLAS (and reads its thread variables) before any worker forks."""

from __future__ import annotations

import numpy as np

from journaled import Step, Succeed


def blas_threads(step: Step) -> Succeed:
    """The BLAS pool size this worker really runs with (-1: threadpoolctl is missing)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return Succeed(b"-1")
    sizes = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    return Succeed(str(max(sizes, default=-1)).encode())


def matmul(step: Step) -> Succeed:
    """``reps`` products of two ``n`` x ``n`` matrices (input: b"n reps")."""
    n, reps = (int(x) for x in bytes(step.payload).split())
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n))
    b = rng.standard_normal((n, n))
    for _ in range(reps):
        a = (a @ b) / n
    return Succeed(f"{float(a[0, 0]):.6g}".encode())
