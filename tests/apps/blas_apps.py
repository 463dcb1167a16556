"""A runner whose module imports numpy at the top: the forkserver loads BLAS before any fork.

So its thread cap must already be in the forkserver's environment when the
module is preloaded there (``journaled.pool.hygiene``), not only in the worker's.
"""

from __future__ import annotations

import json
import os

import numpy as np

from journaled import Step, Succeed
from journaled.pool.hygiene import THREAD_VARS


def report(step: Step) -> Succeed:
    from threadpoolctl import threadpool_info

    a = np.ones((300, 300))
    a @ a  # BLAS has started its pool now
    out = {v: os.environ.get(v) for v in THREAD_VARS}
    out["blas"] = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    out["cpus"] = len(os.sched_getaffinity(0))
    from journaled.pool import hygiene

    out["forkserver_threads"] = hygiene.FORKSERVER_THREADS  # capped there, before numpy loaded
    return Succeed(json.dumps(out).encode())
