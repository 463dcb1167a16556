"""``on_terminal`` hooks, run off the supervisor's loop thread.

A hook is user code: it may be slow (an HTTP call) or raise (the endpoint
is down). Run on the loop, a slow hook stopped every fsync and every lease
behind it, and a raising one was recorded as delivered and lost. Here one
thread calls the hooks; the loop only hands it outcomes and takes back the
ids of the runs whose hook returned::

    loop ──submit(outcome)──> HookRunner thread ──hook(outcome)──> user code
      ^                            │ raised: retry after a backoff (per run)
      └──── delivered() <──────────┘ returned: wake the loop, which journals
                                     HookDelivered in its next turn

Crash windows: a hook that returned but whose ``HookDelivered`` is not yet
durable fires again after a restart (at least once, as documented). A
drain is not a crash: the loop stops only once the hooks it fired have
returned and been journaled (``_hooks_settled``), up to the drain
deadline; hooks still not delivered then (or at a second signal) are left
for the next start, which finds them owed in the journal and fires them
again. ``HookFiring`` is the
loop's side, mixed into the supervisor.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from typing import Any, Callable

import msgspec

from . import failpoints
from .records import Record
from .state import State, outcome_of

log = logging.getLogger("journaled.supervisor")

BACKOFF_FIRST = 0.5  # seconds before the first retry of a raising hook
BACKOFF_CAP = 60.0  # the retry delay doubles per failure up to this


def backoff(failures: int, first: float = BACKOFF_FIRST, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1-based)."""
    return min(cap, first * 2 ** max(0, failures - 1))


class HookRunner:
    """One thread calling ``hook(outcome)``, each run retried on its own schedule.

    A run whose hook keeps failing waits its backoff without holding up the
    hooks of other runs (a heap ordered by due time, not a FIFO).
    """

    def __init__(self, hook: Callable[[Any], Any], wake: Callable[[], None], *,
                 first: float = BACKOFF_FIRST, cap: float = BACKOFF_CAP,
                 resolve: Callable[[Any], bytes | None] | None = None) -> None:
        self.hook = hook
        self.wake = wake
        # Reads a result blob, on this thread (never the loop's): hooks get bytes.
        self.resolve = resolve
        self.first, self.cap = first, cap
        self._due: list[tuple[float, int, str, Any, int]] = []  # (due, seq, run, outcome, fails)
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._done: deque[str] = deque()  # thread -> loop; deque appends are atomic
        self._in_call = False
        self._owed: set[str] = set()
        self.calls = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._loop, daemon=True, name="journaled-hooks")
        self._thread.start()

    def submit(self, run_id: str, outcome: Any) -> None:
        """Queue a run's hook (called on the loop thread, after its outcome is durable)."""
        with self._cond:
            heapq.heappush(self._due, (0.0, next(self._seq), run_id, outcome, 0))
            self._owed.add(run_id)
            self._cond.notify()

    def owed(self) -> set[str]:
        """Runs handed over whose hook has not returned yet."""
        with self._cond:
            return set(self._owed)

    def delivered(self) -> list[str]:
        """Runs whose hook returned since the last call (the loop journals HookDelivered)."""
        out = []
        while self._done:
            out.append(self._done.popleft())
        return out

    def busy(self) -> bool:
        """A hook is running, due for its first call, or returned and not yet journaled.

        A hook that already failed and waits for its retry does not count:
        ``--until-idle`` leaves it owed to the next start instead of waiting forever.
        """
        with self._cond:
            return self._in_call or bool(self._done) or any(d[4] == 0 for d in self._due)

    def close(self, timeout: float = 1.0) -> None:
        """Stop calling hooks; what is still queued is owed to the next start."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _next(self) -> tuple[str, Any, int] | None:
        with self._cond:
            while not self._closed:
                if self._due:
                    wait = self._due[0][0] - time.monotonic()
                    if wait <= 0:
                        _due, _seq, rid, outcome, fails = heapq.heappop(self._due)
                        self._in_call = True
                        return rid, outcome, fails
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
        return None

    def _loop(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            rid, outcome, fails = item
            self.calls += 1
            try:
                if self.resolve is not None and outcome.result is not None \
                        and not isinstance(outcome.result, bytes):
                    outcome = msgspec.structs.replace(outcome,
                                                      result=self.resolve(outcome.result))
                self.hook(outcome)
            except BaseException as e:  # noqa: BLE001 - a hook's bug must not stop anything
                fails += 1
                self.failures += 1
                delay = backoff(fails, self.first, self.cap)
                log.warning("on_terminal hook failed for run %s (failure %d): %s: %s; "
                            "retrying in %.1f s", rid, fails, type(e).__name__,
                            str(e).splitlines()[0][:300] if str(e) else "", delay)
                with self._cond:
                    self._in_call = False
                    if self._closed:
                        return
                    heapq.heappush(self._due, (time.monotonic() + delay, next(self._seq), rid,
                                               item[1], fails))
                continue
            if failpoints.ENABLED:
                failpoints.hit("supervisor.after_hook")
            with self._cond:
                self._done.append(rid)
                self._owed.discard(rid)
                self._in_call = False
                closed = self._closed
            if not closed:  # after close the wake pipe may be gone (or its fd reused)
                self.wake()


class HookFiring:
    """The loop's side of the hooks (a mixin): durable outcomes out, delivered runs back."""

    # What this part needs of the supervisor it is mixed into.
    state: State
    on_terminal: Callable[[Any], Any] | None
    outcomes: set[str]
    _carry: list[Record]
    wake: Callable[[], None]
    clock: Any
    _stop_now: bool
    _drain_deadline: float

    def _init_hooks(self) -> None:
        self._hooks: HookRunner | None = None  # started with the first hook to fire

    def _fire_hook(self, run_id: str) -> None:
        """Hand a durable outcome to the hook thread (never call user code on the loop)."""
        run = self.state.runs[run_id]
        outcome = outcome_of(run)
        self.outcomes.add(run_id)
        if failpoints.ENABLED:
            failpoints.hit("supervisor.before_hook")
        assert self.on_terminal is not None
        if self._hooks is None:
            blobs = getattr(self, "blobs", None)
            self._hooks = HookRunner(self.on_terminal, self.wake,
                                     resolve=blobs.resolve if blobs is not None else None)
        self._hooks.submit(run_id, outcome)

    def _hooks_delivered(self) -> None:
        """Hooks that returned: HookDelivered goes out with the next commit (at least once)."""
        if self._hooks is not None:
            state = self.state
            for rid in self._hooks.delivered():
                self._carry += state.hook_delivered(rid)

    def _hooks_settled(self) -> bool:
        """Stopping, workers gone: may the loop exit, or does a hook still owe its record?

        It waits for a hook that is running or due, or that returned and
        whose ``HookDelivered`` is not yet written, so a clean stop never
        fires a hook again at the next start; until the drain deadline, and
        not at all after a second signal.
        """
        hooks = self._hooks
        if hooks is None or self._stop_now or self.clock.monotonic() >= self._drain_deadline:
            return True
        return not hooks.busy() and not self._carry

    def _fire_owed_hooks(self) -> None:
        """At start: fire the hooks owed from before the crash (or the last stop)."""
        if self.on_terminal is not None:
            # Owed hooks from before the crash; recovery's own dead letters are queued already.
            queued = self._hooks.owed() if self._hooks is not None else set()
            for rid in sorted(self.state.unhooked - queued):
                self._fire_hook(rid)
