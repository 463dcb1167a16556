"""Run steps on a Dask ``distributed`` cluster; the journal stays with the supervisor.

::

    supervisor ──pipe── virtual worker i (a thread here) ──client.submit──> Dask worker
               <─pipe── ResultBatch                      <──future result──

Each virtual worker runs one step at a time, like a local worker process,
and talks to the supervisor over a local pipe with the very messages a
worker process uses, so the supervisor code path is the same. There are as
many virtual workers as ``-w`` says (default: the cluster's thread count).

Semantics kept, and how:

- journaled owns attempts: the task records that it started in a
  ``distributed.Event``; if Dask re-runs it after a worker died, the
  re-run reports ``worker_died`` at once instead of running the step again.
- The cancel token is a ``distributed.Event`` per step, watched by a thread
  next to the step that flips the token's local flag, so ``is_cancelled()``
  stays a memory read. A step that ignores its token cannot be killed on a
  remote worker: after the grace period it is abandoned (its outcome, if it
  ever comes, is discarded) and the run ends ``cancelled``.
- A step timeout is enforced the same way: abandoned, counted as a failure.
- If the scheduler goes away, in-flight steps are released (no failure
  counted) and no step is leased until the connection is back; the
  connection is retried with backoff.

Not supported on Dask (documented): ``step.progress`` (a no-op) and
``step.memo.put`` (raises).
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
import uuid
from typing import Any

import msgspec

from ..api import SLOT_SIZE, CancelToken, Memo, Step
from ..blobs import BlobStore
from ..pool import DispatchBatch, ResultBatch, Stop, Worker, WorkerChannels
from ..pool.wire import to_worker_dec
from ..pool.worker import resolve_runner, run_one
from ..state import WorkerResult

log = logging.getLogger("journaled.executors.dask")

_U64 = __import__("struct").Struct("<Q")
_enc = msgspec.msgpack.Encoder()
_res_dec = msgspec.msgpack.Decoder(WorkerResult)
_runners: dict[str, Any] = {}


def _run_remote(spec: str, ns: str, seq: int, run_id: str, step_no: int, attempt: int,
                payload: bytes, headers: dict[str, str], signal: Any) -> bytes:
    """This runs on a Dask worker: one attempt of one step, result as msgpack bytes."""
    from distributed import Event

    started = Event(f"journaled-{ns}-started-{seq}")
    if started.is_set():
        # Dask re-ran us after a worker died: that attempt is over, and
        # journaled, not Dask, decides about the next one.
        return _enc.encode(WorkerResult("worker_died", error="the Dask worker running the "
                                        "step died"))
    started.set()
    fn = _runners.get(spec)
    if fn is None:
        fn = _runners[spec] = resolve_runner(spec)
    buf = bytearray(SLOT_SIZE)
    token = CancelToken(buf, 0, seq)
    done = threading.Event()
    cancel = Event(f"journaled-{ns}-cancel-{seq}")

    def watch() -> None:
        while not done.is_set():
            try:
                if cancel.wait(timeout=0.05):
                    token.cancel()
                    return
            except Exception:  # noqa: BLE001 - scheduler trouble: keep the step going
                time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()

    def no_memo(key: str, value: bytes) -> None:
        raise NotImplementedError("step.memo.put is not supported on the Dask executor")

    from ..api import Signal

    sig = Signal(*signal) if signal is not None else None
    step = Step(run_id, step_no, payload, headers, attempt, token, None, sig, Memo(None, no_memo))
    try:
        res = run_one(fn, step)
    finally:
        done.set()
    return _enc.encode(res)


class _Remote:
    """Stands in for a worker process: a thread driving one step at a time on Dask."""

    pid = None
    sentinel = None

    def __init__(self) -> None:
        self.alive = True
        self.abandon = threading.Event()

    def is_alive(self) -> bool:
        return self.alive


class DaskExecutor(WorkerChannels):
    """Virtual workers that forward steps to a Dask cluster."""

    def __init__(self, address: str, runner: Any, workers: int = 0) -> None:
        if not isinstance(runner, str):
            mod = getattr(runner, "__module__", "")
            name = getattr(runner, "__qualname__", "")
            if not mod or not name or "<" in name:
                raise ValueError("the Dask executor needs a module-level runner it can import "
                                 "by name on the cluster")
            runner = f"{mod}:{name}"
        self.address = address
        self.spec: str = runner
        self.size = workers
        self.ns = uuid.uuid4().hex[:12]
        self.client: Any = None
        self.workers: list[Worker] = []
        self.buf = bytearray()
        self._connected = threading.Event()
        self._reconnecting = threading.Lock()
        self._closing = False
        self.on_ready: Any = None  # the supervisor's wake-up, called once reconnected

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        from distributed import Client

        try:
            self.client = Client(self.address, timeout=10, set_as_default=False)
        except Exception as e:  # noqa: BLE001 - one line for the user
            raise ConnectionError(f"cannot reach the Dask scheduler at {self.address}: {e}"
                                  ) from None
        if not self.size:
            info = self.client.scheduler_info()
            self.size = max(1, sum(w.get("nthreads", 1) for w in info["workers"].values()))
        self.buf = bytearray(SLOT_SIZE * self.size)
        self.workers = [Worker(i) for i in range(self.size)]
        self._connected.set()
        for w in self.workers:
            self._spawn(w)

    def _spawn(self, w: Worker) -> None:
        parent, child = multiprocessing.Pipe(duplex=True)
        proc = _Remote()
        w.attach(proc, parent, None)
        threading.Thread(target=self._serve, args=(w, proc, child), daemon=True,
                         name=f"journaled-dask-{w.slot}").start()

    def _serve(self, w: Worker, proc: _Remote, child: Any) -> None:
        """One virtual worker: take dispatches, run each on Dask, send the results back."""
        off = w.slot * SLOT_SIZE + 8
        try:
            while True:
                try:
                    msg = to_worker_dec.decode(child.recv_bytes())
                except (EOFError, OSError):
                    return
                if type(msg) is Stop:
                    return
                if type(msg) is not DispatchBatch:
                    continue  # MemoAck/CancelQueued/Revoke have no meaning here
                for item in msg.items:
                    _U64.pack_into(self.buf, off, item.seq)
                    payload = item.payload
                    if not isinstance(payload, bytes):
                        # A blob ref: Dask workers may not share our disk, so the
                        # bytes travel with the task (read here, off the loop).
                        payload = BlobStore(getattr(self, "state_dir", None) or ".").read(
                            payload)
                    fut = self.client.submit(
                        _run_remote, self.spec, self.ns, item.seq, item.run_id, item.step,
                        item.attempt, payload, item.headers,
                        list(msg_signal(item)) if item.signal is not None else None,
                        key=f"journaled-{self.ns}-{item.seq}", pure=False, retries=0)
                    t0 = time.perf_counter()
                    finished = threading.Event()
                    fut.add_done_callback(lambda _f, ev=finished: ev.set())
                    down_since = 0.0
                    while not finished.wait(0.05):
                        if proc.abandon.is_set():
                            fut.release()
                            return  # killed: the supervisor sees EOF and decides
                        # A future can hang forever once its scheduler is gone.
                        if self.client.status == "running":
                            down_since = 0.0
                        elif not down_since:
                            down_since = time.monotonic()
                        elif time.monotonic() - down_since > 1.0:
                            self._lost(w, "the scheduler connection dropped")
                            return
                    try:
                        res = _res_dec.decode(fut.result())
                    except Exception as e:  # noqa: BLE001 - lost worker or scheduler
                        name = type(e).__name__
                        if name in ("KilledWorker",):
                            res = WorkerResult("worker_died", error=f"Dask: {e}")
                        else:
                            self._lost(w, f"{type(e).__name__}: {e}")
                            return
                    busy = time.perf_counter() - t0
                    _U64.pack_into(self.buf, off, 0)
                    child.send_bytes(_enc.encode(ResultBatch([(item.seq, res)], busy)))
        finally:
            proc.alive = False
            try:
                child.close()
            except OSError:
                pass

    def _lost(self, w: Worker, why: str) -> None:
        """The scheduler is gone: release this step, stop leasing, reconnect in the background."""
        w.kill_reason = "lost"
        with self._reconnecting:
            if not self._connected.is_set():
                return
            self._connected.clear()
        log.warning("lost the Dask scheduler at %s (%s); releasing in-flight steps, leasing "
                    "nothing until it is back", self.address, why)
        threading.Thread(target=self._reconnect, daemon=True, name="journaled-dask-reconnect"
                         ).start()

    def _reconnect(self) -> None:
        from distributed import Client

        old, delay = self.client, 0.5
        try:
            old.close(timeout=1)
        except Exception:  # noqa: BLE001 - it is already broken
            pass
        while not self._closing:
            try:
                self.client = Client(self.address, timeout=5, set_as_default=False)
            except Exception:  # noqa: BLE001 - not back yet
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self._connected.set()
            log.warning("the Dask scheduler at %s is back; leasing again", self.address)
            if self.on_ready is not None:
                self.on_ready()
            return

    # ------------------------------------------------------ the Pool face

    def depth(self, w: Worker) -> int:
        return 1 if self._connected.is_set() else 0

    def running_seq(self, w: Worker) -> int:
        return _U64.unpack_from(self.buf, w.slot * SLOT_SIZE + 8)[0]

    def progress(self, w: Worker) -> tuple[int, float, float | None, str]:
        return 0, 0.0, None, ""

    def cancel(self, w: Worker, item: Any, grace: float, now: float) -> None:
        from distributed import Event

        item.cancel_at = now + grace
        try:
            Event(f"journaled-{self.ns}-cancel-{item.seq}", client=self.client).set()
        except Exception as e:  # noqa: BLE001 - the grace-period abandon still applies
            log.warning("could not set the Dask cancel event for run %s: %s", item.run_id, e)

    def kill(self, w: Worker, reason: str) -> None:
        proc = w.proc
        if proc is not None and proc.is_alive():
            w.kill_reason = w.kill_reason or reason
            proc.abandon.set()

    def reap(self, w: Worker) -> int | None:
        w.proc = None
        w.detach()
        return None

    def set_stopping(self) -> None:
        """No shutdown notice on Dask: remote tokens have no stopping word."""

    def death_reason(self, w: Worker, exitcode: int | None) -> str:
        return f"virtual Dask worker {w.slot} stopped"

    def respawn(self, w: Worker) -> None:
        self._spawn(w)

    def wait_objects(self) -> dict[Any, tuple[str, Worker]]:
        return {w.conn: ("conn", w) for w in self.workers if w.conn is not None}

    def close(self, timeout: float = 2.0) -> None:
        self._closing = True
        for w in self.workers:
            self.kill(w, "shutdown")
            w.detach()
            w.proc = None
        if self.client is not None:
            try:
                self.client.close(timeout=timeout)
            except Exception:  # noqa: BLE001
                pass
            self.client = None


def msg_signal(item: Any) -> tuple[str, bytes, bool]:
    s = item.signal
    return (s.key, s.data, s.timed_out)
