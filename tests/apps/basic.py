"""One runner, many behaviours: ``step.headers["app"]`` picks the scenario.

A single runner lets one ``Runtime`` (and one pool) serve every scenario of
a test. Runners report what they saw through their payloads and results
(JSON), so the tests check the step contract from the worker's side.
Scenarios that must be seen running touch ``headers["mark"]`` first; the
file holds the worker's pid.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from journaled import Cancel, Continue, ContinueAfter, Fail, Step, StepError, Succeed

CHAIN_STEPS = 4


def _observe(step: Step) -> dict[str, Any]:
    return {"step": step.step_number, "job_id": step.job_id, "attempts": step.attempts,
            "headers": step.headers, "run_id": step.run_id}


def _mark(step: Step) -> None:
    """Say "this step is running now" to the test, with this worker's pid."""
    mark = step.headers.get("mark")
    if mark:
        tmp = Path(mark + ".tmp")
        tmp.write_text(str(os.getpid()))
        os.replace(tmp, mark)


def _explode_with_a_named_frame(step: Step) -> None:
    """Raise a plain exception from a frame whose name the traceback must show."""
    raise ValueError(f"boom in run {step.run_id}")


def _hard_exit() -> None:
    """Kill the worker process mid-step, as a segfault or an OOM kill would."""
    os._exit(3)


def chain(step: Step) -> Any:
    """Four steps doubling a number; step 1 fails transiently on its first delivery."""
    if step.step_number == 0:
        state = {"n": int(step.payload), "obs": []}
    else:
        state = json.loads(step.payload)
    if step.step_number == 1 and step.attempts == 1:
        raise StepError.transient(f"first delivery of {step.job_id} fails")
    state["obs"].append(_observe(step))
    if step.step_number < CHAIN_STEPS - 1:
        state["n"] *= 2
        return Continue(json.dumps(state).encode())
    return Succeed(json.dumps(state).encode())


def delay(step: Step) -> Any:
    """Step 0 asks for ``headers["delay"]`` seconds before step 1; both record their clocks."""
    if step.step_number == 0:
        wanted = float(step.headers["delay"])
        return ContinueAfter(json.dumps({"returned_at": time.time()}).encode(), delay=wanted)
    state = json.loads(step.payload)
    state["started_at"] = time.time()
    return Succeed(json.dumps(state).encode())


def echo(step: Step) -> Any:
    return Succeed(step.payload)


def fail(step: Step) -> Any:
    return Fail(f"verdict: {step.payload.decode()}")


def cancel_verdict(step: Step) -> Any:
    return Cancel("the runner decided to stop")


def flaky(step: Step) -> Any:
    if step.attempts == 1:
        raise StepError.transient("flaky service timed out")
    return Succeed(str(step.attempts).encode())


def always_transient(step: Step) -> Any:
    raise StepError.transient(f"still broken at attempt {step.attempts}")


def permanent(step: Step) -> Any:
    raise StepError.permanent("input can never be processed")


def exception(step: Step) -> Any:
    _explode_with_a_named_frame(step)


def bad_return(step: Step) -> Any:
    return 42


def exit_once(step: Step) -> Any:
    if step.attempts == 1:
        _hard_exit()
    return Succeed(str(step.attempts).encode())


def poison(step: Step) -> Any:
    _hard_exit()


def watch_token(step: Step) -> Any:
    _mark(step)
    if step.cancel_token.wait(timeout=30):
        return Cancel("saw the token")
    return Succeed(b"never cancelled")


def ignore_token(step: Step) -> Any:
    _mark(step)
    time.sleep(60)
    return Succeed(b"slept through the cancel")


def sleep(step: Step) -> Any:
    _mark(step)
    time.sleep(float(step.headers.get("seconds", "5")))
    return Succeed(b"woke up")


def long_delay(step: Step) -> Any:
    if step.step_number == 0:
        return ContinueAfter(b"later", delay=3600)
    return Succeed(b"an hour later")


def needs_file(step: Step) -> Any:
    """Fail permanently until the file named by ``headers["file"]`` exists."""
    if not Path(step.headers["file"]).exists():
        raise StepError.permanent(f"{step.headers['file']} is missing")
    return Succeed(b"found it")


def pid(step: Step) -> Any:
    return Succeed(str(os.getpid()).encode())


APPS = {f.__name__: f for f in (chain, delay, echo, fail, cancel_verdict, flaky, always_transient,
                                permanent, exception, bad_return, exit_once, poison, watch_token,
                                ignore_token, sleep, long_delay, needs_file, pid)}


def runner(step: Step) -> Any:
    """Dispatch on ``headers["app"]``; no header means ``echo``."""
    return APPS[step.headers.get("app", "echo")](step)
