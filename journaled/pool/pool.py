"""The supervisor side of the worker pool: processes, pipes, the cancel block.

::

    supervisor loop thread            sender thread i         worker i (forkserver child)
    ----------------------            ---------------         ---------------------------
    send/cancel/stop/ack  -> (room in the pipe: written at once, MSG_DONTWAIT)
                          -> outbox -> sock.sendall      ==>   reader thread -> queue
    read_results()        <===================================  sender thread <- results
    pidfd[i] (or sentinel) <-- process exit (crash, kill, os._exit)
    cancel block: slot i: cancel seq (we write), running seq + progress (worker writes);
                  after the slots: the pool-wide "stopping" word (we write)

The loop thread never blocks on a worker: a message to a worker is
written at once only if all of it fits without waiting and nothing is
queued ahead of it; anything else goes through that worker's sender
thread, in order (``Sender``), and the worker reads its pipe on a
thread of its own while it sends, so neither end can wait on the other
however big the payloads (CPython's process pool: "this function never
blocks"). Results are still read on the loop thread, straight off the pipe
that ``multiprocessing.connection.wait`` reported readable.

Workers never touch the journal: the supervisor leases steps durably first
and only then sends them here.

The handle on one worker (``Worker``, its ``Sender`` thread, ``InFlight``
steps, ``read_results``) lives in ``handle.py``; this module starts,
watches, kills and reaps the processes and owns the cancel block.
"""

from __future__ import annotations

import glob
import logging
import mmap
import multiprocessing
import os
import shutil
import signal
import struct
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from ..api import SLOT_SIZE, block_size, read_progress
from ..blobs import ENV_THRESHOLD, value_size
from ..state import WorkerResult
from .handle import (  # noqa: F401 - re-exported: callers import these from here
    InFlight,
    Sender,
    Worker,
    read_results,
)
from .hygiene import Hygiene, prepare_forkserver, worker_env
from .wire import (
    BATCH_BYTES,
    CancelQueued,
    Dispatch,
    DispatchBatch,
    MemoAck,
    Revoke,
    Stop,
    split_dispatches,
)
from .worker import worker_main

log = logging.getLogger("journaled.pool")

_U64 = struct.Struct("<Q")
DEPTH_BYTES = 4 << 20  # payload bytes leased ahead to one worker (a big step goes alone)
# What a dead forkserver or resource tracker makes ``Process.start`` raise.
_SPAWN_ERRORS = (OSError, EOFError)
_QUICK_RETRIES = (0.0, 0.05, 0.2)  # in-line tries before the slot waits for a retry


class WorkerChannels:
    """Numbering, sending and reading steps: the part every executor shares.

    Every method that talks to a worker only queues a message for its
    sender thread: none of them can block the supervisor's loop.
    """

    _seq = 0

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def send(self, w: Worker, items: list[Dispatch], now: float) -> None:
        out = w.outstanding
        if not out:
            w.head_started = now
        avg = w.avg_bytes
        total = 0  # what split_dispatches would count: one batch if it is under the cap
        for d in items:
            out.append(InFlight(d.seq, d.run_id, d.attempt))
            p = d.payload
            n = len(p) if type(p) is bytes else value_size(p)  # a ref is small: the worker reads it
            avg = n if avg <= 0 else 0.8 * avg + 0.2 * n
            total += n
            if d.memo or d.children:
                total += BATCH_BYTES  # rare: let split_dispatches weigh them
        w.avg_bytes = avg
        if total <= BATCH_BYTES:
            w.post(DispatchBatch(items))
            return
        for chunk in split_dispatches(items):
            w.post(DispatchBatch(chunk))

    def read(self, w: Worker, now: float) -> list[tuple[InFlight, WorkerResult]]:
        return read_results(w, now)

    def ack_memo(self, w: Worker, seq: int) -> None:
        w.post(MemoAck(seq))

    def stop(self, w: Worker) -> None:
        """Ask ``w`` to finish its current step and exit."""
        if w.conn is not None and not w.stopping:
            w.stopping = True
            w.post(Stop())


Feeder = WorkerChannels  # the old name, kept for executors written against it


class _SpawnRetry:
    """Stands in for a worker that could not be started: its sentinel fires when
    it is time to try again, so the supervisor's own worker-death path retries."""

    pid = None
    exitcode = None

    def __init__(self, delay: float) -> None:
        self.sentinel, self._w = os.pipe()
        self._lock = threading.Lock()
        self._timer = threading.Timer(delay, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._w >= 0:
                os.close(self._w)
                self._w = -1

    def join(self, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        self._timer.cancel()
        self._fire()
        os.close(self.sentinel)

    def is_alive(self) -> bool:
        return False


def _ensure_tracker() -> None:
    """Replace a dead resource tracker with one line in the log, not a UserWarning.

    The forkserver needs a tracker; nothing of ours registers with it (the
    cancel block is a plain file, there is no semaphore), so its death
    loses nothing and "some resources might leak" would be a false alarm.
    """
    from multiprocessing import resource_tracker

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resource_tracker.ensure_running()
    if caught:
        log.warning("the multiprocessing resource tracker had died; started a new one")


class Pool(WorkerChannels):
    """Starts, feeds, cancels, kills and replaces the worker processes.

    The cancel block is a small file mapped by every worker (under
    ``STATE/workers/``, or a private temporary directory): no named shared
    memory, so nothing for multiprocessing's resource tracker to track,
    report as leaked or fail on after a ``kill -9``. Faulthandler output of
    worker ``i`` goes to ``workers/<i>.fault``, truncated at each spawn.
    """

    workers: list[Worker] = []
    _scratch: str | None = None

    def __init__(self, runner: Any, workers: int, preload: list[str] | None = None,
                 max_depth: int = 256, batch_target: float = 0.01,
                 state_dir: str | os.PathLike[str] | None = None,
                 blob_threshold: int | None = None, hygiene: Hygiene | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.runner = runner
        self.size = workers
        self.blob_threshold = blob_threshold  # None: the workers' default (or the environment)
        self.max_depth = max_depth
        self.batch_target = batch_target
        self.state_dir = str(Path(state_dir).resolve()) if state_dir is not None else None
        self.ctx = multiprocessing.get_context("forkserver")
        # The forkserver ignores SIGINT/SIGTERM from its start (see quiet.py); it
        # is started, or restarted after a kill, by the next spawn.
        # hygiene before the user's modules: it caps BLAS/OpenMP pools before they load.
        self.hygiene = hygiene or Hygiene()
        self.ctx.set_forkserver_preload(["journaled.pool.quiet", "journaled.pool.hygiene",
                                         *(preload or [])])
        if self.state_dir is not None:
            self.dir = os.path.join(self.state_dir, "workers")
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
        else:
            self._scratch = self.dir = tempfile.mkdtemp(prefix="journaled-pool-")
        self.stop_at = SLOT_SIZE * workers
        self.block_path = self._create_block(block_size(workers))
        self.workers = [Worker(i) for i in range(workers)]

    def _create_block(self, size: int) -> str:
        """A fresh zeroed file per pool; blocks of earlier (killed) supervisors go.

        A new name each time: an orphan worker of a killed supervisor may
        still map the old file, and shrinking a file under a mapping would
        kill it with SIGBUS; unlinking does not touch a mapping.
        """
        for old in glob.glob(os.path.join(self.dir, "cancel-*.block")):
            try:
                os.unlink(old)
            except FileNotFoundError:
                pass
        path = os.path.join(self.dir, f"cancel-{os.getpid()}-{id(self):x}.block")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            self._mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.buf: Any = memoryview(self._mm)
        return path

    def start(self) -> None:
        prepare_forkserver(self.hygiene)  # read by the forkserver if this starts it
        for w in self.workers:
            self._spawn(w)

    def fault_path(self, w: Worker) -> str:
        return os.path.join(self.dir, f"{w.slot}.fault")

    def _spawn(self, w: Worker) -> None:
        """Start a process for ``w``; a dead forkserver or tracker is replaced, never fatal."""
        base = w.slot * SLOT_SIZE
        self.buf[base:base + SLOT_SIZE] = bytes(SLOT_SIZE)
        fault = self.fault_path(w)
        try:
            with open(fault, "w"):
                pass
        except OSError:
            fault = ""
        err: BaseException | None = None
        for pause in _QUICK_RETRIES:
            time.sleep(pause)
            try:
                self._start_process(w, fault or None)
                w.spawn_failures = 0
                w.spawn_error = ""
                return
            except _SPAWN_ERRORS as e:
                err = e
        w.spawn_failures += 1
        delay = min(5.0, 0.25 * 2 ** (w.spawn_failures - 1))
        why = f"{type(err).__name__}: {err}"
        log.warning("could not start worker %d (%s); retrying in %.1f s", w.slot, why, delay)
        w.attach(_SpawnRetry(delay), None, None)
        w.stopping = True  # lease nothing to it
        w.kill_reason = "spawn"
        w.spawn_error = why

    def _start_process(self, w: Worker, fault: str | None) -> None:
        _ensure_tracker()
        parent, child = self.ctx.Pipe(duplex=True)
        alive_r, alive_w = self.ctx.Pipe(duplex=False)
        env = dict(os.environ)
        if self.blob_threshold is not None:
            env[ENV_THRESHOLD] = str(self.blob_threshold)  # workers write blobs over it
        env.update(worker_env(self.hygiene, w.slot, env))  # thread caps, the CPU to pin to
        proc = self.ctx.Process(
            target=worker_main, name=f"journaled-worker-{w.slot}",
            args=(w.slot, child, alive_r, self.block_path, self.runner, env,
                  self.state_dir, fault, self.stop_at),
            daemon=True)
        try:
            proc.start()
        except BaseException:
            for c in (parent, child, alive_r, alive_w):
                c.close()
            raise
        # Our copies of the child's ends must go, or EOF never reaches either side.
        child.close()
        alive_r.close()
        w.attach(proc, parent, alive_w)
        try:
            # A pidfd sees the exit of a grandchild even when the forkserver that
            # reports exit codes is dead (its status pipe would say "dead" at once).
            w.pidfd = os.pidfd_open(proc.pid) if proc.pid is not None else -1
        except (AttributeError, OSError):
            w.pidfd = -1

    def depth(self, w: Worker) -> int:
        """How many steps to keep leased on ``w``: deep for tiny steps, 1 for long or big ones."""
        if w.avg_step <= 0:
            return 1
        d = max(1, min(self.max_depth, int(self.batch_target / w.avg_step)))
        # Not ``> 0``: the average of empty payloads after a non-empty one decays
        # through subnormal floats, where DEPTH_BYTES / avg_bytes is inf and int()
        # raised OverflowError in the loop (the supervisor died after ~3,100 empty
        # steps). Under one byte per step the byte cap cannot bind anyway.
        if w.avg_bytes >= 1:
            d = max(1, min(d, int(DEPTH_BYTES / w.avg_bytes)))
        return d

    def running_seq(self, w: Worker) -> int:
        return _U64.unpack_from(self.buf, w.slot * SLOT_SIZE + 8)[0]

    def progress(self, w: Worker) -> tuple[int, float, float | None, str]:
        return read_progress(self.buf, w.slot)

    def set_stopping(self) -> None:
        """Tell every running step the supervisor is draining (``CancelToken.stopping``)."""
        if self.buf is not None:
            _U64.pack_into(self.buf, self.stop_at, 1)

    def cancel(self, w: Worker, item: InFlight, grace: float, now: float) -> None:
        """Cancel ``item``: the head through its token, a queued one by message only.

        A queued step's cancel never touches the slot's word, which belongs
        to the running step; if the worker started it meanwhile, the worker
        sets the word itself.
        """
        item.cancel_at = now + grace
        if w.outstanding and w.outstanding[0] is item:
            _U64.pack_into(self.buf, w.slot * SLOT_SIZE, item.seq)
        else:
            w.post(CancelQueued(item.seq))

    def revoke_queued(self, w: Worker) -> list[InFlight]:
        """Ask ``w`` to give back the steps queued behind its running one.

        Asynchronous: the worker answers with the steps it had not started,
        and those come out of ``read`` as ``revoked`` results (released by
        the supervisor like any unstarted step). Returns ``[]``.
        """
        if len(w.outstanding) < 2 or w.revoking or w.sender is None:
            return []
        if self.running_seq(w) != w.outstanding[0].seq:
            return []  # between steps: results may be on their way
        seqs = [i.seq for i in list(w.outstanding)[1:]]
        w.revoking.update(seqs)
        w.post(Revoke(seqs))
        return []

    def kill(self, w: Worker, reason: str) -> None:
        if w.proc is None or w.pid is None:
            return
        w.kill_reason = w.kill_reason or reason
        try:
            if w.pidfd >= 0:
                signal.pidfd_send_signal(w.pidfd, signal.SIGKILL)
            else:
                os.kill(w.pid, signal.SIGKILL)
        except (ProcessLookupError, OSError):
            pass

    def reap(self, w: Worker) -> int | None:
        """Collect a dead worker; returns its exit code (None if unknown)."""
        code = None
        proc, w.proc = w.proc, None  # other threads read w.pid: never a closed process
        if proc is not None:
            proc.join(timeout=1)
            code = proc.exitcode
            if code is not None or isinstance(proc, _SpawnRetry):
                proc.close()
        w.detach()
        return code

    def death_reason(self, w: Worker, exitcode: int | None) -> str:
        """Why ``w`` died, in words, with the tail of its faulthandler output."""
        if w.spawn_error:
            return f"worker {w.slot} could not be started ({w.spawn_error})"
        who = f"worker {w.slot} (pid {w.last_pid})"
        if exitcode is None:
            how = "died (exit status unknown)"
        elif exitcode < 0:
            try:
                how = f"was killed by {signal.Signals(-exitcode).name}"
            except ValueError:
                how = f"was killed by signal {-exitcode}"
        else:
            how = f"exited with code {exitcode}"
        tail = fault_tail(self.fault_path(w))
        return f"{who} {how}" + (f"; its faulthandler output ends:\n{tail}" if tail else "")

    def respawn(self, w: Worker) -> None:
        self._spawn(w)

    def wait_objects(self) -> dict[Any, tuple[str, Worker]]:
        objs: dict[Any, tuple[str, Worker]] = {}
        for w in self.workers:
            if w.conn is not None:
                objs[w.conn] = ("conn", w)
            if w.proc is not None:
                objs[w.pidfd if w.pidfd >= 0 else w.proc.sentinel] = ("sentinel", w)
        return objs

    def close(self, timeout: float = 2.0) -> None:
        """Kill every worker and free the cancel block; safe on a half-built pool."""
        for w in self.workers:
            if w.proc is not None:
                self.kill(w, "shutdown")
        for w in self.workers:
            if w.proc is not None:
                self.reap(w)
            else:
                w.detach()
        self._unlink()

    def _unlink(self) -> None:
        buf, self.buf = getattr(self, "buf", None), None
        if buf is not None:
            try:
                buf.release()
                self._mm.close()
            except BufferError:
                pass  # something still points into it; the mapping dies with us
            try:
                os.unlink(self.block_path)
            except FileNotFoundError:
                pass
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


def fault_tail(path: str, frames: int = 10, limit: int = 16384) -> str:
    """What a worker's faulthandler wrote last: its "Fatal Python error" line and the
    innermost frames of the crashing thread ('' if it wrote nothing)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    i = text.rfind("Fatal Python error")
    if i < 0:
        return "\n".join(text.strip().splitlines()[-frames:])
    lines = text[i:].strip().splitlines()
    head = lines[:1]
    cur = next((n for n, ln in enumerate(lines) if ln.startswith("Current thread")), None)
    if cur is None:
        cur = next((n for n, ln in enumerate(lines) if ln.startswith("Thread ")), 1)
    body = [ln for ln in lines[cur:cur + 1 + frames] if ln.strip()]
    return "\n".join(head + body)
