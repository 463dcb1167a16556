"""The ``journaled`` command line.

Every subcommand takes ``--state DIR`` (else ``$JOURNALED_STATE``, else
``./.journaled``); every one that prints data takes ``--json``. Errors a
user can fix are one line on stderr with exit 2 (bad input) or 1 (a run or
a check failed); a traceback means a bug in journaled.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gc
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

import click
import msgspec

from . import __version__
from .api import RunOutcome
from .errors import (
    InputTooLarge,
    InvalidRunId,
    JournalCorrupt,
    JournaledError,
    RunConflict,
    RunNotDead,
    RunNotFound,
    RunNotLive,
    StateLocked,
    StorageFailure,
    SubmissionRejected,
)

DEFAULT_STATE = ".journaled"


def fail(msg: str, code: int = 2) -> NoReturn:
    click.echo(f"journaled: error: {msg}", err=True)
    sys.exit(code)


def _exit_code(e: JournaledError) -> int:
    if isinstance(e, (JournalCorrupt, StorageFailure)):
        return 1
    if isinstance(e, (InvalidRunId, RunConflict, RunNotFound, RunNotLive, StateLocked,
                      InputTooLarge, SubmissionRejected, RunNotDead)):
        return 2
    return 1


class BadInput(Exception):
    """A value the user typed that the API refused (its TypeError/ValueError)."""


@contextlib.contextmanager
def user_input() -> Iterator[None]:
    """Around an API call fed from the command line: its TypeError/ValueError is the
    user's mistake (the API checks before it acknowledges anything), so one line, exit 2."""
    try:
        yield
    except (TypeError, ValueError) as e:
        raise BadInput(str(e)) from None


def handles_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn journaled's own errors into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except JournaledError as e:
            fail(str(e), _exit_code(e))
        except BadInput as e:
            fail(str(e), 2)
        except TimeoutError as e:
            fail(str(e), 3)
        except (PermissionError, NotADirectoryError, FileExistsError, FileNotFoundError) as e:
            # A --state that cannot be a state directory (not ours to create, a file);
            # any other path is not the user's mistake, so it stays a traceback.
            if not _about_state(e, kwargs.get("state")):
                raise
            fail(f"{e.strerror or e}: {e.filename}; is that the right --state?", 2)
        except BrokenPipeError:
            sys.exit(0)

    return wrapper


def _about_state(e: OSError, state: Path | None) -> bool:
    """Whether ``e`` is about the state directory, one of its parents or a file in it."""
    if state is None or not e.filename:
        return False
    try:
        where, home = Path(os.fsdecode(e.filename)).absolute(), Path(state).absolute()
    except (TypeError, ValueError):
        return False
    return where == home or home in where.parents or where in home.parents


def state_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--state", "state", envvar="JOURNALED_STATE", default=DEFAULT_STATE,
        show_default=True, type=click.Path(file_okay=False, path_type=Path),
        help="State directory (journal, inbox, lock). Env: JOURNALED_STATE.")(fn)


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print machine-readable JSON instead of text.")(fn)


def outcome_json(o: RunOutcome) -> dict[str, Any]:
    result_text = None
    if o.result is not None:
        try:
            result_text = o.result.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {
        "run_id": o.run_id, "status": o.status.value, "result": result_text,
        "result_b64": base64.b64encode(o.result).decode() if o.result is not None else None,
        "error": o.error, "steps": o.steps, "submitted_at": o.submitted_at,
        "finished_at": o.finished_at,
    }


def _short(b: bytes | None, n: int = 40) -> str:
    """A terminal-safe preview of result bytes: printable UTF-8 text as is (cut to
    ``n``), anything else as ``<N bytes: hex…>``, never raw control bytes."""
    if b is None:
        return "-"
    try:
        text = " ".join(b.decode("utf-8").split())
    except UnicodeDecodeError:
        text = None
    if text is not None and text.isprintable():
        return text if len(text) <= n else text[: n - 1] + "…"
    hexed = b[: max(4, (n - 16) // 2)].hex()
    return f"<{len(b)} bytes: {hexed}{'…' if len(hexed) < 2 * len(b) else ''}>"


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _client(state: Path) -> Any:
    from .client import Client

    return Client(state)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="journaled")
def main() -> None:
    """journaled: durable step workflows for CPU-heavy Python on one machine.

    \b
    Write a runner:      def runner(step): ... return Continue(b"..") / Succeed(b"..")
    Start a supervisor:  journaled run app:runner -w 4
    Submit work:         journaled submit 42      (prints the run id)
    Follow it:           journaled wait RUN_ID && journaled result RUN_ID

    Every record is fsync'd before the supervisor acts on it: kill -9 anything
    at any time and no run is lost or finished twice.
    """


# ---------------------------------------------------------------------- run


@main.command()
@click.argument("app")
@click.option("-w", "--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: CPU count; on Dask: the cluster's threads).")
@click.option("--executor", default="local", show_default=True, metavar="local|dask://HOST:PORT",
              help="Where steps run: local worker processes, or a Dask distributed cluster.")
@click.option("--max-attempts", "--default-max-attempts", type=click.IntRange(min=1), default=3,
              show_default=True,
              help="Failures a step may have before it is dead-lettered (a run's own wins).")
@click.option("--max-abandons", type=click.IntRange(min=1), default=10, show_default=True,
              help="Supervisor crashes a step may survive before it is dead-lettered.")
@click.option("--step-timeout", "--default-step-timeout", type=click.FloatRange(min=0), default=0,
              show_default=True,
              help="Seconds a step may run before its worker is killed (0: no limit; a run's "
                   "own wins).")
@click.option("--replay-outputs/--no-replay-outputs", default=True, show_default=True,
              help="Accepted for Taquba parity; always on: a journaled outcome is never re-run.")
@click.option("--cancel-grace", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Seconds a cancelled step may keep running before it is killed.")
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="On SIGINT/SIGTERM, seconds in-flight steps may take to finish.")
@click.option("--reload", is_flag=True,
              help="Restart workers (not the supervisor) when a .py file under the current "
                   "directory changes; running steps finish first.")
@click.option("--until-idle", is_flag=True,
              help="Exit 0 once no run is pending, running or delayed.")
@click.option("--backoff", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="First retry delay in seconds; doubles per failure, with jitter.")
@click.option("--on-terminal", "hook", metavar="MODULE:FUNC",
              help="Call FUNC(outcome) once a run's outcome is durable (at least once per run).")
@click.option("--retention", type=click.FloatRange(min=0), default=7 * 86400.0,
              show_default=True, help="Seconds finished runs stay queryable.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one JSON object per log line, for log shippers.")
@click.option("-v", "--verbose", is_flag=True, help="Log every terminal run.")
@state_option
@handles_errors
def run(app: str, workers: int | None, executor: str, max_attempts: int, max_abandons: int,
        step_timeout: float, replay_outputs: bool, cancel_grace: float, drain_timeout: float,
        reload: bool, until_idle: bool, backoff: float, hook: str | None, retention: float,
        log_format: str, verbose: bool, state: Path) -> None:
    """Run the supervisor for APP (``module:function``) in the foreground.

    APP is imported from the current directory, like ``uvicorn app:app``; the
    function is called once per step in a worker process. Ctrl-C (or SIGTERM)
    stops leasing and lets running steps finish for --drain-timeout; a second
    Ctrl-C stops at once. Nothing is lost either way.

    \b
    Exit codes: 0 stopped cleanly; 1 damaged journal or storage failure;
    2 bad APP, bad options, or the state directory is locked by another supervisor.
    """
    from . import failpoints
    from .console import Drain, JsonLog, StatusLine
    from .pool import load_import_string
    from .state import Policy
    from .supervisor import Supervisor

    if failpoints.ENV_ERROR is not None:
        fail(failpoints.ENV_ERROR)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLog() if log_format == "json"
                         else logging.Formatter("journaled: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    on_terminal = None
    for spec in filter(None, (app, hook)):
        try:
            obj = load_import_string(spec)
        except ImportError as e:
            fail(f"cannot load {spec!r}: {e}")
        except Exception as e:  # noqa: BLE001 - the user's module failed while importing
            fail(f"importing {spec!r} raised {type(e).__name__}: {e}")
        if spec is hook:
            on_terminal = obj
    if executor != "local" and not executor.startswith("dask://"):
        fail(f"unknown executor {executor!r}: use 'local' or 'dask://HOST:PORT'")
    if executor.startswith("dask://"):
        try:
            import distributed  # noqa: F401
        except ImportError:
            fail("the Dask executor needs the 'dask' extra: pip install 'journaled[dask]'")
    if workers is None:
        workers = 0 if executor != "local" else (os.cpu_count() or 2)
    policy = Policy(max_attempts=max_attempts, max_abandons=max_abandons,
                    step_timeout=step_timeout, backoff_base=backoff)
    sup = Supervisor(state, app, workers=workers, policy=policy, cancel_grace=cancel_grace,
                     drain_timeout=drain_timeout,
                     # Preloading in the forkserver would pin the old code across reloads.
                     preload=None if reload else [app.partition(":")[0]],
                     import_string=app, on_terminal=on_terminal, retention=retention,
                     reload_dir=os.getcwd() if reload else None, executor=executor)

    drain = Drain(sup)

    def on_signal(signum: int, frame: Any) -> None:
        # Only flags, a wake-up and a look at the heads here; a thread says what happens.
        drain.notice(signum)
        sup.request_stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        sup.start()
    except ConnectionError as e:
        fail(str(e))
    workers = len(sup.pool.workers) if sup.pool is not None else workers
    # This process is the supervisor: what replay built lives as long as it does,
    # so keep the cyclic collector from rescanning it on every full collection.
    gc.freeze()
    counts = sup.state.status_counts()
    click.echo(
        f"journaled {__version__}: supervising {app} with {workers} workers on {state} "
        f"(journal {sup.journal.size_bytes / 1e6:.1f} MB, {len(sup.state.runs)} runs known, "
        f"{sup.recovered_runs} resumed, {counts['pending']} pending)", err=True)
    ticker = None
    if sys.stderr.isatty() and log_format == "text":
        ticker = StatusLine(sup)
        ticker.start()
    try:
        sup.run(until_idle=until_idle)
    finally:
        if ticker is not None:
            ticker.stop()
        drain.finish()
    counts = sup.state.status_counts()
    click.echo(f"journaled: stopped ({counts['succeeded']} succeeded, {counts['failed']} failed, "
               f"{counts['cancelled']} cancelled, "
               f"{counts['pending'] + counts['running'] + counts['waiting']} unfinished)",
               err=True)


# ------------------------------------------------------------------- submit


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
@click.option("--run-id", help="Your own id (1-128 of A-Z a-z 0-9 . _ : -); idempotent.")
@click.option("-H", "--header", "headers", multiple=True, metavar="KEY=VALUE",
              help="Metadata every step sees in step.headers (repeatable).")
@click.option("--input-file", type=click.File("rb"), help="Read the input bytes from a file.")
@click.option("--each-line", type=click.File("rb"),
              help="Submit one run per non-empty line of this file ('-': stdin), one fsync.")
@click.option("--priority", type=int, default=0, help="Higher runs first.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=None,
              help="Override the supervisor's --max-attempts for this run.")
@click.option("--step-timeout", type=click.FloatRange(min=0), default=None,
              help="Override the supervisor's --step-timeout for this run.")
@json_option
@state_option
@handles_errors
def submit(input: str | None, run_id: str | None, headers: tuple[str, ...], input_file: Any,
           each_line: Any, priority: int, max_attempts: int | None,
           step_timeout: float | None, as_json: bool, state: Path) -> None:
    """Submit a run with INPUT (text; '-' reads stdin); prints its run id.

    The submission is durable when this returns, whether or not a supervisor
    is running; one that is not yet running picks it up when it starts.
    """
    given = sum(x is not None for x in (input, input_file, each_line))
    if given > 1:
        fail("give the input once: INPUT, --input-file or --each-line")
    opts: dict[str, Any] = dict(priority=priority, max_attempts=max_attempts or 0,
                                step_timeout=step_timeout or 0.0)
    hdrs = _parse_headers(headers)
    client = _client(state)
    with user_input():
        if each_line is not None:
            if run_id:
                fail("--run-id cannot be used with --each-line (each run gets its own id)")
            lines = [ln.rstrip(b"\r\n") for ln in each_line.read().splitlines()]
            ids = client.submit_many([ln for ln in lines if ln.strip()], hdrs, **opts)
        else:
            if input == "-":
                data = sys.stdin.buffer.read()
            elif input_file is not None:
                data = input_file.read()
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


# ------------------------------------------------------------------ queries


@main.command()
@click.argument("run_id")
@click.option("--reason", default="cancelled by user", show_default=True)
@json_option
@state_option
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
@json_option
@state_option
@handles_errors
def status(run_id: str, as_json: bool, state: Path) -> None:
    """Show where RUN_ID is: status, steps, result or error."""
    client = _client(state)
    out = client.status(run_id)
    if as_json:
        data = outcome_json(out)
        run = client.state.runs.get(run_id)
        if run is not None:
            data.update(step=run.step, attempt=run.attempt, failures=run.failures,
                        dead=run.dead, traceback=run.traceback or None,
                        history=[msgspec.structs.asdict(a) for a in client.history(run_id)])
        click.echo(json.dumps(data))
        return
    click.echo(f"run {out.run_id}: {out.status.value}")
    click.echo(f"  steps:     {out.steps}")
    click.echo(f"  submitted: {_when(out.submitted_at)}")
    if out.finished_at:
        click.echo(f"  finished:  {_when(out.finished_at)}")
    run = client.state.runs.get(run_id)
    if run is not None and run.wait_key and run.woken is None and out.status.value == "waiting":
        until = f", times out {_when(run.due_at)}" if run.due_at else ", no timeout"
        click.echo(f"  parked:    on signal {run.wait_key!r}{until}; send it with "
                   f"'journaled signal {run_id} {run.wait_key} DATA'")
    if out.result is not None:
        click.echo(f"  result:    {_short(out.result, 200)}")
    if out.error:
        click.echo(f"  error:     {out.error}")
    if run is not None and run.traceback:
        click.echo("  traceback (from the runner):")
        for line in run.traceback.rstrip().splitlines():
            click.echo(f"    {line}")
    hist = client.history(run_id)
    if hist:
        click.echo("  attempts:")
        for a in hist:
            took = f"{(a.finished_at - a.started_at) * 1000:.0f} ms" if a.finished_at else "…"
            err = f"  {a.error}" if a.error else ""
            click.echo(f"    step {a.step} attempt {a.attempt} on worker {a.worker}: "
                       f"{a.outcome} ({took}){err}")


@main.command()
@click.option("--status", "status_", type=click.Choice(
    ["pending", "running", "waiting", "succeeded", "failed", "cancelled"]),
    help="Only runs with this status.")
@json_option
@state_option
@handles_errors
def runs(status_: str | None, as_json: bool, state: Path) -> None:
    """List runs, oldest first.

    Results show as text when they are printable UTF-8, else as ``<N bytes: hex…>``;
    with --json each run has ``result`` (the UTF-8 text, or null) and ``result_b64``.
    """
    outs = _client(state).runs(status_)
    if as_json:
        click.echo(json.dumps([outcome_json(o) for o in outs]))
        return
    if not outs:
        click.echo("no runs" + (f" with status {status_}" if status_ else ""))
        return
    w = max(len(o.run_id) for o in outs)
    click.echo(f"{'RUN':<{w}}  {'STATUS':<9}  {'STEPS':>5}  {'SUBMITTED':<19}  RESULT / ERROR")
    for o in outs:
        tail = _short(o.result) if o.result is not None else (o.error or "")
        click.echo(f"{o.run_id:<{w}}  {o.status.value:<9}  {o.steps:>5}  "
                   f"{_when(o.submitted_at):<19}  {tail}")


@main.command()
@click.argument("run_id")
@state_option
@handles_errors
def result(run_id: str, state: Path) -> None:
    """Write RUN_ID's result bytes to stdout (exit 1 if it failed or is not done)."""
    out = _client(state).status(run_id)
    if out.status.value == "succeeded":
        sys.stdout.buffer.write(out.result or b"")
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
@state_option
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
@json_option
@state_option
@handles_errors
def dead(as_json: bool, state: Path) -> None:
    """List dead-lettered steps: retries exhausted, permanent errors, poison pills."""
    runs_ = _client(state).dead()
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


@main.command()
@click.argument("run_id")
@state_option
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
@state_option
@handles_errors
def signal_cmd(run_id: str, key: str, data: str, data_file: Any, state: Path) -> None:
    """Send DATA to RUN_ID's ContinueOnSignal(key=KEY) wait (kept until it waits)."""
    raw = data_file.read() if data_file is not None else data.encode()
    with user_input():
        _client(state).signal(run_id, key, raw)
    click.echo(f"signal {key!r} sent to run {run_id}")


@main.command("step")
@click.argument("run_id")
@click.argument("step_number", type=click.IntRange(min=0))
@click.option("--app", help="module:function to run (default: the one the supervisor recorded).")
@click.option("--pdb", "use_pdb", is_flag=True, help="Drop into the debugger on an exception.")
@state_option
@handles_errors
def step_cmd(run_id: str, step_number: int, app: str | None, use_pdb: bool, state: Path) -> None:
    """Re-run one recorded step here, with its recorded payload, headers and attempt.

    Prints the outcome; the journal is not touched. The way to debug a failed
    step from production: journaled step RUN_ID 3 --pdb
    """
    from .debug import rerun_step

    code = rerun_step(state, run_id, step_number, app, use_pdb)
    sys.exit(code)


# ------------------------------------------------------------ journal tools


@main.command()
@json_option
@state_option
@handles_errors
def verify(as_json: bool, state: Path) -> None:
    """Check the journal: headers, frames, CRCs, and the state machine's invariants.

    Exit 0 when a supervisor would start on it as is (a torn tail, which start-up
    cuts, is reported but is not damage); exit 1 with segment, byte offset and
    what is wrong otherwise.
    """
    from .tools import check

    c = check(state)
    r = c.report
    if as_json:
        click.echo(json.dumps({
            "ok": c.ok, "segments": r.segments, "records": r.records, "bytes": r.bytes,
            "runs": c.runs, "statuses": c.statuses, "violations": c.violations,
            "torn": None if r.torn is None else {"segment": r.torn.segment,
                                                 "offset": r.torn.offset,
                                                 "dropped_bytes": r.torn.dropped_bytes,
                                                 "reason": r.torn.reason},
            "damage": None if r.damage is None else {"segment": r.damage.segment,
                                                     "offset": r.damage.offset,
                                                     "what": r.damage.what}}))
    else:
        summary = ", ".join(f"{n} {s}" for s, n in c.statuses.items()) or "none"
        click.echo(f"{r.segments} segments, {r.records} records, {r.bytes / 1e6:.2f} MB; "
                   f"{c.runs} runs ({summary})")
        if r.torn is not None:
            click.echo(f"torn tail: {r.torn.segment} at byte {r.torn.offset}: {r.torn.reason} "
                       f"({r.torn.dropped_bytes} bytes; the next start or 'journaled repair' "
                       "cuts it)")
        for v in c.violations:
            click.echo(f"invariant broken: {v}")
        if r.damage is not None:
            click.echo(f"damage: {r.damage}")
        click.echo("ok" if c.ok else "FAILED")
    sys.exit(0 if c.ok else 1)


@main.command()
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@state_option
@handles_errors
def repair(yes: bool, state: Path) -> None:
    """Cut a torn or damaged journal back to its last whole record (a backup is kept).

    Refuses while a supervisor holds the state directory.
    """
    from .journal import StateLock
    from .journal import repair as do_repair
    from .journal import verify as do_verify
    from .records import decode

    holder = StateLock.holder(state)
    if holder is not None:
        fail(f"a supervisor (pid {holder}) holds {state}; stop it before repairing")
    # With the decoder: a record whose CRC passes but which does not decode is
    # damage too, cut there like any other (the backup keeps it).
    r = do_verify(state / "journal", decode)
    bad = r.damage or r.torn
    if bad is None:
        click.echo("journal is clean; nothing to repair")
        return
    where = (f"{r.damage.segment} at byte {r.damage.offset}: {r.damage.what}" if r.damage
             else f"{r.torn.segment} at byte {r.torn.offset}: {r.torn.reason}")
    click.echo(f"will cut the journal at {where}; everything after it is moved to *.broken")
    if not yes and not click.confirm("proceed?", default=False):
        fail("not repaired", 1)
    rep = do_repair(state / "journal", decode)
    click.echo(f"cut {rep.segment} at byte {rep.offset} ({rep.dropped_bytes} bytes dropped); "
               f"backup: {rep.backup}" + (f"; moved aside: {', '.join(rep.moved_aside)}"
                                          if rep.moved_aside else ""))


@main.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing records as they are written.")
@click.option("--run", "run_id", help="Only records of this run.")
@json_option
@state_option
@handles_errors
def log(follow: bool, run_id: str | None, as_json: bool, state: Path) -> None:
    """Print the journal's records, one per line (JSON lines with --json)."""
    from .notify import DirWatcher
    from .replay import Entry, Tail
    from .tools import record_dict, record_line

    jdir = state / "journal"
    if not jdir.is_dir():
        fail(f"no journal in {state}; is that the right --state?")
    tailer = Tail(jdir)  # decode errors are JournalCorrupt with segment and offset

    def show(entries: list[Entry]) -> None:
        for _seg, _off, rec in entries:
            if run_id is not None and getattr(rec, "run_id", None) != run_id:
                continue
            click.echo(json.dumps(record_dict(rec)) if as_json else record_line(rec))

    with DirWatcher(jdir) as watcher:
        show(tailer.poll()[1])
        while follow:
            watcher.wait(1.0)
            reset, entries = tailer.poll()
            if reset and not as_json:
                click.echo("-- journal compacted; continuing from its snapshot --")
            show(entries)


@main.command()
@click.option("--retention", type=click.FloatRange(min=0), default=7 * 86400.0,
              show_default=True, help="Seconds to keep finished runs.")
@state_option
@handles_errors
def compact(retention: float, state: Path) -> None:
    """Snapshot live state into a new segment and drop old segments and expired runs.

    With a supervisor running, asks it to compact (it uses its own --retention).
    """
    from .inbox import CompactMsg, post
    from .journal import StateLock
    from .tools import compact_offline

    if StateLock.is_locked(state):
        post(state, CompactMsg(time.time()))
        click.echo("compaction requested from the running supervisor")
        return
    before, after = compact_offline(state, retention)
    click.echo(f"compacted: {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB")


from .crashtest import crashtest as _crashtest  # noqa: E402

main.add_command(_crashtest)

from .watch import watch as _watch  # noqa: E402

main.add_command(_watch)

if __name__ == "__main__":
    main()
