"""The rerun guard: a scheduler plugin that marks journaled tasks Dask is about to re-run.

When a Dask worker dies, the scheduler sends every task it was processing
(and every result only it held) to another worker: Dask's own retry, which
``retries=0`` does not turn off. journaled owns attempts, so such a re-run
must not run the step again. The guard watches transitions on the
scheduler; a ``journaled-`` task that falls back from ``processing`` or
``memory`` to ``released`` while a client still wants it is marked in its
annotations, which the scheduler sends along with the re-run, and the task
(``dask_remote.run_task``) answers ``worker_died`` without running the step.

Costs: no round trip and nothing stored per step; one plugin per scheduler
(registered idempotently under one name by every journaled executor), a
string check per transition. This module imports only ``distributed``: it
is pickled by value, so the scheduler needs no journaled installed.
"""

from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

PREFIX = "journaled-"
RERUN = "journaled-rerun"
NAME = "journaled-rerun-guard"


def task_key(ns: str, seq: int) -> str:
    """The Dask key of step ``seq`` of executor ``ns``: unique per attempt, never reused."""
    return f"{PREFIX}{ns}-{seq}"


class RerunGuard(SchedulerPlugin):
    """Marks a journaled task's annotations when Dask is going to run it again."""

    idempotent = True
    name = NAME

    def __init__(self) -> None:
        self.scheduler: Any = None

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish != "released" or start not in ("processing", "memory") or \
                not isinstance(key, str) or not key.startswith(PREFIX) or self.scheduler is None:
            return
        ts = self.scheduler.tasks.get(key)
        if ts is None or not ts.who_wants:
            return  # the client let go of it (a result read, a cancel): nothing re-runs
        ts.annotations = {**(ts.annotations or {}), RERUN: True}
