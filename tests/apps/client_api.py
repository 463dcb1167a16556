"""Runners for the API regression tests: StepError subclasses and Cancelled."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from journaled import Cancelled, Step, StepError, Succeed


class QuotaError(StepError):
    """A user's subclass with its own ``__init__`` (one argument, not the message)."""

    def __init__(self, service: str) -> None:
        super().__init__(f"quota exceeded on {service}")
        self.service = service


def runner(step: Step) -> Any:
    app = step.headers.get("app", "")
    if app == "quota_permanent":
        raise QuotaError.permanent("s3")
    if app == "quota_transient":
        if step.attempts == 1:
            raise QuotaError.transient("s3")
        return Succeed(str(step.attempts).encode())
    if app == "swallow_cancel":
        # A runner whose own error handling is broad: it must not eat the cancel.
        mark = Path(step.headers["mark"])
        mark.write_text(str(os.getpid()))
        try:
            while True:
                step.cancel_token.raise_if_cancelled()
                time.sleep(0.005)
        except Exception:  # noqa: BLE001 - the point of the test
            Path(str(mark) + ".swallowed").write_text("swallowed")
            return Succeed(b"swallowed the cancel")
        except Cancelled:
            Path(str(mark) + ".saw").write_text("saw Cancelled")
            raise
    return Succeed(step.payload)
