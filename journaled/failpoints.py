"""Named failure injection for crash and storage tests; one global lookup when off.

A call site guards the operation it wants to break::

    if failpoints.ENABLED:
        failpoints.hit("journal.before_sync")

so production code pays for one module-global read. Points are switched on
by the environment variable ``JOURNALED_FAILPOINTS`` (read once, at import)
or by ``configure()`` in tests::

    JOURNALED_FAILPOINTS="journal.before_sync=crash,worker.before_step=delay:50%10"

An entry is ``name=action`` with an optional modifier: ``@N`` fires only on the
N-th hit of that point (1-based), ``%P`` fires with probability P percent,
drawn from a ``random.Random`` seeded by ``JOURNALED_FAILPOINT_SEED`` (default
0) so a failing run can be repeated. Actions:

- ``crash``: SIGKILL to this process, the real ``kill -9``.
- ``exit``: ``os._exit(137)``, no cleanup, no flush.
- ``error`` / ``enospc``: raise ``OSError`` with EIO / ENOSPC, as the guarded
  call would.
- ``short-write``: ``hit`` returns ``"short-write"``; the caller writes half its
  buffer and fails as a short write.
- ``skip``: ``hit`` returns ``"skip"``; the caller skips the guarded operation
  (at ``journal.fdatasync`` this proves crash tests notice a missing fsync).
- ``delay:MS``: sleep MS milliseconds, then go on.

A malformed ``JOURNALED_FAILPOINTS`` is not an error at import (that would
be a traceback in every process that imports journaled). It is kept in
``ENV_ERROR``; the supervisor refuses to start with it (``journaled run``:
one line, exit 2), and any other first use (``hit``) raises
``FailpointSpecError`` with the same one-line message. It is never ignored:
a crash test whose failpoints silently did nothing would pass for nothing.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import threading
import time
from dataclasses import dataclass

from .errors import JournaledError

__all__ = ["ENABLED", "ENV_ERROR", "POINTS", "ACTIONS", "FailpointSpecError", "configure",
           "reset", "hit", "check_env"]

POINTS: dict[str, str] = {
    "journal.before_write": "commit, before the one write of the batch",
    "journal.before_sync": "commit, after the write, before the fdatasync",
    "journal.fdatasync": "the fdatasync itself (skip: no sync; error: the sync fails)",
    "journal.after_sync": "commit, after the fdatasync returned",
    "journal.before_rotate": "after a commit filled the segment, before the next one is created",
    "compact.before_rename": "compaction: snapshot segment synced as a temp file, not yet renamed",
    "compact.after_rename": "compaction: snapshot segment renamed into place, old segments remain",
    "compact.before_delete": "compaction: appends moved to the snapshot, old segments still there",
    "supervisor.before_dispatch": "a step's Leased record is durable, the step is not yet sent",
    "supervisor.after_dispatch": "the step was sent to a worker",
    "supervisor.before_hook": "the run's terminal record is durable, on_terminal not yet called",
    "supervisor.after_hook": "on_terminal returned, HookDelivered not yet durable",
    "archive.before_commit": "archiver: a batch of finished runs is about to be committed",
    "archive.after_commit": "archiver: the batch is durable in the archive, Archived not yet in",
    "archive.after_drop": "supervisor: Archived is durable, the runs are only in the archive",
    "inbox.before_rename": "client: submission temp file synced, not yet renamed into the inbox",
    "inbox.before_unlink": "supervisor: Submitted is durable, the inbox file not yet removed",
    "worker.before_step": "worker: step received, runner not yet called",
    "worker.after_step": "worker: runner returned, result not yet sent",
    "blobs.before_fsync": "a blob's temp file is written, not yet fsynced (nothing names it)",
    "blobs.after_fsync": "a blob's temp file is fsynced, not yet renamed into place",
    "schedule.before_tick_commit": "a tick's Submitted and cursor are built, not yet written",
    "schedule.after_tick_commit": "a tick's Submitted and cursor are durable",
    "fanout.spawn": "supervisor: a step's Spawn is folded into the turn, Spawned not yet written",
    "fanout.spawned": "supervisor: a Spawned record (parent outcome + children) is durable",
    "fanout.fan_in": "supervisor: a parent's fan-in step is leased with its children's outcomes,"
                     " the lease not yet durable",
}

ACTIONS = ("crash", "exit", "error", "enospc", "short-write", "skip", "delay:MS")

ENABLED: bool = False
ENV_ERROR: str | None = None  # why $JOURNALED_FAILPOINTS could not be parsed


class FailpointSpecError(JournaledError, ValueError):
    """Permanent: ``JOURNALED_FAILPOINTS`` is malformed; fix or unset it."""


@dataclass
class _Rule:
    action: str
    delay_ms: int = 0
    nth: int = 0  # 0: every hit
    percent: float = 100.0


_rules: dict[str, _Rule] = {}
_counts: dict[str, int] = {}
_lock = threading.Lock()
_rng = random.Random(0)


def _bad(entry: str, why: str) -> ValueError:
    return ValueError(
        f"bad failpoint entry {entry!r}: {why}; expected name=action[@N|%P] "
        f"with action one of {', '.join(ACTIONS)}"
    )


def _parse_entry(entry: str) -> tuple[str, _Rule]:
    name, sep, action = entry.partition("=")
    name, action = name.strip(), action.strip()
    if not sep or not name or not action:
        raise _bad(entry, "missing '='")
    if name not in POINTS:
        raise ValueError(
            f"bad failpoint entry {entry!r}: unknown point {name!r}; "
            f"known points: {', '.join(POINTS)}"
        )
    rule = _Rule(action="")
    if "@" in action and "%" in action:
        raise _bad(entry, "use @N or %P, not both")
    if "@" in action:
        action, _, n = action.partition("@")
        if not n.isdigit() or int(n) < 1:
            raise _bad(entry, f"@{n} is not a hit number >= 1")
        rule.nth = int(n)
    elif "%" in action:
        action, _, p = action.partition("%")
        try:
            rule.percent = float(p)
        except ValueError:
            raise _bad(entry, f"%{p} is not a percentage") from None
        if not 0 < rule.percent <= 100:
            raise _bad(entry, f"%{p} is not a percentage in (0, 100]")
    if action.startswith("delay:"):
        ms = action[len("delay:"):]
        if not ms.isdigit():
            raise _bad(entry, f"delay needs whole milliseconds, got {ms!r}")
        rule.action, rule.delay_ms = "delay", int(ms)
    elif action in ACTIONS:
        rule.action = action
    else:
        raise _bad(entry, f"unknown action {action!r}")
    return name, rule


def configure(spec: str) -> None:
    """Replace the active failpoints with ``spec`` (empty turns them all off).

    Raises:
        ValueError: an entry is malformed or names an unknown point; nothing changes then.
    """
    global ENABLED, ENV_ERROR
    rules: dict[str, _Rule] = {}
    for entry in spec.split(","):
        if not entry.strip():
            continue
        name, rule = _parse_entry(entry.strip())
        if name in rules:
            raise _bad(entry, f"point {name!r} is named twice")
        rules[name] = rule
    with _lock:
        _rules.clear()
        _rules.update(rules)
        _counts.clear()
        _rng.seed(int(os.environ.get("JOURNALED_FAILPOINT_SEED", "0") or 0))
        ENABLED = bool(rules)
        ENV_ERROR = None  # an explicit configure() replaces whatever the environment said


def reset() -> None:
    """Turn every failpoint off and forget hit counts (tests call this in teardown)."""
    configure("")


def hit(name: str) -> str | None:
    """Run the action configured for ``name``, if it fires now.

    Returns:
        ``"short-write"`` or ``"skip"`` when the caller must act on it, else None.

    Raises:
        OSError: for the ``error`` and ``enospc`` actions, like the guarded call.
    """
    if ENV_ERROR is not None and not _rules:
        raise FailpointSpecError(ENV_ERROR)
    with _lock:
        rule = _rules.get(name)
        if rule is None:
            return None
        count = _counts[name] = _counts.get(name, 0) + 1
        if rule.nth and count != rule.nth:
            return None
        if rule.percent < 100 and _rng.random() * 100 >= rule.percent:
            return None
    action = rule.action
    if action == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
        os._exit(137)  # not reached: SIGKILL cannot be caught
    if action == "exit":
        os._exit(137)
    if action == "error":
        raise OSError(errno.EIO, f"injected I/O error at failpoint {name}")
    if action == "enospc":
        raise OSError(errno.ENOSPC, f"injected no space left on device at failpoint {name}")
    if action == "delay":
        time.sleep(rule.delay_ms / 1000)
        return None
    return action  # short-write, skip


def check_env() -> None:
    """Raise ``FailpointSpecError`` if ``$JOURNALED_FAILPOINTS`` was malformed at import."""
    if ENV_ERROR is not None:
        raise FailpointSpecError(ENV_ERROR)


def _from_env() -> None:
    global ENABLED, ENV_ERROR
    spec = os.environ.get("JOURNALED_FAILPOINTS", "")
    try:
        configure(spec)
    except ValueError as e:
        ENV_ERROR = f"JOURNALED_FAILPOINTS={spec!r}: {e}"
        ENABLED = True  # so the first guarded call site reaches hit(), which raises


_from_env()
