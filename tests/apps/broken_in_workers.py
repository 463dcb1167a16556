"""A runner module that imports in the test process but not in a worker process.

It models a user's module that cannot load in a fresh interpreter (a missing
``if __name__ == "__main__":`` guard, a dependency only the parent has). The
test process sets ``tests.apps.ALLOW_BROKEN_IN_WORKERS`` before importing it;
worker processes, forked from a fresh forkserver interpreter, do not have it.
"""

from __future__ import annotations

import sys
from typing import Any

from journaled import Step, Succeed

if not getattr(sys.modules.get("tests.apps"), "ALLOW_BROKEN_IN_WORKERS", False):
    raise ImportError("tests.apps.broken_in_workers refuses to load in a worker process")


def runner(step: Step) -> Any:
    return Succeed(b"unreachable from a worker")
