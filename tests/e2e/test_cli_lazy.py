"""``journaled submit`` starts light: a shell loop of submits pays for click, msgspec and
the socket, not for the journal reader, SQLite, asyncio or the other commands.

An eager import added anywhere on that path (the CLI package, a command module,
the client, the journal package) fails the first test; the second checks that
``--help``, which lists every command from ``journaled.cli.COMMANDS`` without
importing one, still says what each command's own help says.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

import journaled
import journaled.journal
from journaled import cli
from journaled.records import Submitted

from .helpers import ROOT, cli_env, journal_records

# Modules the submit path must not import (each costs start-up at every call).
HEAVY = ("sqlite3", "asyncio", "journaled.client", "journaled.state", "journaled.replay",
         "journaled.archive", "journaled.runtime", "journaled.supervisor", "journaled.server",
         "journaled.journal", "journaled.notify",
         "journaled.crashtest", "journaled.watch", "journaled.ui", "journaled.schedules",
         "journaled.cli.reads", "journaled.cli.ops", "journaled.cli.serve", "journaled.cli.tools",
         "journaled.cli.metrics", "journaled.cli.ui", "croniter", "hypothesis", "selenium")

_PROBE = """
import json, sys
from journaled.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def _run(*args: str) -> tuple[int, str, list[str]]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=60)
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    return report["code"] or 0, proc.stdout, report["modules"]


@pytest.mark.timeout(60)
def test_submit_over_the_socket_imports_only_the_submit_path(runtime, state_dir: Path) -> None:
    runtime()  # a supervisor serving STATE/supervisor.sock
    code, out, modules = _run("submit", "hello", "--state", str(state_dir))
    assert code == 0, out
    rid = out.strip()
    # Over the socket, answered once durable: journaled on return (the inbox path
    # would also have imported journaled.client, below).
    assert rid in {r.run_id for r in journal_records(state_dir) if isinstance(r, Submitted)}
    loaded = [m for m in HEAVY if m in modules]
    assert not loaded, f"journaled submit imported {loaded}: import them where they are used"


@pytest.mark.timeout(60)
def test_help_lists_every_command_with_its_own_first_line_and_imports_none() -> None:
    code, out, modules = _run("--help")
    assert code == 0
    listed = [ln.split()[0] for ln in out.split("Commands:")[1].splitlines() if ln.strip()]
    assert listed == sorted(cli.COMMANDS)
    assert not [m for m in modules if m.startswith("journaled.cli.")], \
        "--help imported a command module"
    ctx = click.Context(cli.main)
    for name, (_module, _attr, first) in cli.COMMANDS.items():
        real = cli.main.get_command(ctx, name)
        assert real is not None, name
        for width in (20, 45, 80, 400):
            assert click.Command(name, help=first).get_short_help_str(width) == \
                real.get_short_help_str(width), f"COMMANDS[{name!r}] is not its help's first line"
    assert set(cli.main.commands) == set(cli.COMMANDS), "a command missing from COMMANDS"


@pytest.mark.timeout(60)
def test_a_mistyped_command_is_one_usage_error_naming_the_close_ones() -> None:
    proc = subprocess.run([sys.executable, "-m", "journaled.cli", "sched"], cwd=ROOT,
                          env=cli_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "No such command 'sched'." in proc.stderr
    if hasattr(click.exceptions, "NoSuchCommand"):  # click >= 8.2 suggests names
        assert "Did you mean 'schedule'?" in proc.stderr, proc.stderr


def test_every_exported_name_still_resolves() -> None:
    for module in (journaled, cli, journaled.journal):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"

    from journaled.journal import frame
    from journaled.limits import MAX_BODY

    assert MAX_BODY == frame.MAX_BODY, "limits.MAX_BODY is the journal frame's limit"
