"""Answers from a thread that finds the server's pass lock taken: its holder sends them.

A real ``DoorServer`` (inline, as the supervisor runs it) on a real socket,
with the test standing in for the loop: no supervisor, so the moment the
lock is held is the test's to choose.
"""

from __future__ import annotations

import select
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from journaled.protocol import VERSION, Hello, Ok, Put, Welcome, frame, reply_decoder
from journaled.server import DoorServer


def _read_one(sock: socket.socket, timeout: float) -> Any:
    """One whole frame from ``sock`` within ``timeout`` s, decoded; None if none came."""
    if not select.select([sock], [], [], timeout)[0]:
        return None
    data = sock.recv(1 << 16)
    size = int.from_bytes(data[:4], "big")
    assert len(data) == 4 + size, "one frame at a time here"
    return reply_decoder.decode(data[4:])


@pytest.mark.timeout(30)
def test_an_answer_queued_while_the_lock_is_held_goes_out_as_the_holder_lets_go(
        tmp_path: Path) -> None:
    got: list[tuple[int, Any]] = []
    server = DoorServer(tmp_path / "s.sock", got.extend, lambda gone: None, lambda r: None,
                        inline=True)
    server.start()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(tmp_path / "s.sock"))
        client.sendall(frame(Hello(VERSION, 1, True, True)))
        for _ in range(50):
            server.serve_now()
            welcome = _read_one(client, 0.05)
            if welcome is not None:
                break
        assert type(welcome) is Welcome
        client.sendall(frame(Put(7, "r-1", b"", 1.0)))
        for _ in range(50):
            server.serve_now()
            if got:
                break
        [(cid, put)] = got
        assert put == Put(7, "r-1", b"", 1.0)

        server._lock.acquire()  # the loop, in a pass
        other = threading.Thread(target=server.reply, args=(cid, Ok(7)))
        other.start()
        other.join(5)
        assert not other.is_alive(), "a reply never waits for the lock"
        assert _read_one(client, 0.2) is None, "queued for the holder, not sent past its lock"
        server._unlock()
        assert _read_one(client, 5) == Ok(7), "sent by the holder as it let go"
        assert not select.select([server._wake_r], [], [], 0)[0], "no wake-up spent on it"
    finally:
        client.close()
        server.close()
