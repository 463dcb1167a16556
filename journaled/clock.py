"""The supervisor's clock: where due times come from.

Every decision the supervisor makes about *when* (a delayed step is due,
a retry's back-off is over, a signal wait timed out, a step ran past its
limit, a compaction or retention check is due) reads ``now()`` (wall
clock, what the journal records) or ``monotonic()`` (intervals) from one
``Clock``. A service uses ``SYSTEM_CLOCK``; ``journaled.testing`` hands the
supervisor a ``FakeClock`` and moves it with ``advance``, so a test that
waits an hour takes no time.

Only the supervisor's own decisions go through it. Threads that merely
pace themselves (the flusher's gather, hook retries, the socket server's
timers) keep the real clock: a fake clock must never make them spin.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Wall time (``now``, seconds since the epoch) and monotonic time for intervals."""

    def now(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clocks, ``time.time`` and ``time.monotonic``."""

    now = staticmethod(time.time)
    monotonic = staticmethod(time.monotonic)

    def __repr__(self) -> str:
        return "SYSTEM_CLOCK"


SYSTEM_CLOCK: Clock = SystemClock()


class FakeClock:
    """A clock that moves only when told to; both readings move together.

    Starts at the real wall time (so records carry plausible dates) and an
    arbitrary monotonic origin. ``advance`` never goes backwards: the
    journal's times, like a real clock's, only grow.
    """

    def __init__(self, start: float | None = None) -> None:
        self._lock = threading.Lock()
        self._now = time.time() if start is None else float(start)
        self._mono = 1000.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> float:
        """Move both readings forward by ``seconds`` (>= 0); returns the new ``now()``."""
        seconds = float(seconds)
        if not seconds >= 0:  # also refuses NaN
            raise ValueError(f"a clock only moves forward: advance({seconds!r})")
        with self._lock:
            self._now += seconds
            self._mono += seconds
            return self._now

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now:.3f})"
