"""The commands that only look: ``status``, ``runs``, ``result``, ``wait``, ``dead``.

They read the journal up to its synced mark and the inbox through a ``Client``,
take no lock and write nothing: a missing state directory is an error, never
created.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import msgspec

from ..errors import SubmissionRejected
from . import (
    _client,
    _short,
    _when,
    fail,
    handles_errors,
    json_option,
    main,
    outcome_json,
    state_option,
    user_input,
)


@main.command()
@click.argument("run_id")
@json_option
@state_option(must_exist=True)
@handles_errors
def status(run_id: str, as_json: bool, state: Path) -> None:
    """Show where RUN_ID is: status, steps, result or error."""
    from ..live import health

    client = _client(state)
    try:
        out = client.status(run_id)
    except SubmissionRejected as e:
        if as_json:  # scripts get JSON for this answer too, with the same exit code
            click.echo(json.dumps({"run_id": run_id, "status": "rejected", "error": e.reason}))
        raise
    # Whether anything is moving the run: a supervisor running, hung (holds the
    # lock, stopped publishing its status) or none at all.
    sup = health(state)
    run = client._run(run_id)  # live or archived; None while it waits in the inbox
    held = bool(run is not None and not run.terminal and client.state.pauses.holds(run))
    if as_json:
        data = outcome_json(out)
        if run is not None:
            data.update(runner=getattr(run, "runner", ""),
                        step=run.step, attempt=run.attempt, failures=run.failures,
                        dead=run.dead, traceback=run.traceback or None,
                        resources=getattr(run, "resources", {}), key=getattr(run, "key", ""),
                        children=run.spawned, children_live=run.pending, parent=run.parent or None,
                        history=[msgspec.structs.asdict(a) for a in client.history(run_id)])
        data["supervisor"] = msgspec.structs.asdict(sup)
        data["paused"] = held
        click.echo(json.dumps(data))
        return
    click.echo(f"run {out.run_id}: {out.status.value}{' (paused)' if held else ''}")
    if not out.status.terminal:
        click.echo(f"  supervisor: {sup.message}")
    if run is not None and getattr(run, "runner", ""):
        click.echo(f"  runner:    {run.runner}")
    if held:
        click.echo("  dispatch:  paused: no new step is leased until 'journaled resume'")
    click.echo(f"  steps:     {out.steps}")
    click.echo(f"  submitted: {_when(out.submitted_at)}")
    if out.finished_at:
        click.echo(f"  finished:  {_when(out.finished_at)}")
    if run is not None and (getattr(run, "resources", None) or getattr(run, "key", "")):
        held = " ".join(f"{k}={v:g}" for k, v in run.resources.items()) or "none"
        click.echo(f"  resources: {held}" + (f"  key: {run.key}" if run.key else ""))
    if run is not None and run.wait_key and run.woken is None and out.status.value == "waiting":
        until = f", times out {_when(run.due_at)}" if run.due_at else ", no timeout"
        click.echo(f"  parked:    on signal {run.wait_key!r}{until}; send it with "
                   f"'journaled signal {run_id} {run.wait_key} DATA'")
    if run is not None and run.parent:
        click.echo(f"  parent:    {run.parent}")
    if run is not None and run.spawn_step >= 0:
        waits = " (the parent waits for them)" if run.pending and not out.status.terminal else ""
        click.echo(f"  children:  {run.spawned:,} spawned by step {run.spawn_step}, "
                   f"{run.pending:,} not finished{waits}")
    if out.result is not None:
        click.echo(f"  result:    {_short(out.result, 200)}")
    if out.error:
        click.echo(f"  error:     {out.error}")
    if run is not None and run.traceback:
        click.echo("  traceback (from the runner):")
        for line in run.traceback.rstrip().splitlines():
            click.echo(f"    {line}")
    hist = client.history(run_id) if run is not None else []
    if hist:
        click.echo("  attempts:")
        for a in hist:
            took = f"{(a.finished_at - a.started_at) * 1000:.0f} ms" if a.finished_at else "…"
            err = f"  {a.error}" if a.error else ""
            rss = f", peak RSS {a.peak_rss / (1 << 20):.0f} MB" if a.peak_rss else ""
            click.echo(f"    step {a.step} attempt {a.attempt} on worker {a.worker}: "
                       f"{a.outcome} ({took}{rss}){err}")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class SinceType(click.ParamType):
    """A moment: an ISO time (``2026-12-01``, ``2026-12-01T09:30``) or an age (``90m``, ``2d``)."""

    name = "TIME"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip()
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text)
        if m:
            return time.time() - float(m.group(1)) * _UNITS[m.group(2)]
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError:
            self.fail(f"{text!r} is neither an ISO time (2026-12-01T09:30) nor an age "
                      "(30s, 90m, 12h, 2d, 1w)", param, ctx)


_since_option = click.option(
    "--since", type=SinceType(), default=None,
    help="Only runs finished (live ones: submitted) at or after this time: an ISO time "
         "(2026-12-01T09:30, local time unless it names a zone) or an age (30m, 12h, 2d).")
_limit_option = click.option(
    "--limit", type=click.IntRange(min=0), default=100, show_default=True,
    help="At most this many, newest first (0: no limit).")


@main.command()
@click.option("--status", "status_", type=click.Choice(
    ["pending", "running", "waiting", "succeeded", "failed", "cancelled"]),
    help="Only runs with this status.")
@_since_option
@_limit_option
@json_option
@state_option(must_exist=True)
@handles_errors
def runs(status_: str | None, since: float | None, limit: int, as_json: bool,
         state: Path) -> None:
    """List runs, newest first: live ones, then archived ones by finish time.

    Finished runs come from STATE/archive.sqlite3 in one indexed query,
    however many are kept. Results show as text when they are printable
    UTF-8, else as ``<N bytes: hex…>``; with --json each run has ``result``
    (the UTF-8 text, or null) and ``result_b64``.

    \b
    journaled runs --status failed --since 2h
    journaled runs --since 2026-12-01 --limit 0 --json
    """
    client = _client(state)
    outs = client.runs(status_, since, limit or None)
    pauses = client.state.pauses
    if as_json:
        click.echo(json.dumps([{**outcome_json(o), "paused": _held(client, o)} if pauses
                               else outcome_json(o) for o in outs]))
        return
    if pauses:
        click.echo(f"dispatch paused for {_paused_text(pauses)}: 'journaled resume' to go on",
                   err=True)
    if not outs:
        click.echo("no runs" + (f" with status {status_}" if status_ else "")
                   + (f" since {_when(since)}" if since is not None else ""))
        return
    w = max(len(o.run_id) for o in outs)
    click.echo(f"{'RUN':<{w}}  {'STATUS':<9}  {'STEPS':>5}  {'SUBMITTED':<19}  "
               f"{'FINISHED':<19}  RESULT / ERROR")
    for o in outs:
        tail = _short(o.result) if o.result is not None else (o.error or "")
        shown = "paused" if pauses and _held(client, o) else o.status.value
        click.echo(f"{o.run_id:<{w}}  {shown:<9}  {o.steps:>5}  "
                   f"{_when(o.submitted_at):<19}  {_when(o.finished_at):<19}  {tail}")


def _held(client: Any, o: Any) -> bool:
    """Whether a listed run is held by a dispatch pause (live and not finished)."""
    run = client.state.runs.get(o.run_id)
    return bool(run is not None and not run.terminal and client.state.pauses.holds(run))


def _paused_text(pauses: Any) -> str:
    return "all runs" if pauses.all else "keys " + ", ".join(sorted(pauses.keys))


@main.command()
@click.argument("run_id")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the result to this file instead of stdout.")
@state_option(must_exist=True)
@handles_errors
def result(run_id: str, out_file: Path | None, state: Path) -> None:
    """Write RUN_ID's result bytes to stdout (exit 1 if it failed or is not done).

    A big result is streamed from its blob file, never held in memory whole.
    """
    client = _client(state)
    out = client._outcome(run_id)
    if out.status.value == "succeeded":
        with client.open_result(run_id) as src:
            if out_file is not None:
                with open(out_file, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                return
            shutil.copyfileobj(src, sys.stdout.buffer, 1 << 20)
        if sys.stdout.isatty():
            sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()
        return
    if out.status.terminal:
        fail(f"run {run_id} {out.status.value}: {out.error}", 1)
    fail(f"run {run_id} is {out.status.value}, no result yet; "
         f"'journaled wait {run_id}' blocks until it ends", 1)


@main.command()
@click.argument("run_id")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Give up after this many seconds (exit 3).")
@json_option
@state_option(must_exist=True)
@handles_errors
def wait(run_id: str, timeout: float | None, as_json: bool, state: Path) -> None:
    """Block until RUN_ID ends. Exit 0 succeeded, 1 failed, 2 cancelled, 3 timeout."""
    with user_input():
        out = _client(state).wait(run_id, timeout)
    if as_json:
        click.echo(json.dumps(outcome_json(out)))
    else:
        extra = _short(out.result, 200) if out.result is not None else (out.error or "")
        click.echo(f"{out.run_id} {out.status.value} {extra}".rstrip())
    sys.exit({"succeeded": 0, "failed": 1, "cancelled": 2}[out.status.value])


@main.command()
@_limit_option
@json_option
@state_option(must_exist=True)
@handles_errors
def dead(limit: int, as_json: bool, state: Path) -> None:
    """List dead-lettered steps, newest first: retries exhausted, permanent errors, poison pills.

    'journaled retry RUN_ID' runs one's dead step again (archived ones too).
    """
    runs_ = _client(state).dead(limit or None)
    if as_json:
        click.echo(json.dumps([{"run_id": r.run_id, "step": r.step, "attempts": r.attempt,
                                "kind": r.kind, "error": r.error, "traceback": r.traceback,
                                "finished_at": r.finished_at} for r in runs_]))
        return
    if not runs_:
        click.echo("no dead-lettered steps")
        return
    for r in runs_:
        click.echo(f"{r.run_id} step {r.step} ({r.attempt} attempts, {r.kind}): {r.error}")
        if r.traceback:
            for line in r.traceback.rstrip().splitlines():
                click.echo(f"    {line}")
