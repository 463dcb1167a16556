"""Lists of runs as every reader gives them: live and archived ones merged, newest first.

Shared by ``Client`` and ``Runtime`` so both doors order, filter and cut the
same way; pure functions, no I/O (moved out of client.py, which keeps the names).
"""

from __future__ import annotations

from .api import DeadLetter, RunOutcome, RunStatus
from .inbox import SubmitMsg
from .state import Run

__all__ = ["dead_letter", "merge_dead", "merge_runs", "pending_outcome"]


def dead_letter(run: Run) -> DeadLetter:
    """The public copy of a dead-lettered run (never the live ``Run``)."""
    return DeadLetter(run.run_id, run.step, run.attempt, run.kind, run.error, run.traceback,
                      run.finished_at)


def pending_outcome(msg: SubmitMsg) -> RunOutcome:
    return RunOutcome(msg.run_id, RunStatus.PENDING, None, None, 0, msg.at, None)


def _newest(o: RunOutcome) -> tuple[float, str]:
    return (o.finished_at or o.submitted_at or 0.0, o.run_id)


def merge_runs(live: list[RunOutcome], archived: list[RunOutcome],
               status: str | RunStatus | None, since: float | None,
               limit: int | None) -> list[RunOutcome]:
    """Live and archived outcomes, filtered, newest first: the order of ``runs()`` everywhere.

    A run in both (archived, its ``Archived`` record not yet read) counts once, live.
    """
    if status is not None:
        want = RunStatus(status)
        live = [o for o in live if o.status == want]
    if since is not None:
        live = [o for o in live if _newest(o)[0] >= since]
    ids = {o.run_id for o in live}
    out = live + [o for o in archived if o.run_id not in ids]
    out.sort(key=_newest, reverse=True)
    return out if limit is None else out[:max(0, int(limit))]


def merge_dead(live: list[DeadLetter], archived: list[DeadLetter],
               limit: int | None) -> list[DeadLetter]:
    """Live and archived dead letters, newest first by ``finished_at``, each run once."""
    ids = {d.run_id for d in live}
    out = live + [d for d in archived if d.run_id not in ids]
    out.sort(key=lambda d: (d.finished_at or 0.0, d.run_id), reverse=True)
    return out if limit is None else out[:max(0, int(limit))]
