"""Run steps on a Dask ``distributed`` cluster; the journal stays with the supervisor.

::

    supervisor ──pipe── virtual worker i ─┐           ┌─> Dask worker (run_task)
               <─pipe── ResultBatch       ├─ driver ──┤   client.map, one call a turn
                                          │  thread   └── done callbacks -> one gather
    cancel / drop ─> notice thread ── client.run(deliver) in every worker process

Each virtual worker holds one step at a time, like a local worker process
with a batch depth of one, and talks to the supervisor over a local pipe
with the very messages a worker process uses, so the supervisor code path
and its accounting rules are the same. One driver thread serves all of
them: it reads what the supervisor leased, submits everything new in one
``client.map`` (one scheduler message per turn, not per step), and answers
from futures completed meanwhile with one ``gather``. To keep each cluster
thread busy while results travel through the supervisor's journal, there
are ``PIPELINE`` virtual workers per cluster thread (``-w``, default the
cluster's thread count; capped by ``EXTRA_CAP``): two of them always lease,
four while steps take under a second (``MEDIUM``), all of them while steps
are short (``SHORT``). So a step of a second or more waits behind at most
one other on its Dask thread, a shorter one behind at most three, and its
step timeout, counted from the hand-off to Dask, stays honest.

Semantics kept, and how (nothing on the scheduler per step but Dask's own
task, released once its result is read):

- journaled owns attempts: ``retries=0``, and Dask's own re-run of a task
  whose worker died is marked by the rerun guard (``dask_guard``) and
  answers ``worker_died`` without running the step. A step Dask had handed
  to that worker but not started yet is charged too (Dask cannot say which
  had started): one attempt too many is safe, one too few is not.
- Cancel tokens are local flags in the worker process; the supervisor's
  cancel reaches them through ``client.run`` (one broadcast per batch of
  cancels, no polling), and a cancel that beats its task there is found
  when the task starts. A step that ignores its token cannot be killed on a
  remote worker: after the grace period it is abandoned (its outcome, if it
  ever comes, is discarded; it keeps its Dask thread until it returns) and
  the run ends ``cancelled``, as with a local worker killed after the grace.
- A step timeout is enforced the same way: abandoned, counted as a failure.
- If the scheduler goes away, in-flight steps are released as abandoned
  (no failure counted) and no step is leased until the connection is back;
  the connection is retried with backoff.

Not supported on Dask (documented): ``step.progress`` (a no-op) and
``step.memo.put`` (raises).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any

import msgspec

from ..blobs import BlobStore
from ..pool import DispatchBatch, ResultBatch, Stop, Worker, WorkerChannels
from ..pool.wire import to_worker_dec
from ..state import WorkerResult
from . import dask_guard
from .dask_remote import deliver, run_task, unpack

log = logging.getLogger("journaled.executors.dask")

PIPELINE = 16  # virtual workers per cluster thread (short steps)
ALWAYS = 2  # of those, how many lease whatever the step length
EXTRA_CAP = 256  # short-step virtual workers beyond ALWAYS, over the whole cluster
SHORT = 0.05  # seconds: steps shorter than this lease all PIPELINE
MEDIUM, MEDIUM_DEPTH = 1.0, 4  # steps shorter than MEDIUM seconds: 4 per cluster thread
_enc = msgspec.msgpack.Encoder()


class _Virtual:
    """Stands in for a worker process: one step at a time, moved by the driver thread."""

    pid = None
    sentinel = None

    def __init__(self, w: Worker, child: Connection) -> None:
        self.w = w
        self.child = child
        self.alive = True
        self.stopping = False
        self.seq = 0  # the step it holds (running or queued on Dask); 0: none
        self.fut: Any = None
        self.t0 = 0.0

    def is_alive(self) -> bool:
        return self.alive


def _install_guard(client: Any) -> None:
    """Register the rerun guard on the scheduler (once per scheduler, by value)."""
    import cloudpickle  # type: ignore[import-untyped]

    cloudpickle.register_pickle_by_value(dask_guard)
    client.register_plugin(dask_guard.RerunGuard(), name=dask_guard.NAME)


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
        self.slots = workers
        self.ns = os.urandom(6).hex()
        self.client: Any = None
        self.workers: list[Worker] = []
        self.avg_step = SHORT * 4  # assume long steps until some come back
        self._connected = threading.Event()
        self._reconnecting = threading.Lock()
        self._closing = False
        self._requests: queue.SimpleQueue[tuple[str, _Virtual]] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._notices: queue.SimpleQueue[tuple[int, bool] | None] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)  # a full pipe already means "wake up"
        self._by_key: dict[str, _Virtual] = {}
        self._conns: dict[Connection, _Virtual] = {}  # the driver's: live virtual workers
        self._threads: list[threading.Thread] = []
        self.on_ready: Any = None  # the supervisor's wake-up, called once reconnected

    # ------------------------------------------------------------ lifecycle

    def _connect(self, timeout: float) -> Any:
        from distributed import Client

        client = Client(self.address, timeout=timeout, set_as_default=False)
        try:
            _install_guard(client)
        except Exception:
            client.close()
            raise
        return client

    def start(self) -> None:
        try:
            self.client = self._connect(10)
        except Exception as e:  # noqa: BLE001 - one line for the user
            raise ConnectionError(f"cannot reach the Dask scheduler at {self.address}: {e}"
                                  ) from None
        if not self.slots:
            info = self.client.scheduler_info()
            self.slots = max(1, sum(w.get("nthreads", 1) for w in info["workers"].values()))
        size = self.slots * ALWAYS + min(self.slots * (PIPELINE - ALWAYS), EXTRA_CAP)
        self.workers = [Worker(i) for i in range(size)]
        self._connected.set()
        for target, name in ((self._drive, "driver"), (self._notify, "notices")):
            t = threading.Thread(target=target, daemon=True, name=f"journaled-dask-{name}")
            t.start()
            self._threads.append(t)
        for w in self.workers:
            self._spawn(w)

    def _spawn(self, w: Worker) -> None:
        parent, child = multiprocessing.Pipe(duplex=True)
        vw = _Virtual(w, child)
        w.attach(vw, parent, None)
        self._ask("add", vw)

    def _ask(self, what: str, vw: _Virtual) -> None:
        self._requests.put((what, vw))
        self._wake()

    def _wake(self) -> None:
        fd = self._wake_w
        if fd < 0:
            return  # closed (a Dask callback after close): never write to a reused fd
        try:
            os.write(fd, b"x")
        except OSError:  # full (the driver is awake anyway) or closed
            pass

    # --------------------------------------------------------- the driver

    def _drive(self) -> None:
        """Move steps between the supervisor's pipes and Dask; the only thread that does."""
        conns = self._conns
        self._down_since = 0.0
        while not self._closing:
            try:
                self._turn(conns)
            except Exception:  # noqa: BLE001 - a bug here must not strand every step
                log.exception("the Dask executor's driver hit an error; carrying on")
                time.sleep(0.1)

    def _turn(self, conns: dict[Connection, _Virtual]) -> None:
        for gone in [c for c, vw in conns.items() if not vw.alive]:
            del conns[gone]
        ready = wait([*conns, self._wake_r], timeout=0.25)
        new: list[tuple[_Virtual, Any]] = []
        for r in ready:
            if r == self._wake_r:
                os.read(self._wake_r, 4096)
                continue
            self._read(conns[r], new)  # type: ignore[index]
        while True:  # adds and kills asked for by the supervisor's thread
            try:
                what, vw = self._requests.get_nowait()
            except queue.Empty:
                break
            if what == "add":
                conns[vw.child] = vw
            else:
                self._end(vw)
        new = [(vw, item) for vw, item in new if vw.alive]
        if new:
            self._submit(new)
        self._collect()
        if self._connected.is_set():
            # A future can hang forever once its scheduler is gone.
            if self.client.status == "running":
                self._down_since = 0.0
            elif not self._down_since:
                self._down_since = time.monotonic()
            elif time.monotonic() - self._down_since > 1.0:
                self._down_since = 0.0
                self._lost("the scheduler connection dropped")

    def _read(self, vw: _Virtual, new: list[tuple[_Virtual, Any]]) -> None:
        try:
            while vw.alive and vw.child.poll():
                msg = to_worker_dec.decode(vw.child.recv_bytes())
                if type(msg) is DispatchBatch:
                    new.extend((vw, self._inline(item)) for item in msg.items)
                elif type(msg) is Stop:
                    vw.stopping = True
                # MemoAck/CancelQueued/Revoke have no meaning here
        except (EOFError, OSError):
            self._end(vw)
            return
        if vw.stopping and not vw.seq and not any(v is vw for v, _ in new):
            self._end(vw)

    def _inline(self, item: Any) -> Any:
        """A dispatch whose payload is a blob ref, with the bytes read in (off the loop).

        Dask workers may not share our disk, so the bytes travel with the task.
        """
        if isinstance(item.payload, bytes):
            return item
        store = BlobStore(getattr(self, "state_dir", None) or ".")
        return msgspec.structs.replace(item, payload=store.read(item.payload))

    def _submit(self, new: list[tuple[_Virtual, Any]]) -> None:
        """Everything leased this turn in one ``client.map``: one message to the scheduler."""
        if not self._connected.is_set():
            for vw, item in new:  # never reached Dask: hand the attempt back uncounted
                self._answer(vw, item.seq, WorkerResult("revoked"), 0.0)
            return
        keys = [dask_guard.task_key(self.ns, item.seq) for _, item in new]
        n = len(new)
        try:
            futs = self.client.map(run_task, [self.spec] * n, [self.ns] * n,
                                   [_enc.encode(item) for _, item in new], key=keys,
                                   pure=False, retries=0)
        except Exception as e:  # noqa: BLE001 - the scheduler went away under us
            for vw, item in new:
                self._answer(vw, item.seq, WorkerResult("revoked"), 0.0)
            self._lost(f"{type(e).__name__}: {e}")
            return
        t0 = time.perf_counter()
        for (vw, item), fut in zip(new, futs, strict=True):
            vw.seq, vw.fut, vw.t0 = item.seq, fut, t0
            self._by_key[fut.key] = vw
            fut.add_done_callback(self._on_done)

    def _on_done(self, fut: Any) -> None:
        """Dask's callback thread: hand the future to the driver."""
        self._done.put(fut)
        self._wake()

    def _collect(self) -> None:
        """Answer every step whose future completed: results of finished ones in one gather."""
        done: list[tuple[_Virtual, Any]] = []
        while True:
            try:
                fut = self._done.get_nowait()
            except queue.Empty:
                break
            vw = self._by_key.pop(fut.key, None)
            if vw is not None and vw.fut is fut and vw.alive:
                done.append((vw, fut))
        if not done:
            return
        finished = [(vw, f) for vw, f in done if f.status == "finished"]
        values: list[Any] = []
        if finished:
            try:
                values = self.client.gather([f for _, f in finished])
            except Exception:  # noqa: BLE001 - one lost result: read them one by one
                values = []
                for _vw, f in finished:
                    try:
                        values.append(f.result(timeout=30))
                    except Exception as e:  # noqa: BLE001
                        values.append(e)
        for (vw, fut), value in zip(finished, values, strict=True):
            self._settle(vw, fut, value)
        for vw, fut in done:
            if fut.status != "finished":
                self._settle(vw, fut, None)

    def _settle(self, vw: _Virtual, fut: Any, value: Any) -> None:
        seq = vw.seq
        if isinstance(value, bytes):
            busy, res = unpack(value)
            self.avg_step = 0.8 * self.avg_step + 0.2 * busy
        elif fut.status in ("cancelled", "lost") or isinstance(value, BaseException):
            # Our future is gone with its scheduler (or its result with a worker we can no
            # longer reach): nothing to say about the step; release it, abandoned.
            fut.release()
            vw.w.kill_reason = vw.w.kill_reason or "lost"
            self._end(vw)
            return
        else:
            try:
                exc: Any = fut.exception(timeout=5)
            except Exception as e:  # noqa: BLE001
                exc = e
            if type(exc).__name__ == "KilledWorker":
                res = WorkerResult("worker_died", error=f"Dask: {exc}")
            else:  # the task could not even start on the worker (say, journaled not there)
                res = WorkerResult("error", error=f"Dask: {type(exc).__name__}: {exc}")
            busy = 0.0
        fut.release()
        vw.fut = None
        self._answer(vw, seq, res, busy)

    def _answer(self, vw: _Virtual, seq: int, res: WorkerResult, busy: float) -> None:
        try:
            vw.child.send_bytes(_enc.encode(ResultBatch([(seq, res)], busy)))
        except (OSError, ValueError):
            self._end(vw)
            return
        vw.seq = 0
        if vw.stopping:
            self._end(vw)

    def _end(self, vw: _Virtual) -> None:
        """The virtual worker is gone: the supervisor sees EOF and decides about its step.

        ``seq`` stays set, so the step counts as the running one, as for a
        local worker killed mid-step; its Dask task is let go and told to drop.
        """
        if not vw.alive:
            return
        vw.alive = False
        if vw.fut is not None:
            self._by_key.pop(vw.fut.key, None)
            vw.fut.release()
            vw.fut = None
            self._notices.put((vw.seq, True))
        try:
            vw.child.close()
        except OSError:
            pass

    # ------------------------------------------------------- cancels, drops

    def _notify(self) -> None:
        """Push cancels and drops to every worker process, in batches (``client.run``)."""
        while True:
            first = self._notices.get()
            if first is None:
                return
            batch = [first]
            while True:
                try:
                    n = self._notices.get_nowait()
                except queue.Empty:
                    break
                if n is None:
                    return
                batch.append(n)
            for drop in (False, True):
                seqs = [s for s, d in batch if d is drop and s]
                if seqs and self._connected.is_set():
                    try:
                        self.client.run(deliver, self.ns, seqs, drop, on_error="ignore")
                    except Exception as e:  # noqa: BLE001 - the grace-period abandon applies
                        log.warning("could not tell the Dask workers to %s steps %s: %s",
                                    "drop" if drop else "cancel", seqs, e)

    # ------------------------------------------------------ scheduler loss

    def _lost(self, why: str) -> None:
        """The scheduler is gone: release in-flight steps, stop leasing, reconnect.

        Driver thread only (it owns ``_conns``).
        """
        with self._reconnecting:
            if not self._connected.is_set():
                return
            self._connected.clear()
        for vw in list(self._conns.values()):
            if vw.seq and vw.alive:
                vw.w.kill_reason = vw.w.kill_reason or "lost"
                self._end(vw)
        self._by_key.clear()
        log.warning("lost the Dask scheduler at %s (%s); releasing in-flight steps, leasing "
                    "nothing until it is back", self.address, why)
        threading.Thread(target=self._reconnect, daemon=True, name="journaled-dask-reconnect"
                         ).start()

    def _reconnect(self) -> None:
        old, delay = self.client, 0.5
        try:
            old.close(timeout=1)
        except Exception:  # noqa: BLE001 - it is already broken
            pass
        while not self._closing:
            try:
                self.client = self._connect(5)
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
        if not self._connected.is_set():
            return 0
        avg = self.avg_step
        per = PIPELINE if avg < SHORT else MEDIUM_DEPTH if avg < MEDIUM else ALWAYS
        return 1 if w.slot < self.slots * per else 0

    def running_seq(self, w: Worker) -> int:
        vw = w.proc
        return vw.seq if vw is not None else 0

    def progress(self, w: Worker) -> tuple[int, float, float | None, str]:
        return 0, 0.0, None, ""

    def cancel(self, w: Worker, item: Any, grace: float, now: float) -> None:
        item.cancel_at = now + grace
        self._notices.put((item.seq, False))

    def kill(self, w: Worker, reason: str) -> None:
        vw = w.proc
        if vw is not None and vw.is_alive():
            w.kill_reason = w.kill_reason or reason
            self._ask("kill", vw)

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
        for w in self.workers:
            self.kill(w, "shutdown")
        deadline = time.monotonic() + timeout
        while any(w.proc is not None and w.proc.alive for w in self.workers) and \
                time.monotonic() < deadline and self._threads and self._threads[0].is_alive():
            time.sleep(0.01)
        self._closing = True
        self._notices.put(None)
        self._wake()
        for t in self._threads:
            t.join(timeout=timeout)
        for w in self.workers:
            w.detach()
            w.proc = None
        fds, self._wake_w = (self._wake_r, self._wake_w), -1
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        if self.client is not None:
            try:
                self.client.close(timeout=timeout)
            except Exception:  # noqa: BLE001
                pass
            self.client = None
