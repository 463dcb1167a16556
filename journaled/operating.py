"""Operator messages for the supervisor (a mixin): schedules, pause/resume, fork.

They arrive as inbox files (``Client``, the CLI) or as queued commands
(``Runtime``); both go through ``_ops_message``, which checks the message
again (a file from elsewhere must not crash us), builds its records for
the turn, and logs the operator event. The caller acknowledges (deletes
the inbox file, answers the ``Future``) only once those records are durable.
"""

from __future__ import annotations

import logging
from typing import Any, Union

from .blobs import BlobRef, BlobStore
from .errors import RunNotFound
from .forking import fork_record
from .inbox import ForkMsg, PauseMsg, ScheduleMsg, check_message
from .records import Record
from .run import Run
from .state import State

log = logging.getLogger("journaled.supervisor")

OpsMsg = Union[ScheduleMsg, PauseMsg, ForkMsg]


class Operating:
    """Folds operator messages into the turn's records."""

    state: State
    blobs: BlobStore
    archive: Any
    archive_reader: Any

    def _ops_message(self, msg: OpsMsg, now: float) -> list[Record]:
        check_message(msg)
        state = self.state
        if isinstance(msg, ScheduleMsg):
            if msg.action == "add":
                recs = state.ops(state.schedules.set(msg.name, msg.cron, msg.input, now,
                                                     dict(msg.headers), msg.catch_up, msg.tz))
                if recs:
                    log.info("schedule %s set: %r (%s), catch-up %s", msg.name, msg.cron,
                             msg.tz, msg.catch_up)
                return recs
            recs = state.ops(state.schedules.change(msg.name, msg.action, now))
            if recs:
                log.info("schedule %s %s", msg.name,
                         {"pause": "paused", "resume": "resumed", "remove": "removed"}[msg.action])
            return recs
        if isinstance(msg, PauseMsg):
            recs = state.ops(state.pauses.command(None if msg.all else msg.key, msg.paused, now))
            if recs:
                what = "all runs" if msg.all else f"runs with key {msg.key!r}"
                log.warning("dispatch %s for %s", "paused" if msg.paused else "resumed", what)
            return recs
        src = self._fork_source(msg.source)
        rec = fork_record(src, msg.run_id, msg.step, msg.payload, now)
        for v in (rec.payload, *rec.memos.values()):
            if isinstance(v, BlobRef) and not self.blobs.exists(v):
                raise ValueError(f"run {msg.source}'s step {msg.step} payload blob "
                                 f"{v.sha256[:12]} is gone (swept); give one with --input-file")
        recs = state.fork(rec)
        if recs:
            log.info("run %s forked from run %s at step %d", msg.run_id, msg.source, msg.step)
        return recs

    def _fork_source(self, run_id: str) -> Run:
        run = self.state.runs.get(run_id)
        if run is not None:
            return run
        row = self.archive_reader.call("get", run_id) if self.archive.exists() else None
        if row is None:
            raise RunNotFound(run_id)
        return row.run()
