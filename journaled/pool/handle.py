"""The supervisor's handle on one worker process, and reading its results.

A ``Worker`` is one slot of the pool: the process behind it, our ends of
its pipes, the ``Sender`` thread that writes to it without ever blocking
the loop, and the steps sent to it with no result yet (``InFlight``).
``read_results`` drains its pipe and matches what came back to what was
sent. Apart from ``pool.py``, which starts, stops and kills the processes
and owns the cancel block, because a handle is shared by every executor
(``WorkerChannels``) and knows nothing of how its process was made.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from ..state import WorkerResult
from .frames import FrameBuffer
from .nowait import DIRECT_MAX, header, send_nowait, socket_of
from .wire import MemoPutMsg, Ready, ResultBatch, Revoked, from_worker_dec, to_worker_enc


class InFlight:
    """A step the supervisor sent to a worker and has no result for yet."""

    __slots__ = ("seq", "run_id", "attempt", "cancel_at")

    def __init__(self, seq: int, run_id: str, attempt: int) -> None:
        self.seq = seq
        self.run_id = run_id
        self.attempt = attempt
        self.cancel_at = 0.0  # monotonic deadline after which a cancelled step is killed


class Sender:
    """One thread per worker connection: sends what the loop could not write at once, in order.

    ``send`` writes a small message straight to the pipe when nothing is
    queued ahead of it and the socket has room (no thread hand-off, see
    ``nowait``); anything else (a big message, a full pipe, the rest of a
    partial write, everything behind it) goes to the thread, so the loop
    never blocks and messages leave in the order they were sent.
    """

    def __init__(self, conn: Connection, name: str) -> None:
        self.conn = conn
        self.sock = socket_of(conn)
        self.q: queue.SimpleQueue[bytes | memoryview | None] = queue.SimpleQueue()
        self.broken = False
        self._queued = 0  # pieces put; ``flush`` waits until ``_sent`` catches up
        self._sent = 0
        self._done = threading.Condition()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def send(self, data: bytes) -> None:
        """Send one message (framed as ``Connection.send_bytes`` does); never blocks."""
        if self.broken:
            return
        head = header(len(data))
        if self._queued == self._sent and len(data) <= DIRECT_MAX:
            # The thread is idle (it counts a piece sent only once written), so
            # nothing can be ahead of this one.
            frame = head + data
            try:
                n = send_nowait(self.sock, frame)
            except OSError:
                self.broken = True  # the worker is gone; its exit is seen by the loop
                return
            if n < len(frame):
                self._put(memoryview(frame)[n:])
            return
        self._put(head)
        self._put(data)

    def put(self, data: bytes) -> None:
        """The old name of ``send``."""
        self.send(data)

    def _put(self, piece: bytes | memoryview) -> None:
        self._queued += 1
        self.q.put(piece)

    def flush(self, timeout: float) -> bool:
        """Wait until every message sent so far has left for the pipe (or the peer died).

        Only failpoint runs call it, so that a kill aimed "after dispatch" lands
        after the bytes really left this process; the loop itself never waits
        on a worker. A direct write has left when ``send`` returns.
        """
        target = self._queued
        with self._done:
            return self._done.wait_for(lambda: self._sent >= target or self.broken, timeout)

    def _run(self) -> None:
        while True:
            data = self.q.get()
            if data is None:
                return
            try:
                self.sock.sendall(data)
            except (OSError, ValueError):
                self.broken = True  # the worker is gone; its exit is seen by the loop
                with self._done:
                    self._done.notify_all()
                return
            with self._done:
                self._sent += 1
                self._done.notify_all()

    def close(self) -> None:
        """Stop the thread; a send stuck on a dead peer is cut by shutting the socket."""
        self.q.put(None)
        self.thread.join(timeout=0.2)
        if self.thread.is_alive():
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.thread.join(timeout=2)
        self.sock.close()


class Worker:
    """The supervisor's handle on one worker process."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.proc: Any = None
        self.conn: Connection | None = None
        self.alive_w: Connection | None = None
        self.sender: Sender | None = None
        self.pidfd = -1
        self.last_pid: int | None = None
        self.outstanding: deque[InFlight] = deque()
        self.head_started = 0.0  # monotonic start of the step at the head of the queue
        self.avg_step = 0.0  # EWMA of step seconds, drives the batch depth
        self.avg_bytes = 0.0  # EWMA of payload bytes per step, caps the batch depth
        self.kill_reason = ""
        self.stopping = False
        self.ever_ran = False  # a result came back: the process got past start-up
        self.memo_puts: list[MemoPutMsg] = []
        self.revoking: set[int] = set()  # asked back with Revoke, no answer yet
        self.spawn_error = ""  # why the last start failed (a retry is pending)
        self.spawn_failures = 0
        self.steps_run = 0
        self._rsock: socket.socket | None = None  # a dup of conn's fd, read without blocking
        self._frames = FrameBuffer()  # bytes read from conn, not yet a whole message

    def take_messages(self) -> list[Any]:
        """Every whole message waiting on ``conn``, decoded; never blocks. EOFError: closed.

        One ``recv_into`` takes what waits (``frames``), not two reads a
        message, and a message half sent waits in the buffer for the rest
        (the fd stays readable until it comes) instead of blocking the loop.
        EOFError only when the peer closed and nothing whole was left.
        """
        sock = self._rsock
        if sock is None:
            assert self.conn is not None
            sock = self._rsock = socket_of(self.conn)
        fb = self._frames
        open_ = fb.drain(sock)
        out = fb.messages(from_worker_dec.decode)
        if not open_ and not out:
            raise EOFError
        return out

    def attach(self, proc: Any, conn: Connection | None, alive_w: Connection | None) -> None:
        """A fresh process behind this slot: nothing in flight, nothing learned yet."""
        self.proc, self.conn, self.alive_w = proc, conn, alive_w
        self._close_rsock()
        self.sender = Sender(conn, f"journaled-send-{self.slot}") if conn is not None else None
        self.last_pid = getattr(proc, "pid", None)
        self.outstanding.clear()
        self.kill_reason = ""
        self.stopping = False
        self.avg_step = 0.0
        self.ever_ran = False
        self.steps_run = 0  # steps this process ran (--max-steps-per-worker)
        self.memo_puts.clear()
        self.revoking.clear()

    def detach(self) -> None:
        """Stop the sender and close our ends of the pipes."""
        if self.sender is not None:
            self.sender.close()
            self.sender = None
        for c in (self.conn, self.alive_w):
            if c is not None:
                c.close()
        self.conn = self.alive_w = None
        self._close_rsock()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def _close_rsock(self) -> None:
        if self._rsock is not None:
            self._rsock.close()
            self._rsock = None
        self._frames = FrameBuffer()

    def post(self, msg: Any) -> None:
        """Queue one message for the worker; never blocks, never raises for a dead worker."""
        if self.sender is not None:
            self.sender.send(to_worker_enc.encode(msg))

    @property
    def pid(self) -> int | None:
        return getattr(self.proc, "pid", None) if self.proc is not None else None


def read_results(w: Worker, now: float) -> list[tuple[InFlight, WorkerResult]]:
    """Results waiting on ``w``'s pipe, matched to what was sent; EOFError if it died.

    Memo puts that arrive are left in ``w.memo_puts`` for the supervisor;
    steps a ``Revoke`` took back come out as ``revoked`` results.
    """
    assert w.conn is not None
    done: list[tuple[InFlight, WorkerResult]] = []
    busy = 0.0
    n_results = 0
    head = w.outstanding[0] if w.outstanding else None
    # EOFError only with nothing at all to read: a worker that exited right after
    # its last batch (as a stopped one does) has that batch kept; its sentinel
    # (or the EOF, next turn) reports the exit.
    for batch in w.take_messages():
        if type(batch) is ResultBatch:  # the common message first
            busy += batch.busy
            out = w.outstanding
            for seq, res in batch.items:
                # Results come back in send order, so the match is almost always the
                # head; a step answered out of order (skipped at a Stop that came in
                # mid-step) is found further in.
                if out and out[0].seq == seq:
                    item = out.popleft()
                else:
                    item = next((i for i in out if i.seq == seq), None)
                    if item is None:
                        continue
                    out.remove(item)
                done.append((item, res))
                if res.kind != "revoked":
                    n_results += 1
        elif isinstance(batch, MemoPutMsg):
            w.memo_puts.append(batch)
        elif isinstance(batch, Ready):
            w.ever_ran = True  # past start-up: its runner imported
        elif isinstance(batch, Revoked):
            w.revoking.clear()
            for seq in batch.seqs:
                item = next((i for i in w.outstanding if i.seq == seq), None)
                if item is not None:
                    w.outstanding.remove(item)
                    done.append((item, WorkerResult("revoked")))
    if done:
        w.ever_ran = True
        if not w.outstanding or w.outstanding[0] is not head:
            # A new head starts now; steps revoked from behind it leave its clock
            # (and so its step timeout) alone.
            w.head_started = now
    if n_results:
        # Time inside steps, not wall time: waiting on our own fsync must
        # not make tiny steps look long and shrink their batches.
        per = max(busy / n_results, 1e-6)
        w.avg_step = per if w.avg_step <= 0 else 0.7 * w.avg_step + 0.3 * per
    return done
