"""The ``journaled`` command line: the click group and what its commands share.

Every subcommand takes ``--state DIR`` (else ``$JOURNALED_STATE``, else
``./.journaled``); every one that prints data takes ``--json``. Errors a
user can fix are one line on stderr with exit 2 (bad input) or 1 (a run or
a check failed); a traceback means a bug in journaled.

The commands live in modules by job, each registering on ``main`` when
imported; ``COMMANDS`` names them, and a module is imported only when one of
its commands runs (``journaled submit`` in a shell loop pays for click, the
socket and msgspec, not for the journal reader, SQLite or the dashboard):

- ``serve``: ``run``, the supervisor in the foreground;
- ``writes``: ``submit``, ``cancel``, ``retry``, ``signal`` (through the inbox);
- ``reads``: ``status``, ``runs``, ``result``, ``wait``, ``dead``;
- ``ops``: ``schedule ...``, ``pause``, ``resume``, ``fork`` (operators, through the inbox);
- ``tools``: ``step``, ``verify``, ``repair``, ``log``, ``compact`` (the journal itself);
- ``crashtest`` and ``watch`` come from their own packages.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import importlib
import os
import stat
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, NoReturn

import click

from .. import __version__
from ..errors import (
    InputTooLarge,
    InvalidRunId,
    JournalCorrupt,
    JournaledError,
    OverLimit,
    RunConflict,
    RunNotDead,
    RunNotFound,
    RunNotLive,
    StateLocked,
    StorageFailure,
    SubmissionRejected,
    UnknownRunner,
)

if TYPE_CHECKING:  # at run time imported on first use: see __getattr__ at the bottom
    from ..api import RunOutcome
    from .metrics import metrics_cmd
    from .ops import fork, pause_cmd, resume_cmd, schedule
    from .reads import dead, result, runs, status, wait
    from .serve import run
    from .tools import compact, log, repair, step_cmd, verify
    from .ui import ui_cmd
    from .writes import _parse_headers, cancel, retry, signal_cmd, submit

DEFAULT_STATE = ".journaled"

# Every command: name -> (module, attribute, the first sentence of its help).
# The sentence is what ``journaled --help`` lists without importing the module
# (click cuts it to the terminal's width the same way as the real help);
# tests/e2e/test_cli_lazy.py checks it still matches the command's docstring.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "cancel": (".writes", "cancel",
               "Cancel RUN_ID: its running step sees its token set, then is killed after a "
               "grace."),
    "compact": (".tools", "compact",
                "Snapshot live state into a new segment, drop old segments and expired "
                "archive rows."),
    "crashtest": ("journaled.crashtest", "crashtest",
                  "Crash-test APP (``module:function``): kill -9 it at random and check every "
                  "run."),
    "dead": (".reads", "dead",
             "List dead-lettered steps, newest first: retries exhausted, permanent errors, "
             "poison pills."),
    "fork": (".ops", "fork",
             "Start a new run at step N of RUN_ID (live or finished); RUN_ID is untouched."),
    "log": (".tools", "log",
            "Print the journal's records, one per line (JSON lines with --json)."),
    "metrics": (".metrics", "metrics_cmd",
                "Print the metrics `journaled run --metrics-port` serves, from the state "
                "directory."),
    "pause": (".ops", "pause_cmd",
              "Stop leasing new steps (of runs with KEY, or of all runs); running steps "
              "finish."),
    "repair": (".tools", "repair",
               "Cut a torn or damaged journal back to its last whole record (a backup is "
               "kept)."),
    "result": (".reads", "result",
               "Write RUN_ID's result bytes to stdout (exit 1 if it failed or is not done)."),
    "resume": (".ops", "resume_cmd", "Lease again what 'journaled pause' stopped."),
    "retry": (".writes", "retry",
              "Redrive RUN_ID's dead-lettered step as a new series of attempts."),
    "run": (".serve", "run",
            "Run the supervisor for APP (``module:function``) in the foreground."),
    "runs": (".reads", "runs",
             "List runs, newest first: live ones, then archived ones by finish time."),
    "schedule": (".ops", "schedule",
                 "Cron schedules: each tick submits a run with id NAME@<tick, UTC ISO>."),
    "signal": (".writes", "signal_cmd",
               "Send DATA to RUN_ID's ContinueOnSignal(key=KEY) wait (kept until it waits)."),
    "status": (".reads", "status", "Show where RUN_ID is: status, steps, result or error."),
    "step": (".tools", "step_cmd",
             "Re-run one recorded step here, with its recorded payload, headers and attempt."),
    "submit": (".writes", "submit",
               "Submit a run with INPUT (text; '-' reads stdin); prints its run id."),
    "ui": (".ui", "ui_cmd", "Serve the web dashboard for the state directory."),
    "verify": (".tools", "verify",
               "Check the journal: headers, frames, CRCs, and the state machine's invariants."),
    "wait": (".reads", "wait", "Block until RUN_ID ends."),
    "watch": ("journaled.watch", "watch",
              "Live view: runs by status, steps in flight with progress, throughput, recent "
              "runs."),
}


def fail(msg: str, code: int = 2) -> NoReturn:
    click.echo(f"journaled: error: {msg}", err=True)
    sys.exit(code)


def _exit_code(e: JournaledError) -> int:
    if isinstance(e, (JournalCorrupt, StorageFailure)):
        return 1
    if isinstance(e, (InvalidRunId, RunConflict, RunNotFound, RunNotLive, StateLocked,
                      InputTooLarge, SubmissionRejected, RunNotDead, UnknownRunner,
                      OverLimit)):
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
        except KeyboardInterrupt:
            # Ctrl-C while waiting: 130 like a shell, never 1 ("the run failed").
            click.echo("interrupted; the run goes on", err=True)
            sys.exit(130)

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


def state_problem(path: Path, must_exist: bool) -> str | None:
    """What is wrong with ``path`` as a ``--state`` (one line), or None.

    A command that only reads (``must_exist``) must never create a state
    directory, so a missing one is a typo to report, not an empty state to show.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not must_exist:
            return None  # the first submit or run creates it
        return (f"no state directory {str(path)!r} (check --state or JOURNALED_STATE; "
                "'journaled submit' or 'journaled run' creates one)")
    except OSError as e:
        return f"--state {str(path)!r}: {e.strerror or e}"
    if not stat.S_ISDIR(st.st_mode):
        return f"--state {str(path)!r} is a file, not a state directory"
    return None


class StateError(click.BadParameter):
    """A ``--state`` that cannot be used; ``JournaledGroup`` prints it as one line."""


class StateDir(click.ParamType):
    """``--state``: a directory or nothing yet, never a regular file."""

    name = "directory"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Path:
        path = Path(value)
        problem = state_problem(path, must_exist=False)
        if problem is not None:
            raise StateError(problem, ctx=ctx, param=param)
        return path


class JournaledGroup(click.Group):
    """The root group: commands imported on first use (``COMMANDS``); a bad ``--state`` is
    one line and exit 2, not click's usage text."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and cmd_name in COMMANDS:
            module, attr, _ = COMMANDS[cmd_name]
            # Importing a module registers its commands on ``main`` (the decorators).
            cmd = getattr(importlib.import_module(module, __name__), attr)
            self.add_command(cmd, cmd_name)
        return cmd

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            # click (>= 8.2) suggests close names from the commands loaded so far:
            # offer every command ("sched" -> "Did you mean 'schedule'?").
            name = getattr(e, "command_name", None)
            if name is None or getattr(e, "possibilities", None):
                raise
            raise type(e)(name, possibilities=self.list_commands(ctx), ctx=ctx) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """``--help``'s list from ``COMMANDS``, importing none of the modules."""
        names = self.list_commands(ctx)
        stand_in = {n: self.commands.get(n) or click.Command(n, help=COMMANDS[n][2])
                    for n in names}
        rows = [(n, c) for n, c in stand_in.items() if not c.hidden]
        if rows:
            limit = formatter.width - 6 - max(len(n) for n, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(n, c.get_short_help_str(limit)) for n, c in rows])

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StateError as e:
            fail(e.message)
        except click.BadParameter as e:
            # Commands defined elsewhere (watch, crashtest) take a click.Path --state.
            opts = e.param.opts if e.param is not None else []
            for opt in ("--state", "--since", "--limit"):  # one line for these
                if opt in opts:
                    fail(f"{opt}: {e.message}")
            raise


def state_option(fn: Callable[..., Any] | None = None, *,
                 must_exist: bool = False) -> Any:
    """``--state DIR``; ``@state_option(must_exist=True)`` on a command that only reads
    (or acts on a run that must already be there), so it never creates the directory:
    a missing one is a one-line error (naming the run, if the command takes one)."""

    def add(f: Callable[..., Any]) -> Callable[..., Any]:
        if must_exist:
            f = _needs_state(f)
        return click.option(
            "--state", "state", envvar="JOURNALED_STATE", default=DEFAULT_STATE,
            show_default=True, type=StateDir(), metavar="DIR",
            help="State directory (journal, inbox, lock). Env: JOURNALED_STATE.")(f)

    return add if fn is None else add(fn)


def _needs_state(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        problem = state_problem(kwargs["state"], must_exist=True)
        if problem is not None:
            run_id = kwargs.get("run_id")
            fail(problem if run_id is None else f"no run {run_id!r}: {problem}")
        return fn(*args, **kwargs)

    return wrapper


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
    from ..client import Client

    return Client(state)


def _main() -> None:
    """journaled: durable step workflows for CPU-heavy Python on one machine.

    \b
    Write a runner:      def runner(step): ... return Continue(b"..") / Succeed(b"..")
    Start a supervisor:  journaled run app:runner -w 4
    Submit work:         journaled submit 42      (prints the run id)
    Follow it:           journaled wait RUN_ID && journaled result RUN_ID

    Every record is fsync'd before the supervisor acts on it: kill -9 anything
    at any time and no run is lost or finished twice.
    """


# Built by calls, not decorators, so its type is declared: the command modules
# import ``main`` while this package is still being imported.
main: click.Group = click.group(
    "main", cls=JournaledGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)(click.version_option(__version__, prog_name="journaled")(_main))


# The command modules' names stay importable from ``journaled.cli`` as they were
# before the split, each module imported on first use (PEP 562).
_EXPORTS = {attr: module for module, attr, _ in COMMANDS.values() if module.startswith(".")}
_EXPORTS["_parse_headers"] = ".writes"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


__all__ = [
    "COMMANDS", "DEFAULT_STATE", "BadInput", "cancel", "compact", "dead", "fail", "fork",
    "handles_errors",
    "json_option", "log", "main", "outcome_json", "pause_cmd", "repair", "resume_cmd",
    "schedule", "result", "retry", "run", "runs", "metrics_cmd", "ui_cmd",
    "signal_cmd", "state_option", "status", "step_cmd", "submit", "user_input", "verify",
    "wait", "_parse_headers",
]
