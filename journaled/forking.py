"""Fork: a new run that starts at step N of an old one, with the payload that entered it.

Pure: the supervisor finds the source run (live in the state, or rebuilt
from its archive row) and this module decides what the new run holds.
The payload of each step is kept in ``Run.trail`` (bounded, see
``run.TRAIL_BYTES``). Runs that finished before journaled kept a trail can
still be forked from step 0 (their input) and from the step they stopped
at when the archive kept its payload (a failed run); any other step needs
the payload given. Memos are scoped to one step (``api.Memo``): a fork
from the step the source stopped at keeps that step's memos (a fixed
step skips the sub-tasks the failed one recorded); earlier steps' memos
are never read again by a run past them, so none are copied.
"""

from __future__ import annotations

from typing import Any

from .blobs import BlobRef, value_size
from .records import Forked, Submitted
from .run import PENDING, RUNNING, SUCCEEDED, Run

FORK_SUFFIX = "~fork"


def recorded_payload(src: Run, step: int) -> bytes | BlobRef | None:
    """The payload that entered ``step`` of ``src``, if journaled kept it."""
    if step == 0:
        return src.input
    if 0 < step <= len(src.trail) and src.trail[step - 1] is not None:
        return src.trail[step - 1]
    if step == src.step and not (src.status == SUCCEEDED and src.payload == b""):
        return src.payload  # the step it is at (or failed at): its payload is current
    return None


def fork_record(src: Run, run_id: str, step: int, payload: bytes | BlobRef | None,
                now: float) -> Forked:
    """The ``Forked`` record for ``run_id``; ``ValueError`` with a one-line reason otherwise."""
    if step < 0:
        raise ValueError(f"--from-step must be >= 0, got {step}")
    reached = src.step
    if step > reached:
        raise ValueError(f"run {src.run_id} has reached step {reached} only; fork it from "
                         f"step 0-{reached}")
    given = payload is not None
    if payload is None:
        payload = recorded_payload(src, step)
        if payload is None:
            raise ValueError(
                f"run {src.run_id} has no payload recorded for step {step} (it ran before "
                "journaled kept per-step payloads, or its trail was over the size bound); "
                "give one with --input-file")
    memos: dict[str, Any] = dict(src.memos) if not given and step == src.step else {}
    if step == 0:
        return Forked(run_id, src.run_id, 0, payload, payload, now, dict(src.headers),
                      src.priority, src.max_attempts, src.step_timeout, memos, [],
                      **_carried(src))
    trail = list(src.trail[:step - 1])
    trail += [None] * (step - 1 - len(trail))
    trail.append(payload)
    return Forked(run_id, src.run_id, step, src.input, payload, now, dict(src.headers),
                  src.priority, src.max_attempts, src.step_timeout, memos, trail,
                  **_carried(src))


def _carried(src: Run) -> dict[str, Any]:
    """What a fork keeps of its source besides payloads: who runs it and what it holds."""
    return {"runner": src.runner, "resources": dict(src.resources), "key": src.key}


def forked_run(rec: Forked) -> Run:
    """The run a ``Forked`` record starts (the state gives it its place in line)."""
    run = Run(Submitted(rec.run_id, rec.input, rec.at, rec.headers, rec.priority,
                        rec.max_attempts, rec.step_timeout, runner=rec.runner,
                        resources=rec.resources, key=rec.key), 0)
    run.step, run.payload = rec.step, rec.payload
    run.memos, run.trail = dict(rec.memos), list(rec.trail)
    run.trail_bytes = sum(value_size(v) for v in run.trail)
    run.status = RUNNING if rec.step else PENDING
    return run


def fork_ids(source: str, n: int = 1) -> str:
    """The ``n``-th default id of a fork of ``source``: ``RUN~fork1``, ``RUN~fork2``, ..."""
    return f"{source}{FORK_SUFFIX}{n}"
