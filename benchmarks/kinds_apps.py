"""No-op runners of each kind, for ``runner_kinds.py`` (importable by workers)."""

from __future__ import annotations

import msgspec

import journaled
from journaled import Step, Succeed


def noop(step: Step) -> Succeed:
    return Succeed(b"")


async def async_noop(step: Step) -> Succeed:
    return Succeed(b"")


def one(data: bytes) -> bytes:
    return b""


chain1 = journaled.chain(one)


class Item(msgspec.Struct):
    n: int
    name: str


@journaled.typed(Item)
def typed_noop(step: Step) -> Succeed:
    item: Item = step.input()
    return Succeed(item)


ALL = {"noop": noop, "async": async_noop, "chain": chain1, "typed": typed_noop}
