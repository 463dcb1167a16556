"""Runners that fan out with ``Spawn``; the submission's input picks the scenario.

A parent's input is JSON ``{"n": N, ...}``; its children (``step.headers``
carry ``role=child`` unless a scenario overrides them) answer from their
own input. The parent's fan-in step reports what it saw in
``step.children`` as its JSON result, so tests check the contract from
the worker's side.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from journaled import Cancel, Continue, Fail, Spawn, Step, StepError, Succeed


def _child(step: Step) -> Any:
    if step.children is not None:  # a nested parent's fan-in
        return Succeed(str(sum(int(c.result) for c in step.children)).encode())
    spec = json.loads(step.payload)
    how = spec.get("do", "square")
    if how == "square":
        return Succeed(str(spec["i"] * spec["i"]).encode())
    if how == "fail":
        return Fail(f"child {spec['i']} says no")
    if how == "raise":
        raise StepError.permanent(f"child {spec['i']} broke")
    if how == "big":
        return Succeed(bytes([spec["i"] % 256]) * spec["size"])
    if how == "sleep":  # until cancelled, or the time is up
        mark = spec.get("mark")
        if mark:
            Path(mark).touch()
        if step.cancel_token.wait(spec.get("secs", 30.0)):
            return Cancel("child saw its token")
        return Succeed(b"slept")
    if how == "nested":  # a child that is itself a parent
        return Spawn([json.dumps({"i": k}).encode() for k in range(spec["k"])],
                     then=b"nested", headers={"role": "child"})
    if how == "headers":
        return Succeed(json.dumps(step.headers, sort_keys=True).encode())
    if how == "slow":  # child 0 takes ``first`` seconds, the others ``secs``
        time.sleep(spec.get("first", 0.0) if spec["i"] == 0 else spec.get("secs", 0.0))
        return Succeed(str(spec["i"]).encode())
    return Fail(f"unknown child scenario {how!r}")


def _is_child(step: Step) -> bool:
    """A child by its header, or (children that inherit their parent's headers) its input."""
    if step.headers.get("role") == "child":
        return True
    return step.step_number == 0 and b'"i"' in step.payload[:64]


def runner(step: Step) -> Any:
    if _is_child(step):
        return _child(step)
    spec = json.loads(step.payload) if step.step_number == 0 else None
    if step.step_number == 0:
        assert spec is not None
        n = spec.get("n", 3)
        do = spec.get("do", "square")
        kids = [json.dumps({"i": i, "do": do, **spec.get("child", {})}).encode()
                for i in range(n)]
        for i in spec.get("fail", []):
            kids[i] = json.dumps({"i": i, "do": "fail"}).encode()
        crash = spec.get("crash_file")
        if crash and not os.path.exists(crash):  # the first attempt dies before spawning
            Path(crash).touch()
            os._exit(3)
        headers = spec.get("headers", {"role": "child"})  # JSON null: inherit the parent's
        return Spawn(kids, then=json.dumps({"spawned": n, "then": spec.get("then", "")}).encode(),
                     headers=headers)
    if step.children is None:
        return Fail(f"step {step.step_number} after a Spawn saw no children")
    then = json.loads(step.payload)
    kids = step.children
    seen = {"then": then, "count": len(kids), "statuses": kids.statuses(),
            "ids": [c.run_id for c in kids[:3]] + ([kids[-1].run_id] if len(kids) else []),
            "attempts": step.attempts}
    if then.get("then") == "again" and step.step_number == 1:
        return Spawn([json.dumps({"i": 10 + i}).encode() for i in range(2)],
                     then=json.dumps({"spawned": 2, "then": "second"}).encode(),
                     headers={"role": "child"})
    if then.get("then") == "sizes":
        seen["sizes"] = [len(c.result or b"") for c in kids]
        seen["firsts"] = [c.result[:1].hex() if c.result else "" for c in kids]
        return Succeed(json.dumps(seen).encode())
    total = 0
    for c in kids:
        if c.status.value == "succeeded" and (c.result or b"").isdigit():
            total += int(c.result)
    seen["total"] = total
    seen["errors"] = [c.error for c in kids if c.error]
    return Succeed(json.dumps(seen).encode())


def noop(step: Step) -> Any:
    """The benchmark's runner: a parent spawns ``int(payload)`` no-op children, then counts."""
    if step.headers.get("role") == "child":
        return Succeed(b"")
    if step.step_number == 0:
        return Spawn([b""] * int(step.payload or b"0"), then=b"", headers={"role": "child"})
    return Succeed(str(len(step.children or ())).encode())


def continue_noop(step: Step) -> Any:
    """The baseline's runner: one no-op step, like a child."""
    return Succeed(b"") if step.step_number == 0 else Continue(b"")
