"""The commands that ask for something: ``submit``, ``cancel``, ``retry``, ``signal``.

Each goes over the supervisor's socket when one listens (answered once its
record is durable in the journal) and otherwise posts one durable inbox
message (the supervisor acts on it when it starts); the output and exit
codes are the same either way. Only ``submit`` may create a state directory: the others act
on a run that is already there, so a missing directory is a typo.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import click

from . import _client, fail, handles_errors, json_option, main, state_option, user_input
from .submitting import Submitter


def _parse_headers(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k:
            fail(f"bad header {p!r}: use -H key=value")
        out[k] = v
    return out


@main.command()
@click.argument("input", required=False)
@click.option("--run-id", help="Your own id (1-128 of A-Z a-z 0-9 . _ : @ ~ -); idempotent.")
@click.option("-H", "--header", "headers", multiple=True, metavar="KEY=VALUE",
              help="Metadata every step sees in step.headers (repeatable).")
@click.option("--input-file", type=click.File("rb"), help="Read the input bytes from a file.")
@click.option("--each-line", type=click.File("rb"),
              help="Submit one run per non-empty line of this file ('-': stdin), all or "
                   "none, one fsync. A line starting with '{' is a JSON object: "
                   '{"input": "text" | "input_b64": "...", "headers": {...}, "run_id": "..."}.')
@click.option("--line-format", type=click.Choice(["auto", "text", "json"]), default="auto",
              show_default=True,
              help="--each-line: 'auto' reads a line starting with '{' as JSON and any other "
                   "as text; 'text' sends every line as it is; 'json' wants JSON on every line.")
@click.option("--priority", type=int, default=0, help="Higher runs first.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=None,
              help="Override the supervisor's --max-attempts for this run.")
@click.option("--step-timeout", type=click.FloatRange(min=0), default=None,
              help="Override the supervisor's --step-timeout for this run.")
@click.option("--runner", default=None, metavar="NAME",
              help="The named runner for this run (see 'journaled run --help'); default: "
                   "the supervisor's default runner. An unknown name is refused.")
@click.option("--resource", "resources", multiple=True, metavar="NAME=N",
              help="Held while a step of the run is leased, against 'journaled run "
                   "--limit NAME=M' (repeatable; more than a limit allows is refused).")
@click.option("--key", help="Run key (a tenant, a user) for --key-concurrency and --rate; "
                            "keys are served in turn.")
@json_option
@state_option
@handles_errors
def submit(input: str | None, run_id: str | None, headers: tuple[str, ...], input_file: Any,
           each_line: Any, line_format: str, priority: int, max_attempts: int | None,
           step_timeout: float | None, runner: str | None, resources: tuple[str, ...],
           key: str | None, as_json: bool, state: Path) -> None:
    """Submit a run with INPUT (text; '-' reads stdin); prints its run id.

    The submission is durable when this returns, whether or not a supervisor
    is running; one that is not yet running picks it up when it starts.

    \b
    A batch, one run per line; a line starting with '{' carries its own
    input, headers (over the -H ones) and run id; a bad line submits nothing:
      journaled submit --each-line runs.txt -H source=nightly
      runs.txt:  order-7
                 {"input": "order-8", "headers": {"tenant": "acme"}, "run_id": "o-8"}
                 {"input_b64": "AAEC"}
    """
    from ..quotas import parse_pair

    given = sum(x is not None for x in (input, input_file, each_line))
    if given > 1:
        fail("give the input once: INPUT, --input-file or --each-line")
    try:
        res = dict(parse_pair("--resource", t) for t in resources)
    except ValueError as e:
        fail(str(e))
    if line_format != "auto" and each_line is None:
        fail("--line-format is for --each-line")
    opts: dict[str, Any] = dict(priority=priority, max_attempts=max_attempts or 0,
                                step_timeout=step_timeout or 0.0, runner=runner,
                                resources=res or None, key=key)
    hdrs = _parse_headers(headers)
    # The socket alone when a supervisor listens; the full Client (inbox) otherwise.
    client = Submitter(state)
    with user_input():
        if each_line is not None:
            from ..submission import new_run_id
            from .lines import parse_lines

            if run_id:
                fail("--run-id cannot be used with --each-line (each run gets its own id)")
            # Every line is checked before any run is sent: a bad one submits nothing.
            items = parse_lines(each_line.read(), line_format, hdrs)
            # Ids only when a line names one: given ids cost a look at the state.
            rids = None if all(it.run_id is None for it in items) else \
                [it.run_id or new_run_id() for it in items]
            ids = client.submit_many([it.input for it in items], [it.headers for it in items],
                                     rids, **opts) if items else []
        else:
            if input == "-":
                data = sys.stdin.buffer.read()
            elif input_file is not None:
                data = _file_input(client, input_file)
            else:
                data = (input or "").encode()
            ids = [client.submit(data, hdrs, run_id, **opts)]
    if as_json:
        click.echo(json.dumps({"run_ids": ids}))
    else:
        for rid in ids:
            click.echo(rid)
    if ids and client.never_served():
        click.echo(f"journaled: queued in {state / 'inbox'}; no supervisor has run on this "
                   "state directory yet: start one with 'journaled run app:runner'", err=True)


def _file_input(client: Any, f: Any) -> Any:
    """The file's bytes; a big regular file is streamed into a blob (never all in memory)."""
    try:
        size = os.fstat(f.fileno()).st_size if stat.S_ISREG(os.fstat(f.fileno()).st_mode) \
            else -1
    except (AttributeError, OSError, ValueError):
        size = -1
    if size > client.blobs.threshold:
        return client.blobs.put_file(f)  # durable before the submission names it
    return f.read()


# ------------------------------------------------------------------ queries


@main.command()
@click.argument("run_id")
@click.option("--reason", default="cancelled by user", show_default=True)
@json_option
@state_option(must_exist=True)
@handles_errors
def cancel(run_id: str, reason: str, as_json: bool, state: Path) -> None:
    """Cancel RUN_ID: its running step sees its token set, then is killed after a grace."""
    with user_input():
        out = _client(state).cancel(run_id, reason)
    lost = out.status.terminal
    if as_json:
        click.echo(json.dumps({"run_id": run_id, "requested": not lost,
                               "status": out.status.value}))
    elif lost:
        click.echo(f"run {run_id} already {out.status.value}; the cancel came too late")
    else:
        click.echo(f"cancel requested for run {run_id} (was {out.status.value})")



@main.command()
@click.argument("run_id")
@state_option(must_exist=True)
@handles_errors
def retry(run_id: str, state: Path) -> None:
    """Redrive RUN_ID's dead-lettered step as a new series of attempts."""
    _client(state).retry(run_id)
    click.echo(f"redrive of run {run_id} queued; the supervisor picks it up")


@main.command("signal")
@click.argument("run_id")
@click.argument("key")
@click.argument("data", required=False, default="")
@click.option("--data-file", type=click.File("rb"), help="Read the data bytes from a file.")
@state_option(must_exist=True)
@handles_errors
def signal_cmd(run_id: str, key: str, data: str, data_file: Any, state: Path) -> None:
    """Send DATA to RUN_ID's ContinueOnSignal(key=KEY) wait (kept until it waits)."""
    raw = data_file.read() if data_file is not None else data.encode()
    with user_input():
        _client(state).signal(run_id, key, raw)
    click.echo(f"signal {key!r} sent to run {run_id}")
