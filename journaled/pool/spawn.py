"""A runner's ``Spawn`` on its way out of the worker: checked, big inputs made blobs.

The children's inputs travel in the result (then in one ``Spawned`` journal
record), so their inline bytes together are capped below a record's limit;
each one over the blob threshold is written as a blob first, like any payload.
"""

from __future__ import annotations

from typing import Any, Callable

from ..api import Spawn
from ..errors import InputTooLarge
from ..limits import MAX_HEADERS
from ..state import WorkerResult

# All of one Spawn's inline child inputs together (a journal record body is 64 MiB).
MAX_SPAWN_INLINE = 32 << 20
_BYTES_LIKE = (bytes, bytearray, memoryview)


def spawn_result(out: Spawn, value: Callable[[str, Any], Any]) -> WorkerResult:
    """The wire form of ``out``; ``value(what, data)`` gives bytes or a blob ref."""
    kids = out.children
    if not isinstance(kids, (list, tuple)):
        return _bad(f"Spawn.children must be a list of bytes, got {type(kids).__name__}")
    if not isinstance(out.then, _BYTES_LIKE):
        return _bad(f"Spawn.then must be bytes, got {type(out.then).__name__}")
    headers = out.headers
    if headers is not None:
        if not isinstance(headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            return _bad("Spawn.headers must be a dict of str to str (or None)")
        size = sum(len(k.encode()) + len(v.encode()) for k, v in headers.items())
        if size > MAX_HEADERS:
            raise InputTooLarge("Spawn.headers", size, MAX_HEADERS)
        headers = dict(headers)
    values: list[Any] = []
    inline = 0
    for i, data in enumerate(kids):
        if not isinstance(data, _BYTES_LIKE):
            return _bad(f"Spawn.children[{i}] must be bytes, got {type(data).__name__}")
        v = value(f"Spawn.children[{i}]", data)
        if isinstance(v, bytes):
            inline += len(v)
        values.append(v)
    if inline > MAX_SPAWN_INLINE:
        raise InputTooLarge("Spawn.children held inline together", inline, MAX_SPAWN_INLINE)
    return WorkerResult("spawn", value("Spawn.then", out.then), children=values,
                        child_headers=headers)


def _bad(error: str) -> WorkerResult:
    return WorkerResult("error", permanent=True, error=error)
