"""``journaled step``: re-run one recorded step in this process, journal untouched."""

from __future__ import annotations

import inspect
import os
import pdb
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from . import fanout, replay
from .api import CancelToken, Children, Memo, Signal, Step
from .archive import Archive
from .blobs import BlobStore, value_size
from .errors import JournaledError, RunNotFound
from .pool import resolve_runners, to_result
from .pool.aloop import run_async
from .records import Archived, Leased
from .state import Run, State


class StepInputs:
    """What the step saw when it last ran, rebuilt from the journal."""

    def __init__(self) -> None:
        self.app = ""
        self.runner = ""  # the run's runner name ("": the default)
        self.payload: Any = None  # bytes, or the BlobRef of a big payload
        self.headers: dict[str, str] = {}
        self.attempt = 1
        self.signal: Signal | None = None
        self.memo: dict[str, Any] = {}
        self.children: list | None = None  # after a Spawn: the children's outcomes
        self.known = False


def _inputs_of(run: Run, attempt: int, st: State | None = None, state: Path | None = None
               ) -> StepInputs:
    """The inputs of ``run``'s current step, read off the folded state."""
    got = StepInputs()
    if st is not None and state is not None and fanout.fans_in(run):
        got.children = fanout.outcomes(st, run, lambda ids: _archived_children(state, ids))
    got.known = True
    got.payload = run.payload
    got.runner = run.runner
    got.headers = dict(run.headers)
    got.attempt = max(attempt, 1)
    got.memo = dict(run.memos)
    woken = State.woken_by(run)
    if woken is not None:
        key, data, timed_out = woken
        got.signal = Signal(key, data, bool(timed_out))
    return got


def _archived_children(state: Path, ids: list[str]) -> dict[str, list]:
    reader = Archive(state).open_reader()
    if reader is None:
        return {}
    try:
        rows = reader.get_many(ids)
    finally:
        reader.close()
    return {rid: [rid, r.status, r.result if r.result is not None or r.result_sha256 is None
                  else r.snapshot().result, r.error] for rid, r in rows.items()}


def recorded_inputs(state: Path, run_id: str, step_number: int) -> StepInputs:
    """Fold the journal, snapshots included; raises if the step never got its input.

    For the run's current step (the one it is at, or ended on) the folded
    run itself answers, memos of every attempt included, snapshot or not;
    for an earlier step, the state as it was at that step's last lease. The
    same ``State`` the supervisor folds answers, so this cannot disagree.
    """
    st = State()
    apply = st.apply
    got: StepInputs | None = None
    last: Run | None = None  # the run as it was when it left for the archive
    for _seg, _off, rec in replay.records(Path(state) / "journal"):
        if type(rec) is Archived and run_id in rec.run_ids:
            last = st.runs.get(run_id)
        apply(rec)
        if type(rec) is Leased and rec.run_id == run_id and rec.step == step_number:
            got = _inputs_of(st.runs[run_id], rec.attempt, st, Path(state))
    run = st.runs.get(run_id) or last
    if run is None:
        # Compacted away: the archive keeps a failed run's last step inputs.
        row = Archive(state).open_reader()
        found = row.get(run_id) if row is not None else None
        if found is None:
            raise RunNotFound(run_id)
        run = found.run()
        if run.step != step_number or found.status != "failed":
            raise JournaledError(
                f"run {run_id!r} finished ({found.status}) and was archived; the archive "
                "keeps step inputs only of a failed run's last step "
                f"(step {run.step}); 'journaled status' shows its steps")
    if run.step == step_number:
        got = _inputs_of(run, run.attempt, st, Path(state))
    if got is None:
        raise JournaledError(f"run {run_id!r} never reached step {step_number} (or the journal "
                             "was compacted past it); 'journaled status' shows its steps")
    got.app = st.app
    return got


def rerun_step(state: Path, run_id: str, step_number: int, app: str | None,
               use_pdb: bool) -> int:
    """Run the step; exit code 0 for an outcome, 1 for an exception."""
    got = recorded_inputs(state, run_id, step_number)
    spec = app or got.app
    if not spec:
        raise JournaledError("no runner recorded in this journal; pass --app module:function")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        table = resolve_runners(spec)
        fn = table.get(got.runner)
    except (ImportError, ValueError) as e:
        raise JournaledError(f"cannot load {spec!r}: {e}") from None
    # Big payloads and memos are read from the state's blobs; a memo put here
    # stays in memory (no journal), so nothing new is written.
    blobs = BlobStore(state, threshold=1 << 62)
    step = Step(run_id, step_number, got.payload or b"", got.headers, got.attempt,
                CancelToken(), None, got.signal, Memo(got.memo, None, blobs), blobs,
                None if got.children is None else Children(got.children, blobs))
    step.runner = table.name_of(got.runner)
    click.echo(f"re-running {spec} on run {run_id} step {step_number} (attempt "
               f"{got.attempt}, {value_size(got.payload, exact=True)} payload bytes); the "
               "journal is not touched", err=True)
    try:
        out = fn(step)
        if inspect.iscoroutine(out):
            out = run_async(out, step.cancel_token)
    except BaseException:  # noqa: BLE001 - show the runner's own traceback
        if use_pdb:
            traceback.print_exc()
            pdb.post_mortem(sys.exc_info()[2])
        else:
            traceback.print_exc()
        return 1
    res = to_result(out)
    click.echo(f"outcome: {type(out).__name__}: {out!r}")
    if res.kind == "error":
        click.echo(f"which journaled treats as a permanent error: {res.error}")
        return 1
    return 0
