"""Runners that move big bytes: every kind a blob can hold (input, payload, result, memo).

``pipeline`` adds 1 to every byte at each step (``bytes.translate``: fast at
100 MB), so after ``headers["steps"]`` steps the result is the input shifted
by that many: the test checks every byte without keeping a second copy of
the chain. ``headers["view"]`` reads the payload through ``payload_view()``.
"""

from __future__ import annotations

import os
from pathlib import Path

from journaled import Continue, Step, Succeed

PLUS = [bytes((b + k) % 256 for b in range(256)) for k in range(256)]


def shifted(data: bytes, k: int) -> bytes:
    """``data`` with ``k`` added to every byte (mod 256): what the pipeline computes."""
    return data.translate(PLUS[k % 256])


def pipeline(step: Step) -> Continue | Succeed:
    steps = int(step.headers.get("steps", "3"))
    if step.headers.get("view"):
        data = bytes(step.payload_view())  # through the mmap, as numpy users read it
    else:
        data = step.payload
    out = data.translate(PLUS[1])
    if step.step_number + 1 < steps:
        return Continue(out)
    return Succeed(out)


def memo_then_die(step: Step) -> Succeed:
    """First attempt: store a big memo, then die; the retry returns the memo as the result."""
    size = int(step.headers.get("size", "0"))
    got = step.memo.get("big")
    if got is not None:
        return Succeed(got)
    step.memo.put("big", shifted(step.payload, 7)[:size] if size else shifted(step.payload, 7))
    os._exit(3)


def slow_big_result(step: Step) -> Succeed:
    """Announce through ``headers["mark"]`` that the big result is being built, then build it.

    A test kills the worker while the blob is being written; the retry
    (attempts > 1) builds the same result at once.
    """
    mark = step.headers.get("mark")
    size = int(step.headers.get("size", str(64 << 20)))
    if mark and step.attempts == 1:
        Path(mark).write_text(str(os.getpid()))
    return Succeed(shifted(step.payload, 1) * (size // max(1, len(step.payload))))


def view_kind(step: Step) -> Succeed:
    """Report what ``payload_view()`` gave: read-only? over an mmap? the same bytes?"""
    import hashlib
    import json
    import mmap

    v = step.payload_view()
    return Succeed(json.dumps({"readonly": v.readonly, "mmap": isinstance(v.obj, mmap.mmap),
                               "size": v.nbytes,
                               "sha": hashlib.sha256(v).hexdigest()}).encode())
