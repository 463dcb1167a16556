"""Pure dispatch decisions: who is killed, who is charged, what is taken back, who gets work.

The supervisor turns its workers into small views (``StepView``,
``WorkerView``), asks the functions here, and acts on the answers. Nothing
here reads a clock, touches a process or a pipe, so hypothesis can drive
the hardest accounting rules of the system (S2-10, S2-11) directly:

- a worker is killed for a cancel deadline or a timeout only while the step
  that caused it is the one running;
- only the step whose own cancel or timeout caused a kill is charged;
- a kill meant for another step, a lost executor or a death while the
  supervisor is stopping is an abandon, never a failure;
- a step cut by our own shutdown is *interrupted*: spent, counted nowhere.
"""

from __future__ import annotations

import signal
from typing import NamedTuple, Sequence

# Why the supervisor killed a worker (``Worker.kill_reason``); anything else
# ("" or "reload", which only asks the worker to stop) is a death of its own.
KILL_CANCEL, KILL_TIMEOUT, KILL_SHUTDOWN, KILL_LOST, KILL_STORAGE = (
    "cancelled", "timeout", "shutdown", "lost", "storage")
_OUR_KILLS = frozenset({KILL_CANCEL, KILL_TIMEOUT, KILL_SHUTDOWN, KILL_LOST, KILL_STORAGE})

# Verdicts of ``worker_lost`` for each step the worker held.
RELEASE = "release"  # never started: hand the attempt back
ABANDON = "abandon"  # may have run, outcome lost, not its fault: one abandon
INTERRUPT = "interrupt"  # cut by our own shutdown: spent, counted nowhere
CANCELLED = "cancelled"  # killed after its cancel grace: the run ends cancelled
FAIL_TIMEOUT = "fail:timeout"  # its own step timeout: one failure
FAIL_DIED = "fail:worker_died"  # its worker died under it: one failure


class StepView(NamedTuple):
    """One step sent to a worker, as the decisions need it."""

    seq: int
    run_id: str
    attempt: int
    cancel_at: float = 0.0  # monotonic; 0: not cancelled
    limit: float = 0.0  # the step's timeout in seconds; 0: none


class WorkerView(NamedTuple):
    """One worker slot: what it holds (in send order) and what it is doing."""

    slot: int
    items: tuple[StepView, ...]
    running_seq: int  # the step it runs now (0: between steps)
    head_started: float  # monotonic time the head step became the head
    avg_step: float = 0.0  # seconds a step usually takes on it
    alive: bool = True  # a live process that is not being stopped
    depth: int = 1  # how many steps it may hold


def worker_lost(items: Sequence[StepView], running_seq: int, kill_reason: str,
                kill_seq: int, stopping: bool) -> list[tuple[StepView, str]]:
    """A worker is gone: a verdict for each step it held, in order.

    Steps after the running one never started. The running one, and any
    before it (a worker may hold finished results for a moment), may have
    run. With nothing running we cannot tell, so every step counts as
    delivered: over-counting attempts is safe, reusing an attempt number is not.
    """
    pos = next((i for i, it in enumerate(items) if it.seq == running_seq), None) \
        if running_seq else None
    out: list[tuple[StepView, str]] = []
    for i, item in enumerate(items):
        if pos is not None and i > pos:
            out.append((item, RELEASE))
        elif kill_reason == KILL_SHUTDOWN:
            out.append((item, INTERRUPT))
        elif i != pos or stopping:
            out.append((item, ABANDON))
        elif kill_reason in _OUR_KILLS:
            if kill_seq != item.seq:  # killed for another step's sake
                out.append((item, ABANDON))
            elif kill_reason == KILL_TIMEOUT:
                out.append((item, FAIL_TIMEOUT))
            elif kill_reason == KILL_CANCEL:
                out.append((item, CANCELLED))
            else:  # lost executor, storage failure: not the step's fault
                out.append((item, ABANDON))
        else:
            out.append((item, FAIL_DIED))
    return out


def running_item(w: WorkerView) -> StepView | None:
    """The head step, if the worker is running it now (else deadlines wait)."""
    if w.items and w.running_seq and w.items[0].seq == w.running_seq:
        return w.items[0]
    return None


def kill_due(w: WorkerView, mono: float, shutdown: bool) -> tuple[str, int] | None:
    """``(reason, seq)`` if ``w`` must be killed now for its running step's sake.

    Only the running step's own cancel deadline or timeout kills: a queued
    step's cancel is a skip the worker does itself, never a kill.
    """
    head = running_item(w)
    if head is None:
        return None
    if head.cancel_at and mono >= head.cancel_at:
        return (KILL_SHUTDOWN if shutdown else KILL_CANCEL, head.seq)
    if head.limit and mono - w.head_started >= head.limit:
        return (KILL_TIMEOUT, head.seq)
    return None


def next_deadline(w: WorkerView, mono: float) -> float | None:
    """The monotonic time ``kill_due`` may first say yes for ``w`` (None: never)."""
    if not w.items:
        return None
    head = w.items[0]
    best: float | None = None
    if head.cancel_at:
        best = head.cancel_at
    if head.limit:
        t = w.head_started + head.limit
        best = t if best is None else min(best, t)
    if best is not None and best <= mono and running_item(w) is None:
        return mono + 0.01  # past due but between steps: its result is on the way
    return best


def stuck_after(avg_step: float) -> float:
    """How long a head step may run before the steps queued behind it are taken back."""
    return max(0.02, 4 * avg_step)


def steal_candidates(workers: Sequence[WorkerView], mono: float) -> list[int]:
    """Slots whose queued steps should go back in line: some worker idles meanwhile."""
    live = [w for w in workers if w.alive]
    if not any(not w.items for w in live):
        return []
    return [w.slot for w in live
            if len(w.items) > 1 and mono - w.head_started > stuck_after(w.avg_step)]


def next_steal(workers: Sequence[WorkerView]) -> float | None:
    """When a steal would first become worth it (None: no worker idles, or none is stuck)."""
    return steal_at([(len(w.items), w.head_started, w.avg_step) for w in workers if w.alive])


def steal_at(live: list[tuple[int, float, float]]) -> float | None:
    """``next_steal`` from ``(steps held, head_started, avg_step)`` of each live worker."""
    if all(held for held, _s, _a in live):
        return None
    times = [started + stuck_after(avg) for held, started, avg in live if held > 1]
    return min(times) if times else None


def lease_plan(workers: Sequence[WorkerView], ready: int) -> list[tuple[int, int]]:
    """``(slot, how many)`` to lease, least-loaded worker first.

    Fair share: a deep batch learned on tiny steps must not pile every ready
    run on one worker while another idles (celery #6500); a busy worker may
    hold one step beyond its share, so the next is there when it finishes.
    """
    return plan_by_counts([(w.slot, len(w.items), w.depth) for w in workers if w.alive], ready)


def plan_by_counts(live: list[tuple[int, int, int]], ready: int) -> list[tuple[int, int]]:
    """``lease_plan`` from ``(slot, steps held, depth)`` of each live worker.

    What the loop calls once a turn: counts, so no view of every step a
    worker holds (up to 256 tiny ones) is built to be counted.
    """
    share = max(1, -(-ready // max(1, len(live))))
    plan = []
    if len(live) > 1:
        live = sorted(live, key=lambda x: x[1])
    for slot, held, depth in live:
        want = min(depth, share + (1 if held else 0)) - held
        if want > 0:
            plan.append((slot, want))
    return plan


def signal_name(code: int | None) -> str:
    """``exit code 3`` or ``killed by SIGSEGV`` for a process's exit code."""
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
