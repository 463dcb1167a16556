"""Fan-out / fan-in: the pure rules behind ``Spawn`` (no I/O; ``state.py`` calls in).

A step returns ``Spawn(children, then)``. ``spawn_records`` turns that into
one ``Spawned`` record: the parent's step outcome and every child's
submission together, so a crash (or a torn write) keeps all of it or none.
Folding it (``fold_spawned``) creates the children as ordinary runs with
ids derived from the parent's (``child_id``): a retried step that spawns
again names the same children, a replay rebuilds the same ids.

The parent parks (status ``waiting``, ``pending`` > 0) holding no worker.
Each child's end decrements its parent's ``pending`` count (O(1) per
child: no scan of the siblings); at zero the parent is ready, and its
next step gets the children's outcomes (``outcomes``), read from the
live state or, for children already moved to the archive, through the
caller's archive lookup. Cancelling a parent cancels its live children
(and theirs); ``orphans`` finds the ones a crash between those records
left behind.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Callable

from .records import CancelRequested, Record, Spawned, Submitted, Terminated
from .run import CANCELLED, FAILED, RUNNING, WAITING, Run

if TYPE_CHECKING:
    from .state import State, WorkerResult

MAX_CHILDREN = 100_000  # children of one Spawn (each is a run in the state until archived)
_BASE_MAX = 100  # a longer parent id is hashed, so a child id stays within 128 characters

# Submission options a child takes from its parent when the run has them (the named
# runner, resources and key of issue 14's other parts), beside priority and retries.
_INHERITED = tuple(f for f in ("runner", "resources", "key") if f in Submitted.__struct_fields__)

# What an archive lookup returns per child id: [run_id, status, result, error].
ArchivedLookup = Callable[[list[str]], dict[str, list]]


def _base(parent: str) -> str:
    if len(parent) <= _BASE_MAX:
        return parent
    return "h" + hashlib.sha256(parent.encode()).hexdigest()[:40]


def child_prefix(parent: str, step: int) -> str:
    """The id prefix every child of ``parent``'s step ``step`` shares."""
    return f"{_base(parent)}:s{step}."


def child_id(parent: str, step: int, index: int) -> str:
    """Child ``index`` of the ``Spawn`` that ``parent``'s step ``step`` returned."""
    return f"{child_prefix(parent, step)}{index}"


def child_ids(parent: str, step: int, n: int) -> list[str]:
    prefix = child_prefix(parent, step)
    return [f"{prefix}{i}" for i in range(n)]


def _current(parent: Run, child: Run) -> bool:
    """``child`` belongs to ``parent``'s last spawn (earlier spawns have fanned in)."""
    return parent.spawn_step >= 0 and child.run_id.startswith(
        child_prefix(parent.run_id, parent.spawn_step))


# ------------------------------------------------------------------ commands


def spawn_records(state: State, run: Run, res: WorkerResult, now: float) -> list[Record]:
    """The records for an attempt that returned ``Spawn``: one ``Spawned``, or a refusal."""
    n = len(res.children)
    step = run.step
    why = ""
    if n > MAX_CHILDREN:
        why = f"Spawn of {n:,} children is over the limit of {MAX_CHILDREN:,}"
    else:
        runs = state.runs
        for cid in child_ids(run.run_id, step, n):
            other = runs.get(cid)
            if other is not None and other.parent != run.run_id:
                why = f"child run id {cid!r} is already taken by another run"
                break
    if why:
        return [Terminated(run.run_id, FAILED, now, step, run.attempt, dead=True, kind="error",
                           error=f"step {step} dead-lettered (permanent error): {why}")]
    return [Spawned(run.run_id, step, run.attempt, res.data, now, list(res.children),
                    res.child_headers)]


def cancel_records(state: State, run: Run, reason: str, now: float) -> list[Record]:
    """``CancelRequested`` for every live descendant of ``run`` still to be cancelled."""
    out: list[Record] = []
    todo = [run]
    runs = state.runs
    while todo:
        p = todo.pop()
        if not p.pending:
            continue
        for cid in child_ids(p.run_id, p.spawn_step, p.spawned):
            c = runs.get(cid)
            if c is None or c.terminal or c.cancel_reason is not None:
                continue
            out.append(CancelRequested(cid, f"parent {run.run_id} cancelled: {reason}"
                                       if p is run else reason, now))
            todo.append(c)
    return out


def orphans(state: State, now: float) -> list[Record]:
    """Cancels for live children of a cancelled parent (a crash cut the cancel's records).

    O(runs), called once when a supervisor starts.
    """
    out: list[Record] = []
    for run in list(state.runs.values()):
        if run.pending and (run.status == CANCELLED or run.cancel_reason is not None):
            out += cancel_records(state, run, run.cancel_reason or "parent cancelled", now)
    return out


# ---------------------------------------------------------------------- fold


def fold_spawned(state: State, rec: Spawned, parent: Run) -> None:
    """Create the children and park the parent (its step is already done: ``StepDone`` fold)."""
    runs = state.runs
    headers = parent.headers if rec.headers is None else rec.headers
    pending = 0
    prefix = child_prefix(parent.run_id, rec.step)
    add = state._submitted
    inherit = {f: getattr(parent, f) for f in _INHERITED if hasattr(parent, f)}
    for i, value in enumerate(rec.children):
        cid = f"{prefix}{i}"
        old = runs.get(cid)
        if old is None:
            add(Submitted(cid, value, rec.at, headers, parent.priority, parent.max_attempts,
                          parent.step_timeout, parent=parent.run_id, **inherit))
            pending += 1
        elif not old.terminal:
            pending += 1
    parent.spawn_step = rec.step
    parent.spawned = len(rec.children)
    parent.pending = pending
    if pending:
        state._park(parent)


def child_ended(state: State, child: Run) -> None:
    """A child became terminal: one fewer to wait for; the last one wakes its parent."""
    parent = state.runs.get(child.parent)
    if parent is None or not parent.pending or not _current(parent, child):
        return
    parent.pending -= 1  # counted down even for a cancelled parent: no live child left behind
    if parent.pending or parent.terminal or parent.leased:
        return
    if parent.cancel_reason is not None:
        state._attention.add(parent.run_id)
    else:
        parent.status = RUNNING
        state._make_ready(parent)


def child_redriven(state: State, child: Run) -> None:
    """A dead child runs again before its parent fanned in: wait for it again."""
    parent = state.runs.get(child.parent)
    if (parent is not None and parent.pending and parent.status == WAITING
            and _current(parent, child)):
        parent.pending += 1


# ------------------------------------------------------------------- queries


def fans_in(run: Run) -> bool:
    """The step ``run`` is about to run is the one after a ``Spawn``."""
    return run.spawn_step >= 0 and run.step == run.spawn_step + 1


def outcomes(state: State, run: Run, archived: ArchivedLookup | None = None) -> list[list]:
    """``[run_id, status, result, error]`` per child, in spawn order (the step's ``children``).

    Children the archive took are read through ``archived`` in one call;
    one no longer anywhere (its archive row expired) is reported failed.
    """
    ids = child_ids(run.run_id, run.spawn_step, run.spawned)
    runs = state.runs
    out: list[Any] = []
    missing: list[int] = []
    for i, cid in enumerate(ids):
        c = runs.get(cid)
        if c is None:
            missing.append(i)
            out.append(None)
        else:
            out.append([cid, c.status, c.result, c.error])
    if missing:
        rows = archived([ids[i] for i in missing]) if archived is not None else {}
        for i in missing:
            out[i] = rows.get(ids[i]) or [ids[i], FAILED, None,
                                         "this child's outcome is no longer kept (archive "
                                         "retention passed before its parent fanned in)"]
    return out
