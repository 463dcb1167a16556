"""Worker processes, the pipes to them, and the shared-memory cancel block.

::

    supervisor                                   worker i (forkserver child)
    ----------                                   ---------------------------
    conn[i]  ==  DispatchBatch / CancelQueued / Stop  ==>  queue of leased steps
             <==  ResultBatch [(seq, WorkerResult)] ===    runs one step at a time
    alive[i] ---  never written; EOF = supervisor gone -->  watchdog thread exits
    sentinel[i]  <-- process exit (crash, kill, os._exit)
    shm slot i:  cancel seq (supervisor writes), running seq + progress (worker writes)

Workers never touch the journal: the supervisor leases steps durably first
and only then sends them here. Only bytes cross the pipes (msgpack); a
runner's exception crosses as text, never pickled.
"""

from __future__ import annotations

import functools
import importlib
import logging
import mmap
import multiprocessing
import os
import signal
import struct
import sys
import threading
import time
import traceback
from collections import deque
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Callable, Union

import msgspec

from . import failpoints
from .api import (
    REVOKED_OFFSET,
    SLOT_SIZE,
    Cancel,
    Cancelled,
    CancelToken,
    Continue,
    ContinueAfter,
    ContinueOnSignal,
    Fail,
    Memo,
    Signal,
    Step,
    StepError,
    Succeed,
    read_progress,
    write_progress,
)
from .state import WorkerResult

log = logging.getLogger("journaled.pool")

_U64 = struct.Struct("<Q")


class Dispatch(msgspec.Struct, frozen=True, array_like=True):
    """One leased step for a worker; its lease is already durable."""

    seq: int
    run_id: str
    step: int
    attempt: int
    payload: bytes
    headers: dict[str, str]
    signal: Union[Signal, None] = None
    memo: Union[dict[str, bytes], None] = None


class DispatchBatch(msgspec.Struct, frozen=True, array_like=True, tag="d"):
    items: list[Dispatch]


class CancelQueued(msgspec.Struct, frozen=True, array_like=True, tag="c"):
    """Skip a step queued on the worker but not started."""

    seq: int


class Stop(msgspec.Struct, frozen=True, array_like=True, tag="s"):
    """Finish the running step, skip the queued ones, exit."""


class MemoAck(msgspec.Struct, frozen=True, array_like=True, tag="m"):
    """The memo the running step put is durable."""

    seq: int


ToWorker = Union[DispatchBatch, CancelQueued, Stop, MemoAck]


class ResultBatch(msgspec.Struct, frozen=True, array_like=True, tag="r"):
    items: list[tuple[int, WorkerResult]]
    busy: float = 0.0  # seconds spent inside steps for these results: drives batch depth


class MemoPutMsg(msgspec.Struct, frozen=True, array_like=True, tag="p"):
    """The running step ``seq`` stores a memo; the worker blocks until ``MemoAck``."""

    seq: int
    key: str
    value: bytes


FromWorker = Union[ResultBatch, MemoPutMsg]

_to_worker_enc = msgspec.msgpack.Encoder()
_to_worker_dec = msgspec.msgpack.Decoder(ToWorker)
_from_worker_dec = msgspec.msgpack.Decoder(FromWorker)

# ----------------------------------------------------------------- worker side


def resolve_runner(spec: Any) -> Callable[[Step], Any]:
    """Turn an import string ``module:attr`` or a runner object into a callable."""
    if isinstance(spec, str):
        obj = load_import_string(spec)
    else:
        obj = spec
    if hasattr(obj, "run_step"):
        return obj.run_step
    return obj


def load_import_string(spec: str) -> Any:
    """Import ``module:attr`` (``attr`` may be dotted); ``ImportError`` says what was missing."""
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise ImportError(f"import string {spec!r} must look like 'module:attribute'")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and mod_name.startswith(e.name):
            raise ImportError(f"could not import module {mod_name!r} (run from the directory "
                              "that contains it)") from e
        raise
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"module {mod_name!r} has no attribute {attr!r}") from None
    if not callable(obj) and not hasattr(obj, "run_step"):
        raise ImportError(f"{spec!r} is neither callable nor has a run_step method")
    return obj


def to_result(out: Any) -> WorkerResult:
    """Map a runner's return value to the wire form; anything unexpected is permanent."""
    t = type(out)
    if t is Continue:
        if isinstance(out.payload, bytes):
            return WorkerResult("continue", out.payload)
    elif t is Succeed:
        if isinstance(out.result, bytes):
            return WorkerResult("succeed", out.result)
    elif t is ContinueAfter:
        if isinstance(out.payload, bytes):
            return WorkerResult("continue", out.payload, max(0.0, out.delay_seconds()) or 1e-9)
    elif t is ContinueOnSignal:
        if isinstance(out.payload, bytes) and isinstance(out.key, str) and out.key:
            return WorkerResult("continue", out.payload, max(0.0, out.timeout_seconds()),
                                key=out.key)
        if not (isinstance(out.key, str) and out.key):
            return WorkerResult("error", permanent=True,
                                error="ContinueOnSignal.key must be a non-empty str")
    elif t is Fail:
        return WorkerResult("fail", error=str(out.reason))
    elif t is Cancel:
        return WorkerResult("cancel", error=str(out.reason))
    else:
        return WorkerResult(
            "error", permanent=True,
            error=(f"runner returned {t.__name__}, expected Continue, ContinueAfter, "
                   "ContinueOnSignal, Succeed, Fail or Cancel"))
    field = "result" if t is Succeed else "payload"
    if t is ContinueOnSignal and isinstance(out.payload, bytes):
        field = "key"
    return WorkerResult("error", permanent=True,
                        error=f"{t.__name__}.{field} must be bytes, got "
                              f"{type(getattr(out, field)).__name__}")


def _user_traceback(e: BaseException) -> str:
    """The runner's traceback without our own calling frame on top."""
    tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
    return "".join(traceback.format_exception(type(e), e, tb))


def run_one(fn: Callable[[Step], Any], step: Step) -> WorkerResult:
    """Call the runner once; every exception becomes text."""
    try:
        return to_result(fn(step))
    except StepError as e:
        return WorkerResult("error", error=e.message, traceback=_user_traceback(e),
                            permanent=e.permanent)
    except Cancelled as e:
        return WorkerResult("cancelled", error=str(e) or "cancelled")
    except BaseException as e:  # noqa: BLE001 - the runner's failure is data, not ours
        return WorkerResult("error", error=f"{type(e).__name__}: {e}",
                            traceback=_user_traceback(e))


def _watch_supervisor(alive: Connection) -> None:
    """Runs in the worker: exit as soon as the supervisor's end of ``alive`` closes."""
    try:
        alive.recv_bytes()
    except (EOFError, OSError):
        pass
    # The supervisor is gone: a step still running here would be run again
    # after the restart, so stop now rather than become an orphan.
    os._exit(0)


def _attach(name: str) -> memoryview:
    """Map the supervisor's block without registering it with a resource tracker.

    ``SharedMemory(name)`` would register the block again from every worker,
    and the tracker then reports it leaked (bpo-38119); only its owner, the
    supervisor, registers and unlinks it.
    """
    import _posixshmem

    fd = _posixshmem.shm_open("/" + name.lstrip("/"), os.O_RDWR, mode=0o600)
    try:
        return memoryview(mmap.mmap(fd, os.fstat(fd).st_size))
    finally:
        os.close(fd)


def worker_main(slot: int, conn: Connection, alive: Connection, shm_name: str, runner: Any,
                lock: Any = None) -> None:
    """This runs in a separate process: one step at a time, results back in batches."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_supervisor, args=(alive,), daemon=True).start()
    buf = _attach(shm_name)
    fn = resolve_runner(runner)
    off = slot * SLOT_SIZE + 8
    revoked_off = slot * SLOT_SIZE + REVOKED_OFFSET
    queue: deque[Dispatch] = deque()
    skip: set[int] = set()
    out: list[tuple[int, WorkerResult]] = []
    enc = msgspec.msgpack.Encoder()
    acks: set[int] = set()

    stopping = False

    def receive() -> type:
        """Read one message from the supervisor and file it; returns its type."""
        nonlocal stopping
        try:
            msg = _to_worker_dec.decode(conn.recv_bytes())
        except (EOFError, OSError):
            os._exit(0)  # the supervisor is gone: exit rather than become an orphan
        t = type(msg)
        if t is DispatchBatch:
            queue.extend(msg.items)
        elif t is CancelQueued:
            skip.add(msg.seq)
        elif t is MemoAck:
            acks.add(msg.seq)
        else:  # Stop: the running step finishes, nothing queued runs
            stopping = True
            out.extend((d.seq, WorkerResult("revoked")) for d in queue)
            queue.clear()
        return t

    def put_memo(seq: int, key: str, value: bytes) -> None:
        """Block until the supervisor says the memo is durable; file what else arrives."""
        conn.send_bytes(enc.encode(MemoPutMsg(seq, key, value)))
        while seq not in acks:
            receive()
        acks.discard(seq)

    clock = time.perf_counter
    last_flush = clock()
    busy = 0.0
    while True:
        # Block only when there is nothing to run; otherwise just drain the pipe.
        while not queue or conn.poll(0):
            if receive() is Stop:
                break
        if stopping and not queue:
            if out:
                conn.send_bytes(enc.encode(ResultBatch(out, busy)))
            return
        item = queue.popleft()
        seq = item.seq
        # Claim the step under the slot lock: the supervisor revokes queued steps
        # under the same lock, so a step is either started here or taken back.
        if lock is not None:
            lock.acquire()
            revoked = seq <= _U64.unpack_from(buf, revoked_off)[0]
            if not revoked:
                _U64.pack_into(buf, off, seq)
            lock.release()
        else:
            revoked = False
        if revoked:
            out.append((seq, WorkerResult("revoked")))
        elif seq in skip:
            skip.discard(seq)
            out.append((seq, WorkerResult("cancelled", error="cancelled before it started")))
        else:
            started = clock()
            _U64.pack_into(buf, off, seq)
            if failpoints.ENABLED:
                failpoints.hit("worker.before_step")
            step = Step(item.run_id, item.step, item.payload, item.headers, item.attempt,
                        CancelToken(buf, slot, seq), _Progress(buf, slot, seq), item.signal,
                        Memo(item.memo, functools.partial(put_memo, seq)))
            res = run_one(fn, step)
            del step, item  # drop the runner's objects before waiting for more work
            if failpoints.ENABLED:
                failpoints.hit("worker.after_step")
            out.append((seq, res))
            _U64.pack_into(buf, off, 0)
            busy += clock() - started
        now = clock()
        # Batch results only while more queued work follows closely; a lone
        # result goes out at once so the supervisor can lease the next step.
        if not queue or now - last_flush > 0.001:
            conn.send_bytes(enc.encode(ResultBatch(out, busy)))
            out = []
            busy = 0.0
            last_flush = now


class _Progress:
    __slots__ = ("buf", "slot", "seq")

    def __init__(self, buf: Any, slot: int, seq: int) -> None:
        self.buf, self.slot, self.seq = buf, slot, seq

    def __call__(self, done: float, total: float | None, message: str) -> None:
        write_progress(self.buf, self.slot, self.seq, done, total, message)


# ------------------------------------------------------------- supervisor side


class InFlight:
    """A step the supervisor sent to a worker and has no result for yet."""

    __slots__ = ("seq", "run_id", "attempt", "sent_at", "cancel_at")

    def __init__(self, seq: int, run_id: str, attempt: int, sent_at: float) -> None:
        self.seq = seq
        self.run_id = run_id
        self.attempt = attempt
        self.sent_at = sent_at
        self.cancel_at = 0.0  # monotonic deadline after which a cancelled step is killed


class Worker:
    """The supervisor's handle on one worker process."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.proc: Any = None
        self.conn: Connection | None = None
        self.alive_w: Connection | None = None
        self.outstanding: deque[InFlight] = deque()
        self.head_started = 0.0  # monotonic start of the step at the head of the queue
        self.avg_step = 0.0  # EWMA of step seconds, drives the batch depth
        self.kill_reason = ""
        self.stopping = False
        self.ever_ran = False  # a result came back: the process got past start-up
        self.memo_puts: list[MemoPutMsg] = []
        self.revoked: set[int] = set()  # taken back; their "revoked" answers are dropped
        self.lock: Any = None

    def attach(self, proc: Any, conn: Connection, alive_w: Connection | None) -> None:
        """A fresh process behind this slot: nothing in flight, nothing learned yet."""
        self.proc, self.conn, self.alive_w = proc, conn, alive_w
        self.outstanding.clear()
        self.kill_reason = ""
        self.stopping = False
        self.avg_step = 0.0
        self.ever_ran = False
        self.revoked.clear()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


def _create_block(name: str | None, size: int) -> SharedMemory:
    """Create the cancel block, 0600, under a name the next supervisor can find.

    A supervisor killed with -9 leaves its block behind; a fixed name per
    state directory lets the next one unlink it first. The block is kept
    out of multiprocessing's resource tracker, which would otherwise warn
    about a "leak" after every such kill.
    """
    from multiprocessing import resource_tracker

    if name is not None:
        try:
            old = SharedMemory(name=name)
            resource_tracker.unregister(old._name, "shared_memory")  # type: ignore[attr-defined]
            old.close()
            old.unlink()
        except FileNotFoundError:
            pass
    shm = SharedMemory(name=name, create=True, size=size)
    resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    return shm


def read_results(w: Worker, now: float) -> list[tuple[InFlight, WorkerResult]]:
    """Results waiting on ``w``'s pipe, matched to what was sent; EOFError if it died.

    Memo puts that arrive are left in ``w.memo_puts`` for the supervisor.
    """
    assert w.conn is not None
    done: list[tuple[InFlight, WorkerResult]] = []
    busy = 0.0
    while True:
        try:
            raw = w.conn.recv_bytes()
        except EOFError:
            if not done and not w.memo_puts:
                raise
            # It exited right after its last batch (as a stopped worker does):
            # keep what it sent; its sentinel reports the exit next turn.
            break
        batch = _from_worker_dec.decode(raw)
        if type(batch) is MemoPutMsg:
            w.memo_puts.append(batch)
            if not w.conn.poll(0):
                break
            continue
        busy += batch.busy
        for seq, res in batch.items:
            if seq in w.revoked:
                w.revoked.discard(seq)  # given to another worker already
                continue
            # Results come back in send order, so the match is almost always the
            # head; a step answered out of order (skipped at a Stop that came in
            # mid-step) is found further in.
            if w.outstanding and w.outstanding[0].seq == seq:
                item = w.outstanding.popleft()
            else:
                item = next((i for i in w.outstanding if i.seq == seq), None)
                if item is None:
                    continue
                w.outstanding.remove(item)
            done.append((item, res))
        if not w.conn.poll(0):
            break
    if done:
        w.ever_ran = True
        # Time inside steps, not wall time: waiting on our own fsync must
        # not make tiny steps look long and shrink their batches.
        per = max(busy / len(done), 1e-6)
        w.avg_step = per if w.avg_step <= 0 else 0.7 * w.avg_step + 0.3 * per
        w.head_started = now
    return done


class Feeder:
    """Numbering, sending and reading steps: the part every executor shares."""

    _seq = 0

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def send(self, w: Worker, items: list[Dispatch], now: float) -> None:
        if not w.outstanding:
            w.head_started = now
        for d in items:
            w.outstanding.append(InFlight(d.seq, d.run_id, d.attempt, now))
        assert w.conn is not None
        w.conn.send_bytes(_to_worker_enc.encode(DispatchBatch(items)))

    def read(self, w: Worker, now: float) -> list[tuple[InFlight, WorkerResult]]:
        return read_results(w, now)

    def ack_memo(self, w: Worker, seq: int) -> None:
        if w.conn is not None:
            try:
                w.conn.send_bytes(_to_worker_enc.encode(MemoAck(seq)))
            except OSError:
                pass

    def stop(self, w: Worker) -> None:
        """Ask ``w`` to finish its current step and exit."""
        if w.conn is not None and not w.stopping:
            w.stopping = True
            try:
                w.conn.send_bytes(_to_worker_enc.encode(Stop()))
            except OSError:
                pass


class Pool(Feeder):
    """Starts, feeds, cancels, kills and replaces the worker processes.

    The shared-memory block has one ``SLOT_SIZE`` slot per worker; the
    pool owns it: it creates it 0600, unlinks it exactly once in
    ``close()``, and unlinks it if construction fails halfway.
    """

    _shm: SharedMemory | None = None
    workers: list[Worker] = []

    def __init__(self, runner: Any, workers: int, preload: list[str] | None = None,
                 max_depth: int = 256, batch_target: float = 0.01, name: str | None = None
                 ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.runner = runner
        self.size = workers
        self.max_depth = max_depth
        self.batch_target = batch_target
        self.ctx = multiprocessing.get_context("forkserver")
        if preload:
            self.ctx.set_forkserver_preload(preload)
        self._shm = _create_block(name, SLOT_SIZE * workers)
        try:
            self.buf = self._shm.buf
            self.buf[:] = bytes(SLOT_SIZE * workers)
            self.workers = [Worker(i) for i in range(workers)]
        except BaseException:
            self._unlink()
            raise

    def start(self) -> None:
        for w in self.workers:
            self._spawn(w)

    def _spawn(self, w: Worker) -> None:
        parent, child = self.ctx.Pipe(duplex=True)
        alive_r, alive_w = self.ctx.Pipe(duplex=False)
        _U64.pack_into(self.buf, w.slot * SLOT_SIZE, 0)
        _U64.pack_into(self.buf, w.slot * SLOT_SIZE + 8, 0)
        _U64.pack_into(self.buf, w.slot * SLOT_SIZE + REVOKED_OFFSET, 0)
        w.lock = self.ctx.Lock()
        proc = self.ctx.Process(target=worker_main, name=f"journaled-worker-{w.slot}",
                                args=(w.slot, child, alive_r, self._shm.name, self.runner,
                                      w.lock),
                                daemon=True)
        proc.start()
        # Our copies of the child's ends must go, or EOF never reaches either side.
        child.close()
        alive_r.close()
        w.attach(proc, parent, alive_w)

    def depth(self, w: Worker) -> int:
        """How many steps to keep leased on ``w``: deep for tiny steps, 1 for long ones."""
        if w.avg_step <= 0:
            return 1
        return max(1, min(self.max_depth, int(self.batch_target / w.avg_step)))


    def running_seq(self, w: Worker) -> int:
        return _U64.unpack_from(self.buf, w.slot * SLOT_SIZE + 8)[0]

    def progress(self, w: Worker) -> tuple[int, float, float | None, str]:
        return read_progress(self.buf, w.slot)

    def cancel(self, w: Worker, item: InFlight, grace: float, now: float) -> None:
        """Set the token of ``item``; a queued one is also told to skip it."""
        _U64.pack_into(self.buf, w.slot * SLOT_SIZE, item.seq)
        item.cancel_at = now + grace
        if w.outstanding and w.outstanding[0] is not item and w.conn is not None:
            try:
                w.conn.send_bytes(_to_worker_enc.encode(CancelQueued(item.seq)))
            except OSError:
                pass

    def revoke_queued(self, w: Worker) -> list[InFlight]:
        """Take back the steps queued behind ``w``'s running one; returns them.

        Only while ``w`` is running its head step: anything after it has not
        started, and the slot lock makes sure it will not (the worker checks
        the revoked mark under the same lock before it starts a step).
        """
        if w.lock is None or len(w.outstanding) < 2:
            return []
        base = w.slot * SLOT_SIZE
        with w.lock:
            if _U64.unpack_from(self.buf, base + 8)[0] != w.outstanding[0].seq:
                return []  # between steps: results may be on their way
            taken = list(w.outstanding)[1:]
            _U64.pack_into(self.buf, base + REVOKED_OFFSET, taken[-1].seq)
        head = w.outstanding.popleft()
        w.outstanding.clear()
        w.outstanding.append(head)
        w.revoked.update(i.seq for i in taken)
        return taken

    def kill(self, w: Worker, reason: str) -> None:
        if w.proc is not None and w.proc.is_alive():
            w.kill_reason = w.kill_reason or reason
            try:
                os.kill(w.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def reap(self, w: Worker) -> int | None:
        """Collect a dead worker; returns its exit code."""
        code = None
        proc, w.proc = w.proc, None  # other threads read w.pid: never a closed process
        if proc is not None:
            proc.join(timeout=1)
            code = proc.exitcode
            if code is not None:
                proc.close()
        for c in (w.conn, w.alive_w):
            if c is not None:
                c.close()
        w.conn = w.alive_w = None
        return code

    def respawn(self, w: Worker) -> None:
        self._spawn(w)

    def wait_objects(self) -> dict[Any, tuple[str, Worker]]:
        objs: dict[Any, tuple[str, Worker]] = {}
        for w in self.workers:
            if w.conn is not None:
                objs[w.conn] = ("conn", w)
                objs[w.proc.sentinel] = ("sentinel", w)
        return objs

    def close(self, timeout: float = 2.0) -> None:
        """Kill every worker and free the shared memory; safe on a half-built pool."""
        for w in self.workers:
            if w.proc is not None:
                self.kill(w, "shutdown")
        for w in self.workers:
            if w.proc is not None:
                self.reap(w)
        self._unlink()

    def _unlink(self) -> None:
        shm, self._shm = self._shm, None
        if shm is not None:
            try:
                self.buf = None
                shm.close()
            except BufferError:
                pass
            try:
                import _posixshmem

                _posixshmem.shm_unlink(shm._name)  # type: ignore[attr-defined]
            except FileNotFoundError:
                pass

