"""The worker process: everything a worker imports, and nothing of the supervisor side.

Three threads, so no pipe can fill up with both ends waiting on each other
(the CPython process pool's rule: a manager never blocks on a worker)::

    reader  : conn.recv_bytes() forever -> queue / skips / acks / revokes
    main    : pops one step at a time, runs it, files its result
    sender  : results (batched, capped in bytes) and control answers -> conn

A small result due at once (nothing else queued here) is written by the
main thread itself when the pipe has room and the sender is idle, which
saves a thread hand-off per step; what does not fit goes to the sender,
ahead of anything later (``nowait``).

The reader never waits for anything but the pipe, so the supervisor's
sends always drain, even while this process is in the middle of a big
``send_bytes`` of its own. Which queued step runs and which is revoked or
skipped is decided under one lock, so a step is either started here or
handed back, never both.
"""

from __future__ import annotations

import faulthandler
import functools
import mmap
import os
import signal
import struct
import threading
import time
import traceback
from collections import deque
from multiprocessing.connection import Connection
from types import CoroutineType
from typing import Any, Callable

from .. import failpoints
from ..api import (
    SLOT_SIZE,
    Cancel,
    Cancelled,
    CancelToken,
    Children,
    Continue,
    ContinueAfter,
    ContinueOnSignal,
    Fail,
    Memo,
    Spawn,
    Step,
    StepError,
    Succeed,
    write_progress,
)
from ..app import RunnerTable
from ..blobs import BlobRef, BlobStore, as_bytes_view
from ..errors import BlobMissing, InputTooLarge, UnknownRunner
from ..limits import MAX_VALUE, check_size, cut_text
from ..state import WorkerResult
from ..typed import encode_outcome
from .aloop import run_async
from .frames import FrameBuffer
from .hygiene import apply_in_worker
from .nowait import DIRECT_MAX, header, send_nowait, socket_of
from .runners import (  # noqa: F401 - re-exported: callers import these from here
    load_import_string,
    resolve_runner,
    resolve_runners,
)
from .wire import (
    BATCH_BYTES,
    CancelQueued,
    Dispatch,
    DispatchBatch,
    MemoAck,
    MemoPutMsg,
    Ready,
    ResultBatch,
    Revoke,
    Revoked,
    result_size,
    to_worker_dec,
)

_U64 = struct.Struct("<Q")
HOLD = 0.001  # results wait at most this long for company before they are sent

# ------------------------------------------------------------------ results


def _too_large(e: InputTooLarge) -> WorkerResult:
    return WorkerResult("error", permanent=True, error=str(e))


_BYTES_LIKE = (bytes, bytearray, memoryview)


def _value(what: str, data: Any, blobs: BlobStore | None) -> bytes | BlobRef:
    """Bytes for the wire, or the ref of the blob written (durably) for a big value.

    With a blob store, anything over its threshold goes out of line and the
    inline limit does not apply (a blob is bounded by the disk); without one
    (no state directory, a Dask worker) ``limits.MAX_VALUE`` still does.
    """
    if type(data) is not bytes:
        data = as_bytes_view(what, data)  # len() of an array's view counts rows, not bytes
    if blobs is not None and len(data) > blobs.threshold:
        return blobs.put(data)  # durable before the result that names it is sent
    check_size(what, data)
    return data if type(data) is bytes else bytes(data)


def to_result(out: Any, blobs: BlobStore | None = None) -> WorkerResult:
    """Map a runner's return value to the wire form; anything unexpected is permanent.

    A payload or result over the blob threshold is written as a blob here, in
    the worker, and only its ref goes back; without a blob store one over
    ``limits.MAX_VALUE`` is a permanent error: it must never reach the journal.
    """
    t = type(out)
    if t is Succeed or t is Continue:  # the common ends, bytes small enough to stay inline
        v = out.result if t is Succeed else out.payload
        if type(v) is bytes and len(v) <= (MAX_VALUE if blobs is None
                                           else min(MAX_VALUE, blobs.threshold)):
            return WorkerResult("succeed" if t is Succeed else "continue", v)
    try:
        out = encode_outcome(out)  # a typed payload or result becomes msgpack bytes
        t = type(out)
        if t is Continue:
            if isinstance(out.payload, _BYTES_LIKE):
                return WorkerResult("continue", _value("Continue.payload", out.payload, blobs))
        elif t is Succeed:
            if isinstance(out.result, _BYTES_LIKE):
                return WorkerResult("succeed", _value("Succeed.result", out.result, blobs))
        elif t is ContinueAfter:
            if isinstance(out.payload, _BYTES_LIKE):
                return WorkerResult("continue",
                                    _value("ContinueAfter.payload", out.payload, blobs),
                                    max(0.0, out.delay_seconds()) or 1e-9)
        elif t is ContinueOnSignal:
            if isinstance(out.payload, _BYTES_LIKE) and isinstance(out.key, str) and out.key:
                return WorkerResult("continue",
                                    _value("ContinueOnSignal.payload", out.payload, blobs),
                                    max(0.0, out.timeout_seconds()), key=out.key)
            if not (isinstance(out.key, str) and out.key):
                return WorkerResult("error", permanent=True,
                                    error="ContinueOnSignal.key must be a non-empty str")
        elif t is Spawn:
            from .spawn import spawn_result

            return spawn_result(out, lambda what, data: _value(what, data, blobs))
        elif t is Fail:
            return WorkerResult("fail", error=cut_text(str(out.reason)))
        elif t is Cancel:
            return WorkerResult("cancel", error=cut_text(str(out.reason)))
        else:
            return WorkerResult(
                "error", permanent=True,
                error=(f"runner returned {t.__name__}, expected Continue, ContinueAfter, "
                       "ContinueOnSignal, Spawn, Succeed, Fail or Cancel"))
    except InputTooLarge as e:
        return _too_large(e)
    except TypeError as e:  # a buffer numpy cannot flatten: no retry can fix it
        return WorkerResult("error", permanent=True, error=str(e))
    field = "result" if t is Succeed else "payload"
    if t is ContinueOnSignal and isinstance(out.payload, _BYTES_LIKE):
        field = "key"
    return WorkerResult("error", permanent=True,
                        error=f"{t.__name__}.{field} must be bytes, got "
                              f"{type(getattr(out, field)).__name__}")


def _user_traceback(e: BaseException) -> str:
    """The runner's traceback without our own calling frame on top, cut to size."""
    tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
    return cut_text("".join(traceback.format_exception(type(e), e, tb)))


def run_one(fn: Callable[[Step], Any], step: Step, blobs: BlobStore | None = None
            ) -> WorkerResult:
    """Call the runner once; every exception (a failed blob write too) becomes text."""
    try:
        out = fn(step)
        if type(out) is CoroutineType:  # an async runner: on this process's event loop
            out = run_async(out, step.cancel_token)
        return to_result(out, blobs)
    except StepError as e:
        return WorkerResult("error", error=cut_text(e.message), traceback=_user_traceback(e),
                            permanent=bool(e.permanent))
    except Cancelled as e:
        return WorkerResult("cancelled", error=cut_text(str(e)) or "cancelled")
    except InputTooLarge as e:  # a memo put over the limit: retrying cannot help
        return WorkerResult("error", error=str(e), traceback=_user_traceback(e), permanent=True)
    except BlobMissing as e:  # its payload or memo blob is gone: no retry brings it back
        return WorkerResult("error", error=str(e), traceback=_user_traceback(e), permanent=True)
    except BaseException as e:  # noqa: BLE001 - the runner's failure is data, not ours
        return WorkerResult("error", error=cut_text(f"{type(e).__name__}: {e}"),
                            traceback=_user_traceback(e))


# ------------------------------------------------------------ process set-up


def quiet_signals() -> None:
    """Ignore SIGINT and SIGTERM: a service manager signals the whole process group,
    and the supervisor drains and stops its workers itself (they exit on pipe EOF)."""
    # Inherited already from a forkserver that imported pool.quiet; set again
    # for a forkserver someone else started first.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def apply_environment(env: dict[str, str] | None, state_dir: str | None) -> None:
    """The supervisor's environment as of this spawn, not the forkserver's stale one."""
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    if state_dir is not None:
        # Runners that talk back (fan-out submitting child runs) find their state here.
        os.environ["JOURNALED_STATE"] = state_dir


_fault_file: Any = None  # kept open for faulthandler for the life of the process


def enable_faulthandler(path: str | None) -> None:
    """Crash tracebacks (SIGSEGV, SIGABRT, ...) go to ``path`` for the death message."""
    global _fault_file
    if path is None:
        return
    try:
        _fault_file = open(path, "a")  # noqa: SIM115 - must outlive this function
        faulthandler.enable(file=_fault_file, all_threads=True)
    except OSError:
        pass


def _attach(path: str) -> memoryview:
    """Map the supervisor's cancel block (a plain file; no resource tracker involved)."""
    fd = os.open(path, os.O_RDWR)
    try:
        return memoryview(mmap.mmap(fd, os.fstat(fd).st_size))
    finally:
        os.close(fd)


def _watch_supervisor(alive: Connection) -> None:
    """Exit as soon as the supervisor's end of ``alive`` closes."""
    try:
        alive.recv_bytes()
    except (EOFError, OSError):
        pass
    # The supervisor is gone: a step still running here would be run again
    # after the restart, so stop now rather than become an orphan.
    os._exit(0)


def worker_main(slot: int, conn: Connection, alive: Connection, block: str, runner: Any,
                env: dict[str, str] | None = None, state_dir: str | None = None,
                fault_path: str | None = None, stop_at: int = -1) -> None:
    """This runs in a separate process: one step at a time, results back in batches."""
    quiet_signals()
    apply_environment(env, state_dir)
    enable_faulthandler(fault_path)
    threading.Thread(target=_watch_supervisor, args=(alive,), daemon=True,
                     name="journaled-watchdog").start()
    buf = _attach(block)
    fn = resolve_runners(runner)
    apply_in_worker()  # after the runner's imports: pin the CPU, size loaded BLAS pools
    # Blobs of this state directory; the threshold comes from the supervisor
    # (JOURNALED_BLOB_THRESHOLD in the environment it gave us).
    blobs = BlobStore(state_dir) if state_dir is not None else None
    WorkerLoop(slot, conn, buf, fn, stop_at, blobs).run()


# ----------------------------------------------------------------- the loop


class WorkerLoop:
    """The state the three threads share, guarded by one condition variable."""

    def __init__(self, slot: int, conn: Connection, buf: Any,
                 fn: Callable[[Step], Any] | RunnerTable, stop_at: int = -1,
                 blobs: BlobStore | None = None) -> None:
        # Runners by name (one runner: a table of one, the default).
        self.table = fn if isinstance(fn, RunnerTable) else RunnerTable({"default": fn})
        self.slot, self.conn, self.buf, self.stop_at = slot, conn, buf, stop_at
        self.blobs = blobs
        self.cancel_off = slot * SLOT_SIZE
        self.run_off = slot * SLOT_SIZE + 8
        # One lock, two conditions: the main thread waits on ``cv`` (work, memo acks),
        # the sender on ``scv`` (something to send), so a batch arriving wakes the
        # main thread only and a held result wakes the sender only: a wake that finds
        # nothing to do costs a context switch with the GIL held (the worker's biggest
        # per-batch cost for tiny steps).
        # Held as ``self.lock`` itself where no wait or notify is needed: the C lock's
        # own enter and exit, not the Condition's Python-level wrappers.
        lock = self.lock = threading.RLock()
        self.cv = threading.Condition(lock)
        self.scv = threading.Condition(lock)
        self.sender_timed = False  # the sender waits with a deadline (it wakes by itself)
        self.queue: deque[Dispatch] = deque()
        self.skip: set[int] = set()
        self.acks: set[int] = set()
        self.running = 0
        self.stopping = False
        self.finished = False  # the main thread is done: the sender flushes and exits
        # The outbox: ("r", seq, result, busy, size) entries and control messages, in order.
        self.outbox: list[Any] = []
        self.out_bytes = 0
        self.held_since = 0.0
        self.urgent = False  # a control message waits: send at once
        self.sock = socket_of(conn)  # the main thread's direct writes (MSG_DONTWAIT)
        self.sending = False  # one writer at a time: the sender or the main thread
        self.rest: memoryview | None = None  # a direct write's unsent tail: goes first

    # ----------------------------------------------------- reader thread

    def read_forever(self) -> None:
        # One recv_into takes every message waiting (``frames``): one read and one
        # wake of the main thread for all of them, not two reads a message.
        sock = socket_of(self.conn)
        fb = FrameBuffer()
        lock = self.lock
        while True:
            try:
                n = fb.fill(sock)
            except OSError:
                n = 0
            if n == 0:
                os._exit(0)  # the supervisor is gone: exit rather than become an orphan
            msgs = fb.messages(to_worker_dec.decode)
            if not msgs:
                continue  # the rest of a message is on its way
            with lock:
                held = len(self.outbox)
                for msg in msgs:
                    self._file(msg)
                self.cv.notify_all()  # the main thread: work, a stop, a memo ack
                if len(self.outbox) != held:
                    self.scv.notify_all()  # an answer to send (Revoked, revoked results)

    def _file(self, msg: Any) -> None:
        t = type(msg)
        if t is DispatchBatch:
            self.queue.extend(msg.items)
        elif t is CancelQueued:
            if msg.seq == self.running:
                # It started before the message came: cancel it through its own
                # token (it is this slot's running step, nobody else's).
                _U64.pack_into(self.buf, self.cancel_off, msg.seq)
            elif any(d.seq == msg.seq for d in self.queue):
                self.skip.add(msg.seq)
        elif t is Revoke:
            want = set(msg.seqs)
            taken = [d.seq for d in self.queue if d.seq in want]
            if taken:
                gone = set(taken)
                self.queue = deque(d for d in self.queue if d.seq not in gone)
                self.skip.difference_update(gone)
            self._control(Revoked(taken))
        elif t is MemoAck:
            self.acks.add(msg.seq)
        else:  # Stop: the running step finishes, nothing queued runs
            self.stopping = True
            for d in self.queue:
                self._result(d.seq, WorkerResult("revoked"), 0.0)
            self.queue.clear()

    # ------------------------------------------------------- outbox (under cv)

    def _result(self, seq: int, res: WorkerResult, busy: float) -> None:
        if not self.outbox:
            self.held_since = time.perf_counter()
        n = result_size(res)
        self.outbox.append(("r", seq, res, busy, n))
        self.out_bytes += n

    def _control(self, msg: Any) -> None:
        self.outbox.append(msg)
        self.urgent = True

    def _due(self) -> float:
        """Seconds until the outbox should go (0: now); call under cv with a non-empty outbox."""
        if self.urgent or self.finished or not self.queue or self.out_bytes >= BATCH_BYTES:
            return 0.0
        return self.held_since + HOLD - time.perf_counter()

    # ------------------------------------------------------ sender thread

    def send_forever(self) -> None:
        enc_send = self.conn.send_bytes
        from msgspec.msgpack import Encoder

        enc = Encoder().encode
        while True:
            with self.lock:
                while True:
                    if self.rest is not None and not self.sending:
                        break
                    if self.sending:
                        self.scv.wait()  # the main thread is writing
                    elif self.outbox:
                        left = self._due()
                        if left <= 0:
                            break
                        self.sender_timed = True
                        self.scv.wait(left)
                        self.sender_timed = False
                    elif self.finished:
                        return
                    else:
                        self.scv.wait()
                rest, self.rest = self.rest, None
                entries: list[Any] = []
                if rest is None:
                    entries, self.outbox = self.outbox, []
                    self.out_bytes = 0
                    self.urgent = False
                self.sending = True
            try:
                if rest is not None:
                    self.sock.sendall(rest)
                for msg in _batches(entries):
                    enc_send(enc(msg))
            except OSError:
                os._exit(0)  # the supervisor is gone
            with self.lock:
                self.sending = False  # nobody waits for this: the main thread only checks it

    def _send_direct(self, entries: list[Any], enc: Callable[[Any], bytes]) -> None:
        """Write ``entries`` from the main thread without blocking (``sending`` is ours)."""
        frame = b"".join(header(len(b)) + b for b in map(enc, _batches(entries)))
        try:
            n = send_nowait(self.sock, frame)
        except OSError:
            os._exit(0)  # the supervisor is gone
        with self.lock:
            self.sending = False
            if n < len(frame):
                self.rest = memoryview(frame)[n:]  # the sender writes it before anything else
            if self.rest is not None or self.outbox:
                self.scv.notify_all()  # else a sender that waited on this write has nothing

    # --------------------------------------------------------- main thread

    def run(self) -> None:
        with self.lock:
            self._control(Ready())  # runner imported: later deaths are not start-up failures
        threading.Thread(target=self.read_forever, daemon=True, name="journaled-reader").start()
        sender = threading.Thread(target=self.send_forever, daemon=True,
                                  name="journaled-sender")
        sender.start()
        cv = self.cv
        lock = self.lock
        clock = time.perf_counter
        from msgspec.msgpack import Encoder

        enc = Encoder().encode  # the main thread's own (the sender has one)
        default_name = self.table.name_of("")
        try:
            default: Callable[[Step], Any] | None = self.table.get("")
        except UnknownRunner:
            default = None  # no default runner: every step names its own
        while True:
            with lock:
                while not self.queue and not self.stopping:
                    cv.wait()
                if not self.queue:
                    break  # stopping, nothing left
                item = self.queue.popleft()
                seq = item.seq
                if seq in self.skip:
                    self.skip.discard(seq)
                    self._result(seq, WorkerResult("cancelled",
                                                   error="cancelled before it started"), 0.0)
                    self.scv.notify_all()
                    continue
                # Claimed: from here on a Revoke cannot take it back.
                self.running = seq
                _U64.pack_into(self.buf, self.run_off, seq)
            started = clock()
            if failpoints.ENABLED:
                failpoints.hit("worker.before_step")
            # A BlobRef payload is read (or mapped) by the step itself, on first use.
            step = Step(item.run_id, item.step, item.payload, item.headers, item.attempt,
                        CancelToken(self.buf, self.slot, seq, self.stop_at),
                        _Progress(self.buf, self.slot, seq), item.signal,
                        Memo(item.memo, functools.partial(self._put_memo, seq), self.blobs),
                        self.blobs,
                        None if item.children is None else Children(item.children, self.blobs))
            name = item.runner
            if not name and default is not None:  # the default runner: looked up once
                step.runner = default_name
                res = run_one(default, step, self.blobs)
            else:
                step.runner = self.table.name_of(name)
                try:
                    fn = self.table.get(name)
                except UnknownRunner as e:  # served before this restart, not any more
                    res = WorkerResult("error", permanent=True, error=str(e))
                else:
                    res = run_one(fn, step, self.blobs)
            del step, item  # drop the runner's objects before waiting for more work
            if failpoints.ENABLED:
                failpoints.hit("worker.after_step")
            direct: list[Any] | None = None
            with lock:
                self.running = 0
                _U64.pack_into(self.buf, self.run_off, 0)
                first = not self.outbox
                self._result(seq, res, clock() - started)
                now = self._due() <= 0
                if now and not self.sending and self.rest is None \
                        and self.out_bytes <= DIRECT_MAX:
                    direct, self.outbox = self.outbox, []
                    self.out_bytes = 0
                    self.urgent = False
                    self.sending = True
                elif now or (first and not self.sender_timed):
                    # Held results wait for company with the sender's timer set (it
                    # wakes by itself, at an older hold's deadline at the latest): wake
                    # it only to start timing a hold or to send now, not once per step.
                    self.scv.notify_all()
            if direct is not None:
                self._send_direct(direct, enc)
        with cv:
            self.finished = True
            self.scv.notify_all()
        sender.join()

    def _put_memo(self, seq: int, key: str, value: bytes | BlobRef) -> None:
        """Block until the supervisor says the memo is durable."""
        with self.cv:
            self._control(MemoPutMsg(seq, key, value))
            self.scv.notify_all()
            while seq not in self.acks:
                self.cv.wait()
            self.acks.discard(seq)


def _batches(entries: list[Any]) -> list[Any]:
    """Group consecutive results into ``ResultBatch``es of at most ``BATCH_BYTES``."""
    out: list[Any] = []
    items: list[tuple[int, WorkerResult]] = []
    size = 0
    busy = 0.0
    for e in entries:
        if type(e) is tuple:
            n = e[4]
            if items and size + n > BATCH_BYTES:
                out.append(ResultBatch(items, busy))
                items, size, busy = [], 0, 0.0
            items.append((e[1], e[2]))
            size += n
            busy += e[3]
        else:
            if items:
                out.append(ResultBatch(items, busy))
                items, size, busy = [], 0, 0.0
            out.append(e)
    if items:
        out.append(ResultBatch(items, busy))
    return out


class _Progress:
    __slots__ = ("buf", "slot", "seq")

    def __init__(self, buf: Any, slot: int, seq: int) -> None:
        self.buf, self.slot, self.seq = buf, slot, seq

    def __call__(self, done: float, total: float | None, message: str) -> None:
        write_progress(self.buf, self.slot, self.seq, done, total, message)
