"""A runner whose 100 KB result differs at byte 70,000 between crashtest's phases.

Crashtest passes ``JOURNALED_FAILPOINT_SEED`` to its crash rounds and keeps
it from the crash-free reference, so with it set the crash rounds' results
carry a different byte there: a deterministic check (b) mismatch.
"""

from __future__ import annotations

import os
from typing import Any

from journaled import Step, Succeed

OFFSET = 70_000


def runner(step: Step) -> Any:
    mark = b"C" if os.environ.get("JOURNALED_FAILPOINT_SEED") else b"R"
    body = bytearray(b"abcdefgh" * 12_500)  # 100,000 bytes
    body[OFFSET:OFFSET + 1] = mark
    return Succeed(bytes(body))
