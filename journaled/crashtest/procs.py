"""The process tree of a supervisor under test, read from ``/proc``.

A supervisor's tree, as crashtest sees it::

    supervisor ── forkserver ── worker, worker, ...     (cmdline has 'forkserver')
               └─ resource tracker                      (cmdline has 'resource_tracker')

A process is tracked by (pid, kernel start time) so a later process that
reuses the pid is never mistaken for it.
"""

from __future__ import annotations

import os

HELPERS = ("forkserver", "resource_tracker")


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            pass
    return out


def start_time(pid: int) -> int | None:
    """Kernel start time of ``pid``: tells it from a later process with its pid; None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return "?"


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = children(pid)
    while todo:
        p = todo.pop()
        if p not in out:
            out.append(p)
            todo += children(p)
    return out


def workers(sup_pid: int) -> list[int]:
    """Worker processes of a supervisor: the children of its forkserver."""
    out: list[int] = []
    for child in children(sup_pid):
        if "forkserver" in cmdline(child):
            out += children(child)
    return out


def helpers(sup_pid: int) -> dict[str, int]:
    """The supervisor's forkserver and resource tracker, by kind (those alive now).

    Both are direct children of the supervisor; workers, the forkserver's
    children, share its command line and are not helpers.
    """
    out: dict[str, int] = {}
    for child in children(sup_pid):
        line = cmdline(child)
        for kind in HELPERS:
            if kind in line and kind not in out:
                out[kind] = child
    return out


def alive(tracked: dict[int, int]) -> list[int]:
    return [p for p, st in tracked.items() if start_time(p) == st]


def send(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
