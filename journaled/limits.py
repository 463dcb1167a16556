"""Sizes the journal holds inline, checked at the edge (DESIGN §4).

One record body is at most ``MAX_BODY`` (64 MiB). A run's snapshot holds
its input, its current payload or result, its memos and buffered signals,
so each of those is bounded such that one run always fits one snapshot
part. Anything bigger is refused at the API with ``InputTooLarge``; it
never reaches the supervisor.

Inputs, payloads, results and memo values over the blob threshold
(``journaled.blobs``, 64 KiB by default) are not held inline at all: the
record carries a ref and the bytes live in a file, so ``MAX_VALUE`` applies
to them only when they stay inline (a threshold set above it). Signal data
and headers are always inline and keep their limits.
"""

from __future__ import annotations

from .errors import InputTooLarge

# One frame's body: the journal format's own limit, ``journal.frame.MAX_BODY``
# (tests/e2e/test_cli_lazy.py checks they agree). Written out, not imported, so
# that checking a submission's sizes (a client, ``journaled submit``) does not
# import the journal package.
MAX_BODY = 64 << 20

MAX_VALUE = 8 << 20  # an input, a payload, a result, a memo value, a signal's data
MAX_MEMOS = 8 << 20  # all memo values of one step together
MAX_SIGNALS = 8 << 20  # signals buffered for one run, all keys together
MAX_HEADERS = 64 << 10  # a run's headers, keys and values together
MAX_TEXT = 64 << 10  # an error message or a traceback: cut, never refused
SNAPSHOT_PART = 16 << 20  # snapshot parts are cut near this many encoded bytes


def check_size(what: str, value: bytes | bytearray | memoryview | str,
               limit: int = MAX_VALUE) -> None:
    """Raise ``InputTooLarge`` naming ``what`` when ``value`` is over ``limit`` bytes."""
    n = len(value.encode()) if isinstance(value, str) else len(value)
    if n > limit:
        raise InputTooLarge(what, n, limit)


def cut_text(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` cut to about ``limit`` bytes, keeping the end (where a traceback says most)."""
    if len(text) <= limit // 4:
        return text
    data = text.encode()
    if len(data) <= limit:
        return text
    keep = data[-(limit - 64):].decode(errors="ignore")
    return f"[{len(data) - len(keep.encode()):,} bytes cut]\n{keep}"
