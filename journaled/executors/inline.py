"""Run steps in the supervisor's own process, on the thread that asks (tests).

``journaled.testing`` drives a real supervisor (journal, state, leasing,
write-ahead commits) turn by turn on the test's thread; this executor is
its pool. A step leased to one of its virtual workers waits in a queue
until ``run_pending()`` is called, then runs right there: same thread, no
forkserver, so a breakpoint or a traceback in the runner is the test's own,
and module-level state the runner touches is the test's too.

It has the face every executor has (``journaled.pool.Pool``'s methods) and
the same messages semantics: results are answered in send order, a
cancelled step still queued comes back ``cancelled`` without running, a
``Stop`` hands back what was not started (``revoked``), a kill is a worker
death the supervisor sees through the worker's sentinel (a pipe closed
here), and ``step.memo.put`` returns only once the supervisor has made the
value durable (the ``pump`` callback runs supervisor turns meanwhile).

What it cannot do, by construction: kill a step that runs too long
(``step_timeout`` needs a worker process to kill) or run two steps at once.
"""

from __future__ import annotations

import functools
import os
import struct
import time
from collections import deque
from typing import Any, Callable

from ..api import (
    SLOT_SIZE,
    CancelToken,
    Children,
    Memo,
    Step,
    block_size,
    read_progress,
    write_progress,
)
from ..blobs import BlobStore
from ..errors import UnknownRunner
from ..pool import Dispatch, InFlight, MemoPutMsg, Worker, WorkerChannels
from ..pool.worker import resolve_runners, run_one
from ..state import WorkerResult

_U64 = struct.Struct("<Q")
DEPTH = 64  # steps leased ahead to the inline worker


class _InlineProc:
    """Stands in for a worker process: its sentinel is a pipe that closes when it 'dies'."""

    pid = None

    def __init__(self) -> None:
        self.sentinel, self._dead_w = os.pipe()  # readable (EOF) once _dead_w closes
        self.wake_r, self._wake_w = os.pipe()  # readable while results wait to be read
        os.set_blocking(self.wake_r, False)
        self.exitcode: int | None = None

    def ready(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def drain(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def die(self, code: int) -> None:
        if self._dead_w >= 0:
            self.exitcode = code
            os.close(self._dead_w)
            self._dead_w = -1

    def close(self) -> None:
        self.die(self.exitcode if self.exitcode is not None else 0)
        for fd in (self.sentinel, self.wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.sentinel = self.wake_r = self._wake_w = -1

    def is_alive(self) -> bool:
        return self._dead_w >= 0


class InlineExecutor(WorkerChannels):
    """Virtual workers whose steps run when ``run_pending()`` is called.

    ``after_step(step, result)`` (optional) is called after each step ran and
    before its result is handed to the supervisor; the harness uses it to
    crash at that point (the result is then never reported, as when a
    worker's supervisor is killed after the step's side effects).
    """

    def __init__(self, runner: Any, workers: int = 1, state_dir: Any = None,
                 blob_threshold: int | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.table = resolve_runners(runner)  # named runners (an App, a dict) or just one
        self.size = workers
        self.workers = [Worker(i) for i in range(workers)]
        # The cancel block's layout, in plain memory: tokens and progress as usual.
        self.buf: Any = memoryview(bytearray(block_size(workers)))
        self.stop_at = SLOT_SIZE * workers
        self.blobs = BlobStore(state_dir, blob_threshold) if state_dir is not None else None
        self._queued: dict[int, deque[Dispatch]] = {w.slot: deque() for w in self.workers}
        self._done: dict[int, list[tuple[int, WorkerResult]]] = {w.slot: []
                                                                 for w in self.workers}
        self._skip: set[int] = set()
        self._acks: set[int] = set()
        self.pump: Callable[[], None] | None = None  # runs a supervisor turn (memo puts)
        self.after_step: Callable[[Step, WorkerResult], None] | None = None
        self.steps_run = 0
        self._escaped: BaseException | None = None  # raised by the runner, for the caller

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for w in self.workers:
            self._spawn(w)

    def _spawn(self, w: Worker) -> None:
        base = w.slot * SLOT_SIZE
        self.buf[base:base + SLOT_SIZE] = bytes(SLOT_SIZE)
        w.attach(_InlineProc(), None, None)
        w.ever_ran = True  # nothing to import: a death is never a start-up failure
        self._queued[w.slot].clear()
        self._done[w.slot].clear()

    def respawn(self, w: Worker) -> None:
        self._spawn(w)

    def wait_objects(self) -> dict[Any, tuple[str, Worker]]:
        objs: dict[Any, tuple[str, Worker]] = {}
        for w in self.workers:
            p = w.proc
            if p is not None:
                objs[p.wake_r] = ("conn", w)
                objs[p.sentinel] = ("sentinel", w)
        return objs

    def close(self) -> None:
        for w in self.workers:
            if w.proc is not None:
                self.reap(w)

    # --------------------------------------------------------- the steps

    def send(self, w: Worker, items: list[Dispatch], now: float) -> None:
        super().send(w, items, now)  # the in-flight bookkeeping (w has no pipe to post to)
        if w.proc is not None and w.proc.is_alive():
            self._queued[w.slot].extend(items)

    def pending(self) -> int:
        """Steps sent and not run yet."""
        return sum(len(q) for q in self._queued.values())

    def run_pending(self) -> int:
        """Run every step sent so far, in order, on this thread; returns how many ran."""
        n = 0
        for w in self.workers:
            q = self._queued[w.slot]
            while q and w.proc is not None and w.proc.is_alive():
                item = q.popleft()
                n += self._run(w, item)
            self._exit_if_stopped(w)
        return n

    def _run(self, w: Worker, item: Dispatch) -> int:
        seq = item.seq
        if seq in self._skip:
            self._skip.discard(seq)
            self._answer(w, seq, WorkerResult("cancelled", error="cancelled before it started"))
            return 0
        slot = w.slot
        _U64.pack_into(self.buf, slot * SLOT_SIZE + 8, seq)  # running_seq
        step = Step(item.run_id, item.step, item.payload, item.headers, item.attempt,
                    CancelToken(self.buf, slot, seq, self.stop_at),
                    functools.partial(write_progress, self.buf, slot, seq), item.signal,
                    Memo(item.memo, functools.partial(self._put_memo, w, seq), self.blobs),
                    self.blobs,
                    None if item.children is None else Children(item.children, self.blobs))
        step.runner = self.table.name_of(item.runner)
        started = time.perf_counter()
        try:
            fn = self.table.get(item.runner)
        except UnknownRunner as e:  # as a worker does: served before, not any more
            res = WorkerResult("error", permanent=True, error=str(e))
        else:
            res = run_one(functools.partial(self._call, fn), step, self.blobs)
        busy = time.perf_counter() - started
        _U64.pack_into(self.buf, slot * SLOT_SIZE + 8, 0)
        escaped, self._escaped = self._escaped, None
        if escaped is not None:
            raise escaped  # the step's result is never reported: as a kill mid-step
        self.steps_run += 1
        if self.after_step is not None:
            self.after_step(step, res)  # may raise: the result is then never reported
        w.avg_step = busy if w.avg_step <= 0 else 0.7 * w.avg_step + 0.3 * busy
        self._answer(w, seq, res)
        return 1

    def _call(self, fn: Callable[[Step], Any], step: Step) -> Any:
        """The runner; Ctrl-C and pytest's own outcomes (``pytest.fail``, ``skip``) are
        the test's, not the step's: they leave the harness instead of becoming a retry."""
        try:
            return fn(step)
        except KeyboardInterrupt as e:
            self._escaped = e
            raise
        except BaseException as e:
            if any(c.__module__.startswith("_pytest") for c in type(e).__mro__):
                self._escaped = e
            raise

    def _answer(self, w: Worker, seq: int, res: WorkerResult) -> None:
        self._done[w.slot].append((seq, res))
        if w.proc is not None:
            w.proc.ready()

    def _put_memo(self, w: Worker, seq: int, key: str, value: Any) -> None:
        """Like a worker's: returns once the supervisor says the value is durable."""
        w.memo_puts.append(MemoPutMsg(seq, key, value))
        if w.proc is not None:
            w.proc.ready()
        for _ in range(10_000):
            if seq in self._acks:
                self._acks.discard(seq)
                return
            if self.pump is None:
                break
            self.pump()
        raise RuntimeError("the supervisor never acknowledged a memo put")

    def read(self, w: Worker, now: float) -> list[tuple[InFlight, WorkerResult]]:
        if w.proc is not None:
            w.proc.drain()
        done: list[tuple[InFlight, WorkerResult]] = []
        head = w.outstanding[0] if w.outstanding else None
        for seq, res in self._done[w.slot]:
            item = next((i for i in w.outstanding if i.seq == seq), None)
            if item is not None:
                w.outstanding.remove(item)
                done.append((item, res))
        self._done[w.slot].clear()
        if done and (not w.outstanding or w.outstanding[0] is not head):
            w.head_started = now
        self._exit_if_stopped(w)
        return done

    def ack_memo(self, w: Worker, seq: int) -> None:
        self._acks.add(seq)

    # ------------------------------------------- cancels, stops and kills

    def cancel(self, w: Worker, item: InFlight, grace: float, now: float) -> None:
        item.cancel_at = now + grace
        if any(d.seq == item.seq for d in self._queued[w.slot]):
            self._skip.add(item.seq)
        else:  # running now (a memo put's turn), or done and not yet read
            _U64.pack_into(self.buf, w.slot * SLOT_SIZE, item.seq)

    def stop(self, w: Worker) -> None:
        """Finish nothing more: what was not started is handed back, then the worker exits."""
        if w.proc is None or w.stopping:
            return
        w.stopping = True
        q = self._queued[w.slot]
        while q:
            self._answer(w, q.popleft().seq, WorkerResult("revoked"))
        self._exit_if_stopped(w)

    def _exit_if_stopped(self, w: Worker) -> None:
        if w.stopping and w.proc is not None and not self._queued[w.slot] \
                and not self._done[w.slot]:
            w.proc.die(0)

    def kill(self, w: Worker, reason: str) -> None:
        if w.proc is None:
            return
        w.kill_reason = w.kill_reason or reason
        w.proc.die(-9)

    def reap(self, w: Worker) -> int | None:
        proc, w.proc = w.proc, None
        code = None
        if proc is not None:
            proc.die(-9 if proc.exitcode is None else proc.exitcode)
            code = proc.exitcode
            proc.close()
        self._queued[w.slot].clear()
        self._done[w.slot].clear()
        w.detach()
        return code

    def death_reason(self, w: Worker, exitcode: int | None) -> str:
        why = f" ({w.kill_reason})" if w.kill_reason else ""
        return f"inline worker {w.slot} was killed{why}"

    # ------------------------------------------------------------- views

    def running_seq(self, w: Worker) -> int:
        return int(_U64.unpack_from(self.buf, w.slot * SLOT_SIZE + 8)[0])

    def progress(self, w: Worker) -> tuple[int, float, float | None, str]:
        return read_progress(self.buf, w.slot)

    def depth(self, w: Worker) -> int:
        # Steps leased ahead in one turn and run back to back by run_pending:
        # fewer turns (and syncs) per step, as a real worker's batch. They
        # still run one at a time, in lease order.
        return DEPTH

    def set_stopping(self) -> None:
        _U64.pack_into(self.buf, self.stop_at, 1)
