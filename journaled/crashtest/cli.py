"""The ``journaled crashtest`` command: options in, a report and an exit code out."""

from __future__ import annotations

import json
import os
import random
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from ..errors import InputTooLarge
from ..inbox import check_headers
from .driver import Aborted, Config, CrashTest, UsageError
from .plan import AIM_POINTS
from .report import format_report


def _fail(msg: str, code: int = 2) -> NoReturn:
    click.echo(f"journaled: error: {msg}", err=True)
    sys.exit(code)


def _lines(data: bytes) -> Iterator[bytes]:
    for ln in data.splitlines():
        ln = ln.rstrip(b"\r\n")
        if ln.strip():
            yield ln


def _pairs(specs: tuple[str, ...], flag: str, shape: str, example: str) -> list[tuple[str, str]]:
    """``KEY=VALUE`` options split once at the first '='; a bad one is a one-line error."""
    out = []
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            _fail(f"bad {flag} {spec!r}: use {shape}, e.g. {flag} {example}")
        out.append((key, value))
    return out


@click.command("crashtest")
@click.argument("app", required=False)
@click.option("--runs", type=click.IntRange(min=1), default=None,
              help="Runs per round (inputs are cycled); default: one per input.")
@click.option("--kills", type=click.IntRange(min=0), default=50, show_default=True,
              help="Kills to make in all (supervisor, workers, aimed failpoints).")
@click.option("--seed", type=int, default=None,
              help="Seed of every random choice; the report prints it to repeat a run.")
@click.option("--input-file", type=click.File("rb"),
              help="One input per non-empty line; default: the app module's INPUTS list, "
                   "else 0, 1, 2, ...")
@click.option("-w", "--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Worker processes per supervisor.")
@click.option("--kill-workers/--no-kill-workers", default=True, show_default=True,
              help="Also kill single worker processes.")
@click.option("--power-loss/--no-power-loss", default=True, show_default=True,
              help="Lose unsynced journal writes on every kill, as a power cut would.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=3, show_default=True,
              help="The supervisor's --max-attempts, in every phase.")
@click.option("--timeout", type=click.FloatRange(min=1), default=120.0, show_default=True,
              help="Seconds a supervisor with no kill planned may take before it counts "
                   "as hung.")
@click.option("--keep", is_flag=True, help="Keep the temporary state directories.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--list-failpoints", is_flag=True, help="List the failpoints and exit.")
@click.option("--signal", "signals", multiple=True, metavar="KEY=DATA",
              help="Send this signal to every run right after it is submitted (repeatable), "
                   "for workflows that wait with ContinueOnSignal.")
@click.option("-H", "--header", "headers", multiple=True, metavar="KEY=VALUE",
              help="A header on every run it submits (repeatable), for runners that "
                   "read step.headers.")
@click.option("--runner", "runner_name", default=None, metavar="NAME",
              help="Submit every run to this named runner of APP (a supervisor serving "
                   "several runners).")
@click.option("--payload-bytes", type=click.IntRange(min=0), default=0, show_default=True,
              help="Carry this many extra bytes in every Continue payload (checked on the "
                   "next step), e.g. 65536 for a torture with 64 KB payloads.")
@click.option("--kill-helpers/--no-kill-helpers", default=False, show_default=True,
              help="Also kill -9 the supervisor's forkserver and resource tracker (each "
                   "followed by a worker kill); the supervisor must replace them.")
@click.option("--reader/--no-reader", default=True, show_default=True,
              help="Run a Client in another process polling statuses, for check (h).")
@click.option("--state", "scratch", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Where crashtest makes its own throw-away state directories "
                                 "(default: the system temp dir). Your state is never touched.")
def crashtest(app: str | None, runs: int | None, kills: int, seed: int | None, input_file: Any,
              workers: int, kill_workers: bool, power_loss: bool, max_attempts: int,
              timeout: float, keep: bool, as_json: bool, list_failpoints: bool,
              signals: tuple[str, ...], headers: tuple[str, ...], runner_name: str | None,
              payload_bytes: int, kill_helpers: bool, reader: bool,
              scratch: Path | None) -> None:
    """Crash-test APP (``module:function``): kill -9 it at random and check every run.

    Runs the workload once crash-free for reference, then again while killing
    the supervisor (at random moments and at aimed failpoints) and its
    workers (with --kill-helpers, its forkserver and resource tracker too),
    restarting it after each kill, in power-loss mode, while a reader in
    another process polls statuses. Temporary state is removed unless --keep
    or a failure.

    \b
    Checks (the report names the first that failed):
      (a) every run has exactly one Terminated record
      (b) final status, result and error equal the crash-free reference
      (c) no attempt ran twice (dispatch before the lease was durable)
      (d) no step ran after its outcome was reported (reported before durable)
      (e) every outcome reported to on_terminal equals the final one
      (f) failures per step stay within --max-attempts
      (g) the journal passes 'journaled verify'
      (h) no reader ever saw an outcome the journal later lost or changed
      orphan: no process of a killed supervisor outlives it by 3 s
      hang: every supervisor finishes within --timeout
      exit: no supervisor exits by itself with an error (self-exits are counted)
      stderr: no 'Traceback', 'leaked' or 'KeyError' in supervisor stderr

    \b
    Exit codes: 0 pass; 1 a check failed (the report names the run and shows
    its journal records); 2 bad APP or options.
    """
    from .. import failpoints

    if list_failpoints:
        if as_json:
            click.echo(json.dumps(failpoints.POINTS))
        else:
            w = max(map(len, failpoints.POINTS))
            for name, what in failpoints.POINTS.items():
                aimed = "" if name in AIM_POINTS else "  (not aimed by crashtest)"
                click.echo(f"{name:<{w}}  {what}{aimed}")
        return
    if not app:
        _fail("missing APP: give the runner as module:function, e.g. "
              "'journaled crashtest examples.primes:runner'")
    if seed is None:
        seed = random.randrange(1_000_000)
    inputs = list(_lines(input_file.read())) if input_file is not None else None
    sigs = [(k, v.encode()) for k, v in _pairs(signals, "--signal", "KEY=DATA", "approve=yes")]
    hdrs = dict(_pairs(headers, "-H", "KEY=VALUE", "tenant=acme"))
    try:
        check_headers(hdrs)
    except (TypeError, InputTooLarge) as e:
        _fail(f"bad -H: {e}")
    if runner_name is not None and not runner_name:
        _fail("--runner needs a name, e.g. --runner images")
    if runner_name:
        _check_runner_name(app, runner_name)
    cfg = Config(app=app, runs=runs, kills=kills, seed=seed, inputs=inputs, workers=workers,
                 kill_workers=kill_workers, power_loss=power_loss, max_attempts=max_attempts,
                 timeout=timeout, keep=keep, signals=sigs, scratch=scratch,
                 payload_bytes=payload_bytes, kill_helpers=kill_helpers, readers=reader,
                 headers=hdrs, runner=runner_name)
    test = CrashTest(cfg)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # the same clean-up as Ctrl-C: no supervisor left behind

    signal.signal(signal.SIGTERM, on_term)
    try:
        rep = test.run()
    except UsageError as e:
        _fail(str(e), 2)
    except Aborted as e:
        where = f" (state kept in {test.kept})" if test.kept else ""
        _fail(f"{e}{where}", 1)
    except KeyboardInterrupt:
        _fail(f"interrupted (state kept in {test.kept})", 1)
    if as_json:
        click.echo(json.dumps(rep))
    else:
        click.echo(format_report(rep))
    sys.exit(0 if rep["ok"] else 1)


def _check_runner_name(app: str, name: str) -> None:
    """A one-line error, before anything starts, when APP serves no runner ``name``."""
    from ..app import load_table

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        table = load_table(app)
    except Exception as e:  # noqa: BLE001 - the user's module: its failure is one line
        _fail(f"cannot load {app!r}: {type(e).__name__}: {e}")
    if name not in table.runners:
        _fail(f"--runner {name!r}: {app} serves {', '.join(table.names)}")
