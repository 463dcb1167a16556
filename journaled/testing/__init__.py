"""Unit-test a runner: a real supervisor driven on the test's thread, with a fake clock.

::

    from journaled.testing import Harness

    def test_reminder():
        with Harness(my_runner) as h:
            rid = h.submit(b"order-1")
            h.run_until_idle()            # step 0 ran, returned ContinueAfter(3600)
            assert h.status(rid).status == "waiting"
            h.advance(3600)               # an hour passes at once; step 1 runs
            assert h.result(rid) == b"reminded"

Everything below the runner is the production code: the journal (in a
temporary directory), the state machine, leasing, retries and back-off,
signals, cancels, compaction, replay. Only two things are swapped: the
clock (``FakeClock``, moved by ``advance``) and, by default, the worker
pool (``workers="inline"``: each step runs on the test's own thread, so a
breakpoint in the runner just works). ``journaled crashtest`` stays the way
to torture a runner with real ``kill -9``; this is the way to unit-test it.
"""

from __future__ import annotations

from ..clock import SYSTEM_CLOCK, Clock, FakeClock
from .harness import Harness, HarnessError, StepCall

__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock", "Harness", "HarnessError", "StepCall"]
