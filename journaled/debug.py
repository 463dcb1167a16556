"""``journaled step``: re-run one recorded step in this process, journal untouched."""

from __future__ import annotations

import os
import pdb
import sys
import traceback
from pathlib import Path

import click

from .api import CancelToken, Memo, Signal, Step
from .errors import JournaledError, RunNotFound
from .pool import load_import_string, resolve_runner, to_result
from .records import Leased, MemoPut, Recovered, SignalSent, StepDone, Submitted
from .tools import records


class StepInputs:
    """What the step saw when it last ran, rebuilt from the journal."""

    def __init__(self) -> None:
        self.app = ""
        self.payload: bytes | None = None
        self.headers: dict[str, str] = {}
        self.attempt = 1
        self.signal: Signal | None = None
        self.memo: dict[str, bytes] = {}
        self.known = False


def recorded_inputs(state: Path, run_id: str, step_number: int) -> StepInputs:
    """Scan the journal for the run; raises if the step never got its input."""
    got = StepInputs()
    wait_key = ""
    signals: dict[str, bytes] = {}
    for _seg, _off, rec in records(state):
        t = type(rec)
        if t is Recovered and rec.app:
            got.app = rec.app
        if getattr(rec, "run_id", None) != run_id:
            continue
        got.known = True
        if t is Submitted:
            got.headers = dict(rec.headers)
            if step_number == 0:
                got.payload = rec.input
        elif t is StepDone and rec.step == step_number - 1:
            got.payload = rec.payload
            wait_key = rec.signal_key
            got.signal = Signal(wait_key, b"", True) if wait_key else None
            if wait_key in signals:
                got.signal = Signal(wait_key, signals.pop(wait_key))
        elif t is SignalSent:
            if wait_key == rec.key and got.signal is not None and got.signal.timed_out:
                got.signal = Signal(rec.key, rec.data)
            else:
                signals[rec.key] = rec.data
        elif t is Leased and rec.step == step_number:
            got.attempt = rec.attempt
        elif t is MemoPut and rec.step == step_number:
            got.memo[rec.key] = rec.value
    if not got.known:
        raise RunNotFound(run_id)
    if got.payload is None:
        raise JournaledError(f"run {run_id!r} never reached step {step_number} (or the journal "
                             "was compacted past it); 'journaled status' shows its steps")
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
        fn = resolve_runner(load_import_string(spec))
    except ImportError as e:
        raise JournaledError(f"cannot load {spec!r}: {e}") from None
    step = Step(run_id, step_number, got.payload or b"", got.headers, got.attempt,
                CancelToken(), None, got.signal, Memo(got.memo))
    click.echo(f"re-running {spec} on run {run_id} step {step_number} (attempt "
               f"{got.attempt}, {len(step.payload)} payload bytes); the journal is not touched",
               err=True)
    try:
        out = fn(step)
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
