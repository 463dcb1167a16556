"""The ``journaled`` command line: the click group and what its commands share.

Every subcommand takes ``--state DIR`` (else ``$JOURNALED_STATE``, else
``./.journaled``); every one that prints data takes ``--json``. Errors a
user can fix are one line on stderr with exit 2 (bad input) or 1 (a run or
a check failed); a traceback means a bug in journaled.

The commands live in modules by job, each registering on ``main`` when
imported at the bottom of this file:

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
from typing import Any, Callable, Iterator, NoReturn

import click

from .. import __version__
from ..api import RunOutcome
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

DEFAULT_STATE = ".journaled"


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
    """The root group: a bad ``--state`` is one line and exit 2, not click's usage text."""

    # name -> (module, attribute): commands imported only when named or listed,
    # so a short command (``journaled submit`` in a shell loop) does not pay for
    # importing the big ones (crashtest, watch) at every start.
    lazy: dict[str, tuple[str, str]] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and cmd_name in self.lazy:
            module, attr = self.lazy[cmd_name]
            cmd = getattr(importlib.import_module(module), attr)
            self.add_command(cmd, cmd_name)
        return cmd

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


# Registration: importing a command module adds its commands to ``main``; the
# names stay importable from ``journaled.cli`` as they were before the split.
from .metrics import metrics_cmd  # noqa: E402, F401
from .ops import fork, pause_cmd, resume_cmd, schedule  # noqa: E402
from .reads import dead, result, runs, status, wait  # noqa: E402
from .serve import run  # noqa: E402
from .tools import compact, log, repair, step_cmd, verify  # noqa: E402
from .ui import ui_cmd  # noqa: E402, F401
from .writes import _parse_headers, cancel, retry, signal_cmd, submit  # noqa: E402

JournaledGroup.lazy = {"crashtest": ("journaled.crashtest", "crashtest"),
                       "watch": ("journaled.watch", "watch")}

__all__ = [
    "DEFAULT_STATE", "BadInput", "cancel", "compact", "dead", "fail", "fork", "handles_errors",
    "json_option", "log", "main", "outcome_json", "pause_cmd", "repair", "resume_cmd",
    "schedule", "result", "retry", "run", "runs",
    "signal_cmd", "state_option", "status", "step_cmd", "submit", "user_input", "verify",
    "wait", "_parse_headers",
]
