"""The Dask worker's side of the Dask executor: one task is one attempt of one step.

Nothing here talks to the scheduler while a step runs. What a step needs
from outside arrives with the task (its ``Dispatch``, msgpack bytes) or is
pushed into this worker process by the supervisor with ``client.run``:

- cancels and abandons land in a per-process table (``deliver``), keyed by
  ``(namespace, seq)``, that running tokens are registered in; a cancel that
  arrives before its task started is found there when it starts;
- whether Dask is re-running a task whose worker died comes with the task
  itself: the rerun guard (``dask_guard``) marks its annotations on the
  scheduler, and the worker hands us those annotations.

So the scheduler holds nothing per step beyond Dask's own task, which is
forgotten once the supervisor has its result.
"""

from __future__ import annotations

import struct
import threading
import time
from typing import Any

import msgspec

from ..api import SLOT_SIZE, CancelToken, Children, Memo, Step
from ..errors import UnknownRunner
from ..pool.wire import Dispatch
from ..pool.worker import resolve_runners, run_one
from ..state import WorkerResult
from .dask_guard import RERUN, task_key

_HEAD = struct.Struct("<d")  # seconds spent inside the step, before the msgpack result
_enc = msgspec.msgpack.Encoder()
_dispatch_dec = msgspec.msgpack.Decoder(Dispatch)
_res_dec = msgspec.msgpack.Decoder(WorkerResult)
_runners: dict[str, Any] = {}  # import string -> runner: each module imported once per process

# (namespace, seq) -> token of a step running in this process, and the
# cancels/abandons that came in (kept a while: one may arrive before its task).
_lock = threading.Lock()
_live: dict[tuple[str, int], CancelToken] = {}
_cancelled: dict[tuple[str, int], float] = {}
_dropped: dict[tuple[str, int], float] = {}
_KEEP_S = 600.0  # a notice for a task that never comes here is forgotten after this
_KEEP_N = 100_000


def pack(busy: float, res: WorkerResult) -> bytes:
    return _HEAD.pack(busy) + _enc.encode(res)


def unpack(data: bytes) -> tuple[float, WorkerResult]:
    return _HEAD.unpack_from(data)[0], _res_dec.decode(memoryview(data)[_HEAD.size:])


def _rerun(key: str) -> bool:
    """True if the scheduler marked this task as a re-run after its worker died."""
    try:
        from distributed import get_worker

        ts = get_worker().state.tasks.get(key)
    except Exception:  # noqa: BLE001 - not inside a Dask worker (a test calling us directly)
        return False
    return bool(ts is not None and ts.annotations and ts.annotations.get(RERUN))


def _no_memo(key: str, value: bytes) -> None:
    raise NotImplementedError("step.memo.put is not supported on the Dask executor")


def run_task(spec: str, ns: str, blob: bytes) -> bytes:
    """One attempt of one step on a Dask worker; ``pack``-ed result bytes."""
    item = _dispatch_dec.decode(blob)
    if _rerun(task_key(ns, item.seq)):
        # Dask re-runs tasks whose worker died; that attempt is over, and
        # journaled, not Dask, decides about the next one.
        return pack(0.0, WorkerResult("worker_died", error="the Dask worker running the step "
                                      "died"))
    key = (ns, item.seq)
    token = CancelToken(bytearray(SLOT_SIZE), 0, item.seq)
    with _lock:
        if key in _dropped or key in _cancelled:
            return pack(0.0, WorkerResult("cancelled", error="cancelled before it started"))
        _live[key] = token
    try:
        table = _runners.get(spec)
        if table is None:
            table = _runners[spec] = resolve_runners(spec)
        try:
            fn = table.get(item.runner)
        except UnknownRunner as e:  # served before a restart, not any more
            return pack(0.0, WorkerResult("error", permanent=True, error=str(e)))
        step = Step(item.run_id, item.step, item.payload, item.headers, item.attempt, token,
                    None, item.signal, Memo(item.memo, _no_memo),
                    children=None if item.children is None else Children(item.children))
        step.runner = table.name_of(item.runner)
        t0 = time.perf_counter()
        res = run_one(fn, step)
        return pack(time.perf_counter() - t0, res)
    finally:
        with _lock:
            _live.pop(key, None)


def deliver(ns: str, seqs: list[int], drop: bool) -> None:
    """Run by ``client.run`` in every worker process: cancel (or drop) these steps here."""
    now = time.monotonic()
    with _lock:
        table = _dropped if drop else _cancelled
        for seq in seqs:
            key = (ns, seq)
            token = _live.get(key)
            if token is not None:
                token.cancel()
            table[key] = now
        for t in (_cancelled, _dropped):  # oldest first: forget the stale, cap the count
            while t:
                k, at = next(iter(t.items()))
                if len(t) <= _KEEP_N and now - at <= _KEEP_S:
                    break
                del t[k]
