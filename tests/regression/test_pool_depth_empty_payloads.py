"""Empty payloads after a non-empty one must not crash the supervisor.

The pool keeps an average of payload bytes per step to cap how much it
leases ahead (``Pool.depth``). Fed zeros after one non-empty payload, the
average decays through subnormal floats; ``DEPTH_BYTES / avg`` there is
``inf`` and ``int(inf)`` raised ``OverflowError`` in the supervisor loop:
``journaled run`` died after ~3,100 empty steps (found by
``benchmarks/submit_paths.py``: one ``b"warm"`` run, then 20,000 ``b""``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from journaled import Runtime
from journaled.pool.pool import Pool
from tests.apps import basic


@pytest.mark.timeout(30)
def test_depth_survives_a_subnormal_byte_average(tmp_path: Path) -> None:
    pool = Pool(basic.echo, 1, state_dir=tmp_path)
    try:
        w = pool.workers[0]
        w.avg_step = 1e-5
        w.avg_bytes = 4.0
        for _ in range(4000):  # what Pool.send does for each empty payload
            w.avg_bytes = 0.8 * w.avg_bytes + 0.2 * 0
            assert 1 <= pool.depth(w) <= pool.max_depth
        assert 0 < w.avg_bytes < 1e-300  # deep in the subnormals, where it crashed
    finally:
        pool.close()


@pytest.mark.timeout(300)
def test_thousands_of_empty_inputs_after_one_non_empty(tmp_path: Path) -> None:
    with Runtime(tmp_path / "s", basic.echo, workers=1, call_timeout=120) as rt:
        rt.wait(rt.submit(b"warm"), 60)
        ids = rt.submit_many([b""] * 4000)
        outs = [rt.wait(rid, 120) for rid in ids]
    assert {o.status.value for o in outs} == {"succeeded"}
