"""The messages on a worker's pipe, both ways (msgpack, never pickle).

::

    supervisor -> worker   DispatchBatch  CancelQueued  Revoke  MemoAck  Stop
    worker -> supervisor   ResultBatch    MemoPutMsg    Revoked  Ready

Batches are capped in bytes as well as in count (``BATCH_BYTES``): a pipe
never carries one giant message, and a single big item travels alone.
Values over the blob threshold do not travel at all: a ``BlobRef`` names
the durable blob the receiving side reads itself (and counts as small).
"""

from __future__ import annotations

from typing import Union

import msgspec

from ..api import Signal
from ..blobs import BlobRef, value_size
from ..state import WorkerResult

# Stop adding items to a batch once it holds this much payload; one item
# bigger than this goes alone.
BATCH_BYTES = 1 << 20


class Dispatch(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One leased step for a worker; its lease is already durable."""

    seq: int
    run_id: str
    step: int
    attempt: int
    payload: Union[bytes, BlobRef]  # a ref: the worker reads the blob itself
    headers: dict[str, str]
    signal: Union[Signal, None] = None
    memo: Union[dict[str, Union[bytes, BlobRef]], None] = None
    runner: str = ""  # the run's runner name ("": the default)
    # After a Spawn: [run_id, status, result (bytes or a ref), error] per child, in order.
    children: Union[list[tuple[str, str, Union[bytes, BlobRef, None], Union[str, None]]],
                    None] = None


class DispatchBatch(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="d"):
    items: list[Dispatch]


class CancelQueued(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="c"):
    """Skip a step queued on the worker; if it is already running, set its token."""

    seq: int


class Revoke(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="v"):
    """Give back these queued steps if they have not started; answered by ``Revoked``."""

    seqs: list[int]


class Stop(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="s"):
    """Finish the running step, skip the queued ones, exit."""


class MemoAck(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="m"):
    """The memo the running step put is durable."""

    seq: int


ToWorker = Union[DispatchBatch, CancelQueued, Revoke, Stop, MemoAck]


class ResultBatch(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="r"):
    items: list[tuple[int, WorkerResult]]
    busy: float = 0.0  # seconds spent inside steps for these results: drives batch depth


class MemoPutMsg(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="p"):
    """The running step ``seq`` stores a memo; the worker blocks until ``MemoAck``."""

    seq: int
    key: str
    value: Union[bytes, BlobRef]  # a ref: the worker wrote the blob (durably) first


class Revoked(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="k"):
    """The answer to ``Revoke``: these steps were taken off the queue unstarted."""

    seqs: list[int]


class Ready(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="y"):
    """The worker imported its runner and waits for steps: it got past start-up."""


FromWorker = Union[ResultBatch, MemoPutMsg, Revoked, Ready]

to_worker_enc = msgspec.msgpack.Encoder()
to_worker_dec = msgspec.msgpack.Decoder(ToWorker)
from_worker_dec = msgspec.msgpack.Decoder(FromWorker)


def result_size(res: WorkerResult) -> int:
    """Bytes a result adds to a batch (its payload and texts; a blob ref is small)."""
    return value_size(res.data) + len(res.error) + len(res.traceback)


def split_dispatches(items: list[Dispatch], cap: int = BATCH_BYTES) -> list[list[Dispatch]]:
    """Cut ``items`` into batches of at most ``cap`` payload bytes (a big item alone)."""
    out: list[list[Dispatch]] = []
    cur: list[Dispatch] = []
    size = 0
    for d in items:
        n = value_size(d.payload) + sum(value_size(v) for v in (d.memo or {}).values())
        if d.children:
            n += sum(value_size(c[2]) for c in d.children if c[2] is not None)
        if cur and size + n > cap:
            out.append(cur)
            cur, size = [], 0
        cur.append(d)
        size += n
    if cur:
        out.append(cur)
    return out
