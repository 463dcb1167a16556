"""Runners for issue 14's runner tests: named runners, an App, chains, async, typed.

Each runner says who it is in its result, so a test sees which one served a run.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import msgspec

import journaled
from journaled import Continue, Step, StepError, Succeed

# ------------------------------------------------------------- named runners


def images(step: Step) -> Succeed:
    return Succeed(b"images:" + step.payload)


def arrays(step: Step) -> Succeed | Continue:
    if step.step_number == 0:
        return Continue(step.payload + b"+1")
    return Succeed(f"arrays:{step.step_number}:".encode() + step.payload + b":" +
                   step.runner.encode())


app = journaled.App()


@app.runner("thumbs")
def thumbs(step: Step) -> Succeed:
    return Succeed(b"thumbs:" + step.payload)


@app.runner()
def default(step: Step) -> Succeed:
    return Succeed(b"default:" + step.payload)


empty_app = journaled.App()

# -------------------------------------------------------------------- chains

CHAIN_LOG = "JOURNALED_TEST_CHAIN_LOG"  # a file each chain function appends its name to


def _log(name: str) -> None:
    path = os.environ.get(CHAIN_LOG)
    if path:
        with open(path, "a") as f:
            f.write(f"{name} {os.getpid()}\n")


def parse(data: bytes) -> bytes:
    _log("parse")
    return data.upper()


def flaky_double(data: bytes, step: Step) -> bytes:
    """Fails its first attempt (transient): the retry must run this function, not parse."""
    _log(f"double#{step.attempts}")
    if step.attempts == 1:
        raise StepError.transient("first try fails")
    return data + data


def finish(data: bytes) -> bytes:
    _log("finish")
    return b"done:" + data


pipeline = journaled.chain(parse, flaky_double, finish)


def slow_middle(data: bytes, step: Step) -> bytes:
    """Long enough for the test to kill -9 the supervisor while it runs (marks itself)."""
    _log(f"slow#{step.attempts}")
    mark = step.headers.get("mark")
    if mark:
        Path(mark).write_text(str(os.getpid()))
    if step.attempts == 1:
        time.sleep(30)
    return data + b"+slow"


crashy = journaled.chain(parse, slow_middle, finish)


def refuse(data: bytes) -> bytes:
    raise StepError.permanent(f"refused {data.decode()}")


refusing = journaled.chain(parse, refuse, finish)


class Order(msgspec.Struct):
    sku: str
    qty: int


class Priced(msgspec.Struct):
    sku: str
    qty: int
    total: float


def price(o: Order) -> Priced:
    return Priced(o.sku, o.qty, o.qty * 2.5)


def receipt(p: Priced) -> dict[str, object]:
    return {"sku": p.sku, "total": p.total}


typed_chain = journaled.chain(price, receipt)


async def a_fetch(data: bytes) -> bytes:
    await asyncio.sleep(0.01)
    return data + b"+fetched"


def a_store(data: bytes) -> bytes:
    return b"stored:" + data


async_chain = journaled.chain(a_fetch, a_store)

# --------------------------------------------------------------------- async

_loops: set[int] = set()


async def async_runner(step: Step) -> Succeed | Continue:
    """``app`` header picks the behaviour; results are JSON."""
    what = step.headers.get("app", "ok")
    mark = step.headers.get("mark")
    if mark:  # atomically: the test reads the pid as soon as the file exists
        Path(mark + ".tmp").write_text(str(os.getpid()))
        os.replace(mark + ".tmp", mark)
    loop = asyncio.get_running_loop()
    _loops.add(id(loop))
    if what == "await":  # yields: a cancel reaches it through the task
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            p = step.headers.get("seen")
            if p:
                Path(p).write_text("cancelled")
            raise
        return Succeed(b"slept")
    if what == "block":  # never yields: only the process kill can stop it
        time.sleep(30)
        return Succeed(b"blocked")
    if what == "fail":
        raise StepError.permanent("async says no")
    if step.step_number == 0:
        await asyncio.sleep(0)
        return Continue(step.payload + b"+0")
    return Succeed(json.dumps({"payload": step.payload.decode(), "pid": os.getpid(),
                               "loop": id(loop), "loops_seen": len(_loops)}).encode())


class AsyncObject:
    async def run_step(self, step: Step) -> Succeed:
        await asyncio.sleep(0)
        return Succeed(b"object:" + step.payload)


async_object = AsyncObject()

# --------------------------------------------------------------------- typed


@journaled.typed(Order)
def typed_runner(step: Step) -> Continue | Succeed:
    if step.step_number == 0:
        o: Order = step.input()
        return Continue(Priced(o.sku, o.qty, o.qty * 2.5))
    p = step.input(Priced)
    return Succeed({"sku": p.sku, "total": p.total, "step": step.step_number})


def bytes_runner(step: Step) -> Succeed:
    """Untyped: bytes in, bytes out, untouched."""
    return Succeed(step.payload[::-1])


multi = {"typed": typed_runner, "bytes": bytes_runner, "pipeline": pipeline}


def unencodable(step: Step) -> Continue:
    return Continue(object())


def echo_type(step: Step) -> Succeed:
    """What arrived, as msgpack: lets a test see a typed input decoded on demand."""
    return Succeed({"raw": step.payload, "as_list": step.input(list)})
