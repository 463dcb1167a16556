"""Runners for the limits and CPU-hygiene tests (``tests.apps.limits_apps``).

``hold``: a step that holds whatever its run asked for for ``input`` seconds,
marking ``headers["mark"]`` first (the file holds the worker's pid).
``env``: reports the worker's thread-pool environment, its CPU affinity and
how many steps this worker process ran. ``hog``: touches ``input`` MB, then
sleeps a little so the RSS monitor can see it.
"""

from __future__ import annotations

import json
import os
import time

from journaled import Step, Succeed
from journaled.pool.hygiene import THREAD_VARS
from tests.apps.state_apps import _mark

_STEPS = 0


def hold(step: Step) -> Succeed:
    _mark(step)
    time.sleep(float(step.payload or b"0"))
    return Succeed(str(os.getpid()).encode())


def env(step: Step) -> Succeed:
    global _STEPS
    _STEPS += 1
    out = {v: os.environ.get(v) for v in THREAD_VARS}
    out["pid"] = os.getpid()
    out["steps"] = _STEPS
    out["cpus"] = sorted(os.sched_getaffinity(0))
    try:
        import threadpoolctl  # type: ignore[import-not-found]

        out["blas"] = [p["num_threads"] for p in threadpoolctl.threadpool_info()]
    except ImportError:
        pass
    return Succeed(json.dumps(out).encode())


def hog(step: Step) -> Succeed:
    mb = int(step.payload or b"0")
    block = bytearray(mb << 20)
    for i in range(0, len(block), 4096):  # touch every page: RSS, not just address space
        block[i] = 1
    time.sleep(float(step.headers.get("sleep", "1.0")))
    return Succeed(str(len(block)).encode())
