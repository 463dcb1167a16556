"""Messages written straight to a worker's pipe keep their order and never block.

A small message goes out with ``MSG_DONTWAIT`` when nothing is queued ahead
of it; what does not fit (a full pipe, the tail of a partial write, a big
message) goes to the sender thread. These tests fill the pipe on purpose so
both paths and the hand-over between them are taken, at several sizes.
"""

from __future__ import annotations

import os
import threading
from multiprocessing.connection import Pipe

import pytest

from journaled.pool.nowait import DIRECT_MAX
from journaled.pool.pool import Sender


def _payload(i: int, size: int) -> bytes:
    head = i.to_bytes(4, "big")
    return head + bytes((i + k) % 251 for k in range(min(size, 512))) * (max(size, 1) // 512 + 1)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("size", [100, 4096, DIRECT_MAX - 8, DIRECT_MAX + 1, 1 << 20])
def test_sends_never_block_on_a_full_pipe_and_arrive_whole_in_order(size):
    ours, theirs = Pipe(duplex=True)
    sender = Sender(ours, "test-send")
    try:
        n = max(8, (4 << 20) // size)  # far more than a socket buffer holds
        sent = [_payload(i, size)[:size] for i in range(n)]
        # Nobody reads yet: a blocking write would hang here (and time the test out).
        for data in sent:
            sender.send(data)
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.extend(theirs.recv_bytes() for _ in sent))
        reader.start()
        reader.join(60)
        assert not reader.is_alive(), f"only {len(got)} of {n} messages arrived"
        assert [len(g) for g in got] == [len(s) for s in sent]
        assert got == sent, "a message arrived out of order or torn"
        assert sender.flush(5)
    finally:
        sender.close()
        ours.close()
        theirs.close()


@pytest.mark.timeout(60)
def test_a_send_to_a_dead_peer_marks_the_sender_broken_instead_of_raising():
    ours, theirs = Pipe(duplex=True)
    sender = Sender(ours, "test-send")
    try:
        theirs.close()
        for _ in range(64):
            sender.send(b"x" * 1000)
        assert sender.broken
    finally:
        sender.close()
        ours.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("size", [100, 4096, 60 << 10, 1 << 20])
def test_a_burst_of_runs_through_the_pool_comes_back_intact(runtime, size):
    """Many leases at once (deep batches, a pipe that fills) and results of the same size."""
    rt = runtime(workers=2)
    inputs = [os.urandom(size) for _ in range(40)]
    ids = rt.submit_many(inputs)  # echo: each result is its input
    for rid, data in zip(ids, inputs, strict=True):
        out = rt.wait(rid, 120)
        assert out.status.value == "succeeded", out
        assert rt.result(rid) == data
