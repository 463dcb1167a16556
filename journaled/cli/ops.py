"""Operator commands: ``schedule add|list|pause|resume|remove``, ``pause``, ``resume``, ``fork``.

Each change is one durable inbox message (the supervisor journals it when it
reads it, then deletes the file), so it works with or without a supervisor
running and survives restarts; reads fold the journal like ``status``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import click

from . import _client, fail, handles_errors, json_option, main, state_option, user_input
from .writes import _file_input, _parse_headers


@contextlib.contextmanager
def _ops_errors() -> Iterator[None]:
    """The schedules' own errors are the user's to fix: one line, exit 2."""
    from ..schedules import CronUnavailable, ScheduleNotFound

    try:
        with user_input():
            yield
    except (CronUnavailable, ScheduleNotFound) as e:
        fail(str(e))


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


@main.group()
def schedule() -> None:
    """Cron schedules: each tick submits a run with id NAME@<tick, UTC ISO>.

    \b
    journaled schedule add nightly "0 2 * * *" --input '{"full": true}' -H app=report
    journaled schedule add every5s "* * * * * */5"     (6 fields: seconds last)
    journaled schedule list
    journaled schedule pause nightly / resume nightly / remove nightly

    The supervisor journals each tick's submission and the schedule's cursor
    in one commit: a crash neither repeats a tick nor skips one beyond what
    --catch-up says (none: skip ticks missed while down; one: run only the
    latest missed; all: run each, at most 1,000). Needs croniter:
    pip install 'journaled[schedules]'. Every subcommand takes --state DIR.
    """


@schedule.command("add")
@click.argument("name")
@click.argument("cron")
@click.option("--input", "input_text", help="The input each tick's run gets (text).")
@click.option("--input-file", type=click.File("rb"), help="Read that input from a file.")
@click.option("-H", "--header", "headers", multiple=True, metavar="KEY=VALUE",
              help="Headers of each tick's run (repeatable).")
@click.option("--catch-up", type=click.Choice(["none", "one", "all"]), default="one",
              show_default=True, help="What ticks missed while no supervisor ran become.")
@click.option("--tz", default="UTC", show_default=True,
              help="Time zone the expression is read in (IANA name, e.g. Europe/Paris).")
@state_option
@handles_errors
def schedule_add(name: str, cron: str, input_text: str | None, input_file: Any,
                 headers: tuple[str, ...], catch_up: str, tz: str, state: Path) -> None:
    """Add (or redefine) schedule NAME with the cron expression CRON.

    CRON has 5 fields (minute hour day-of-month month day-of-week) or 6, the
    6th being seconds. The first tick is the first one after now; adding the
    same definition again changes nothing.
    """
    if input_text is not None and input_file is not None:
        fail("give the input once: --input or --input-file")
    data = input_file.read() if input_file is not None else (input_text or "").encode()
    with _ops_errors():
        _client(state).schedule_add(name, cron, data, _parse_headers(headers),
                                    catch_up=catch_up, tz=tz)
    click.echo(f"schedule {name} queued: {cron!r} ({tz}), catch-up {catch_up}")


@schedule.command("list")
@json_option
@state_option(must_exist=True)
@handles_errors
def schedule_list(as_json: bool, state: Path) -> None:
    """Every schedule with its last tick handled and its next tick."""
    found = _client(state).schedules()
    if as_json:
        click.echo(json.dumps([{
            "name": s.name, "cron": s.cron, "tz": s.tz, "catch_up": s.catch_up,
            "paused": s.paused, "cursor": s.cursor, "next_at": s.next_at,
            "headers": s.headers} for s in found]))
        return
    if not found:
        click.echo("no schedules")
        return
    click.echo(f"{'NAME':<20} {'CRON':<18} {'TZ':<14} {'CATCH-UP':<8} {'NEXT':<19} STATE")
    for s in found:
        click.echo(f"{s.name:<20} {s.cron:<18} {s.tz:<14} {s.catch_up:<8} "
                   f"{_when(s.next_at):<19} {'paused' if s.paused else 'active'}")


def _change(action: str) -> Any:
    @click.argument("name")
    @state_option(must_exist=True)
    @handles_errors
    def cmd(name: str, state: Path) -> None:
        with _ops_errors():
            getattr(_client(state), f"schedule_{action}")(name)
        click.echo(f"schedule {name}: {action} queued")

    cmd.__doc__ = {
        "pause": "Stop submitting NAME's ticks (ticks while paused are not owed later).",
        "resume": "Submit NAME's ticks again, from the next one after now.",
        "remove": "Forget schedule NAME (the runs it submitted stay).",
    }[action]
    return schedule.command(action)(cmd)


for _action in ("pause", "resume", "remove"):
    _change(_action)


def _pause_target(key: str | None, all_: bool) -> str | None:
    if (key is None) == (not all_):
        fail("say what: --key K or --all")
    return key


@main.command("pause")
@click.option("--key", help="Only runs submitted with this key (submit --key).")
@click.option("--all", "all_", is_flag=True, help="Every run.")
@state_option
@handles_errors
def pause_cmd(key: str | None, all_: bool, state: Path) -> None:
    """Stop leasing new steps (of runs with KEY, or of all runs); running steps finish.

    Paused runs keep their place in line; the pause is journaled, so it holds
    across restarts until 'journaled resume'. 'journaled status' shows it.
    """
    with _ops_errors():
        _client(state).pause(_pause_target(key, all_))
    click.echo(f"pause of {'all runs' if key is None else f'key {key!r}'} queued")


@main.command("resume")
@click.option("--key", help="Resume runs with this key.")
@click.option("--all", "all_", is_flag=True, help="Resume everything (every key too).")
@state_option
@handles_errors
def resume_cmd(key: str | None, all_: bool, state: Path) -> None:
    """Lease again what 'journaled pause' stopped."""
    with _ops_errors():
        _client(state).resume(_pause_target(key, all_))
    click.echo(f"resume of {'all runs' if key is None else f'key {key!r}'} queued")


@main.command("fork")
@click.argument("run_id")
@click.option("--from-step", type=click.IntRange(min=0), required=True,
              help="The step the new run starts at (0: from its input).")
@click.option("--input-file", type=click.File("rb"),
              help="The payload step N gets (default: the one RUN_ID's step N got).")
@click.option("--run-id", "new_id", help="The new run's id (default RUN_ID~fork1, ~fork2...).")
@json_option
@state_option(must_exist=True)
@handles_errors
def fork(run_id: str, from_step: int, input_file: Any, new_id: str | None, as_json: bool,
         state: Path) -> None:
    """Start a new run at step N of RUN_ID (live or finished); RUN_ID is untouched.

    The new run gets the payload recorded for step N (or --input-file) and,
    forked from the step RUN_ID stopped at, that step's memos. Prints its id.
    """
    client = _client(state)
    with _ops_errors():
        data = _file_input(client, input_file) if input_file is not None else None
        rid = client.fork(run_id, from_step, data, new_id)
    if as_json:
        click.echo(json.dumps({"run_id": rid, "source": run_id, "from_step": from_step}))
    else:
        click.echo(rid)
    if client.never_served():
        click.echo("journaled: queued; start a supervisor to run it", err=True)
    sys.stdout.flush()
