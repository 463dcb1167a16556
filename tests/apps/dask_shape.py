"""Runner for the Dask executor's shape tests: each step leaves a trace the test reads.

``headers["log"]`` names a file each execution appends ``attempt`` to (one
line per time the step's code really ran, whoever ran it: journaled or a
Dask re-run); ``headers["app"]`` picks what the step then does.
"""

from __future__ import annotations

import os
from typing import Any

from journaled import Cancel, Continue, Step, Succeed


def runner(step: Step) -> Any:
    log = step.headers.get("log")
    if log:
        with open(log, "a") as f:
            f.write(f"{step.attempts}\n")
    app = step.headers.get("app", "noop")
    if app == "exit_first":  # the worker dies under attempt 1, as in a segfault
        if step.attempts == 1:
            os._exit(3)
        return Succeed(str(step.attempts).encode())
    if app == "watch":  # runs until its token is set
        mark = step.headers["mark"]
        with open(mark + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(mark + ".tmp", mark)
        if step.cancel_token.wait(timeout=60):
            with open(mark + ".saw", "w") as f:
                f.write("saw the token")
            return Cancel("saw the token")
        return Succeed(b"never cancelled")
    if app == "count":  # a chain: each step adds one, up to headers["to"]
        n = int(step.payload) + 1
        if step.step_number + 1 < int(step.headers["to"]):
            return Continue(str(n).encode())
        return Succeed(str(n).encode())
    return Succeed(step.payload)
