"""The harness runs what ``journaled run`` runs: named runners of an ``App``, a fan-out
with its fan-in, an async runner and a typed one, all inline on the fake clock."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

import journaled
from journaled import ContinueAfter, Spawn, Succeed
from journaled.testing import Harness

app = journaled.App()


@app.runner("split")
def split(step):  # type: ignore[no-untyped-def]
    if step.headers.get("role") == "child":
        return Succeed(step.payload.upper())
    if step.step_number == 0:
        return Spawn([w.encode() for w in step.payload.decode().split()], then=b"",
                     headers={"role": "child"})
    return Succeed(b" ".join(c.result for c in step.children))


@app.runner("later")
async def later(step):  # type: ignore[no-untyped-def]
    await asyncio.sleep(0)
    if step.step_number == 0:
        return ContinueAfter(step.payload + b"+", 3600)
    return Succeed(step.payload + step.runner.encode())


class Order(msgspec.Struct):
    sku: str
    qty: int


@app.runner("orders")
@journaled.typed(Order)
def orders(step):  # type: ignore[no-untyped-def]
    o = step.input(Order)
    return Succeed(f"{o.sku}x{o.qty}".encode())


@pytest.mark.timeout(60)
def test_named_runners_spawn_async_and_typed_runners_in_the_harness():
    with Harness(app) as h:
        words = h.submit(b"map reduce on one machine", runner="split")
        wait = h.submit(b"in", runner="later")
        good = h.submit(msgspec.msgpack.encode(Order("bolt", 3)), runner="orders")
        bad = h.submit(msgspec.msgpack.encode({"sku": "nut", "qty": "many"}), runner="orders")
        h.run_until_idle()
        assert h.result(words) == b"MAP REDUCE ON ONE MACHINE"
        assert h.status(wait).status.value == "waiting", "an hour-long delay has not passed"
        h.advance(3600)
        assert h.result(wait) == b"in+later", "step.runner names the runner serving the run"
        assert h.result(good) == b"boltx3"
        out = h.status(bad)
        assert out.status.value == "failed" and "qty" in (out.error or "")
        with pytest.raises(journaled.errors.UnknownRunner):
            h.submit(b"", runner="nope")


def _touch(step):  # type: ignore[no-untyped-def]
    return Succeed(step.payload)


@pytest.mark.timeout(60)
def test_limits_and_keys_in_the_harness_hold_like_a_supervisor():
    with Harness(_touch, limits={"gpu": 1}) as h:
        ids = [h.submit(b"%d" % i, key="big", resources={"gpu": 1}) for i in range(4)]
        ids += [h.submit(b"s", key="small", resources={"gpu": 1})]
        h.run_until_idle()
        order = [c.run_id for c in h.steps()]
        assert sorted(order) == sorted(ids)
        assert order.index(ids[4]) <= 2, f"keys take turns: {order}"
        with pytest.raises(journaled.errors.OverLimit):
            h.submit(b"", resources={"gpu": 2})


@pytest.mark.timeout(60)
def test_a_rate_in_the_harness_counts_fake_seconds():
    with Harness(_touch, rates={"slow": 2.0}) as h:
        slow = [h.submit(b"%d" % i, key="slow") for i in range(8)]
        fast = [h.submit(b"f%d" % i, key="fast") for i in range(3)]
        h.run_until_idle()
        first = {c.run_id for c in h.steps()}
        assert set(fast) <= first, "another key is not held back by this one's rate"
        burst = len(first & set(slow))
        assert 1 <= burst <= 2, f"2/s lets a burst of at most 2 through, ran {burst}"
        assert h.advance(0.1) == 0, "no token yet a tenth of a second later"
        h.advance(0.5)
        assert len({c.run_id for c in h.steps()} & set(slow)) == burst + 1
        h.advance(10)  # each token's time is visited in turn, not only the end (burst of 2)
        assert all(h.status(r).status.value == "succeeded" for r in slow + fast)
        with pytest.raises(ValueError, match="rate"):
            Harness(_touch, rates={"slow": 0})
