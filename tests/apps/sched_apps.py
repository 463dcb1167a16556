"""Runners for the operations tests (schedules, pause/resume, fork).

``steps``: ``headers["steps"]`` steps; each appends ``|<step>`` to the payload,
the last succeeds with it. ``headers["sleep"]`` seconds of sleep in step 0
(after touching ``headers["mark"]``, if given). ``headers["memo"] == "1"``: the
last step returns its memo ``seen`` if it has one, else stores it and fails
permanently (a fork from that step then succeeds through the memo).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from journaled import Continue, Step, StepError, Succeed


def runner(step: Step) -> Any:
    h = step.headers
    n = int(h.get("steps", "1"))
    if step.step_number == 0:
        mark = h.get("mark")
        if mark:
            tmp = Path(mark + ".tmp")
            tmp.write_text(str(os.getpid()))
            os.replace(tmp, mark)
        time.sleep(float(h.get("sleep", "0")))
    payload = step.payload + f"|{step.step_number}".encode()
    if step.step_number < n - 1:
        return Continue(payload)
    if h.get("memo") == "1":
        seen = step.memo.get("seen")
        if seen is None:
            step.memo.put("seen", b"recorded-by-" + step.run_id.encode())
            raise StepError.permanent("fails once its memo is recorded")
        return Succeed(payload + b" memo=" + seen)
    return Succeed(payload)
