"""A reader process for check (h): a ``Client`` polling run statuses from outside.

Started by crashtest beside every crash round (``python -m
journaled.crashtest.reader STATE LOG``), it lives across the supervisor's
kills and restarts and appends one line to LOG each time it sees a run's
status change::

    seen <run_id> <status> <result-hex or ->

Check (h) then holds that once a reader saw an outcome, no later look and
not the final journal shows anything else: a reader must never be shown an
outcome a crash can still take back (DESIGN §4, "readers stop at the synced
mark"). A read error is logged as ``error <text>`` and the reader goes on.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

POLL = 0.02  # seconds between looks


class Seen(NamedTuple):
    """One reader-log line; ``index`` is its position in the file."""

    index: int
    run_id: str
    status: str
    result: bytes | None


def read_log(path: Path) -> tuple[list[Seen], list[str]]:
    """The reader's observations, in order, and its read errors."""
    seen: list[Seen] = []
    errors: list[str] = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return seen, errors
    data = data[: data.rfind(b"\n") + 1]
    for raw in data.decode("utf-8", "replace").splitlines():
        kind, _, rest = raw.partition(" ")
        if kind == "error":
            errors.append(rest)
            continue
        parts = rest.split(" ")
        if kind != "seen" or len(parts) != 3:
            continue
        try:
            result = None if parts[2] == "-" else bytes.fromhex(parts[2])
        except ValueError:
            continue
        seen.append(Seen(len(seen), parts[0], parts[1], result))
    return seen, errors


def watch(state: Path, log: Path, poll: float = POLL) -> None:
    """Poll until killed; one ``write`` per line (O_APPEND), so a kill never tears one."""
    from ..client import Client

    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    client = Client(state)
    last: dict[str, tuple[str, bytes | None]] = {}
    last_error = ""
    while True:
        try:
            outcomes = client.runs(limit=None)
        except Exception as e:  # noqa: BLE001 - logged for the report; keep looking
            text = f"{type(e).__name__}: {e}".replace("\n", " ")[:300]
            if text != last_error:
                os.write(fd, f"error {text}\n".encode())
                last_error = text
            client = Client(state)
            time.sleep(poll)
            continue
        lines = []
        for o in outcomes:
            now = (o.status.value, o.result if o.status.terminal else None)
            if last.get(o.run_id) != now:
                last[o.run_id] = now
                res = "-" if now[1] is None else now[1].hex()
                lines.append(f"seen {o.run_id} {now[0]} {res}\n")
        if lines:
            os.write(fd, "".join(lines).encode())
        time.sleep(poll)


if __name__ == "__main__":
    watch(Path(sys.argv[1]), Path(sys.argv[2]))
