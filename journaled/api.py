"""The step contract a runner sees: ``Step``, ``CancelToken``, outcomes, ``StepError``.

Mirrors the Rust ``StepRunner`` trait of the Taquba workflow crate: a
runner is called with one ``Step`` and returns one outcome, or raises
``StepError``. This module knows nothing of the supervisor or the journal.
"""

from __future__ import annotations

import enum
import struct
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Callable, TypeVar, Union

import msgspec

RESERVED_HEADER_PREFIX = "journaled."


class Continue(msgspec.Struct, frozen=True):
    """The run is not finished: step ``n + 1`` runs next with ``payload``."""

    payload: Any = b""  # bytes, or a msgspec value (typed payloads)


class ContinueAfter(msgspec.Struct, frozen=True):
    """Like ``Continue``, but the next step becomes due ``delay`` from now.

    The due time is stored as wall-clock time in the journal, so a delay
    survives supervisor restarts. ``delay`` is seconds or a ``timedelta``.
    """

    payload: Any = b""  # bytes, or a msgspec value (typed payloads)
    delay: Union[float, timedelta] = 0.0

    def delay_seconds(self) -> float:
        d = self.delay
        return d.total_seconds() if isinstance(d, timedelta) else float(d)


class Succeed(msgspec.Struct, frozen=True):
    """The run finished successfully with ``result``."""

    result: Any = b""  # bytes, or a msgspec value (typed payloads)


class Fail(msgspec.Struct, frozen=True):
    """The run finished as failed by the runner's verdict; nothing is dead-lettered.

    Use it for workflow-level "no" answers (validation, policy). For
    infrastructure trouble raise ``StepError`` instead: that retries or
    dead-letters the step so an operator can find it with ``journaled dead``.
    """

    reason: str = ""


class Cancel(msgspec.Struct, frozen=True):
    """The run finished as cancelled by the runner's own decision."""

    reason: str = ""


class ContinueOnSignal(msgspec.Struct, frozen=True):
    """Park the run until ``Client.signal(run_id, key, data)`` arrives or ``timeout`` passes.

    The next step gets ``payload`` and sees ``step.signal`` (its ``key``,
    ``data`` and ``timed_out``). A signal sent before the run parks is kept
    durably (one per key, the last one wins) and delivered when it does. A
    run may wait on a given key once; a second wait on it is a permanent
    error. ``timeout`` is seconds or a ``timedelta``; ``None`` waits forever.
    """

    payload: Any = b""  # bytes, or a msgspec value (typed payloads)
    key: str = ""
    timeout: Union[float, timedelta, None] = None

    def timeout_seconds(self) -> float:
        t = self.timeout
        if t is None:
            return 0.0
        return t.total_seconds() if isinstance(t, timedelta) else float(t)


class Spawn(msgspec.Struct, frozen=True):
    """Fan out: start one child run per input in ``children``, then fan in.

    The children and this step's outcome are journaled as one record, so a
    crash leaves both or neither. Child ``i`` gets run id
    ``PARENT:s<step>.<i>`` (the same on every retry of the step: a retried
    step never forks twice), the parent's headers (or ``headers``), priority
    and retry options, and runs through the same runner. The parent parks,
    holding no worker, until every child is terminal; its next step then
    gets ``then`` as payload and ``step.children``: the children's outcomes
    in order. A failed child does not fail the parent; the next step looks
    at the statuses and decides. Cancelling the parent cancels its live children.
    """

    children: list[bytes] = []
    then: bytes = b""
    headers: Union[dict[str, str], None] = None


Outcome = Union[Continue, ContinueAfter, ContinueOnSignal, Spawn, Succeed, Fail, Cancel]
OUTCOME_TYPES = (Continue, ContinueAfter, ContinueOnSignal, Spawn, Succeed, Fail, Cancel)


class Signal(msgspec.Struct, frozen=True, array_like=True):
    """What woke a parked run: ``data`` sent with ``key``, or ``timed_out``."""

    key: str
    data: bytes = b""
    timed_out: bool = False


class Attempt(msgspec.Struct, frozen=True):
    """One delivery of one step, as ``Client.history`` reports it.

    ``outcome`` is ``running``, ``completed``, ``retried``, ``dead_lettered``,
    ``timed_out``, ``worker_died``, ``oom`` (killed for memory), ``abandoned``
    (a supervisor crash) or ``cancelled``. Times are wall-clock seconds since the epoch.
    """

    step: int
    attempt: int
    worker: int
    started_at: float
    finished_at: Union[float, None] = None
    outcome: str = "running"
    error: str = ""
    traceback: str = ""
    peak_rss: int = 0  # outcome oom (or dead-lettered for memory): peak resident bytes


class Memo:
    """A durable key-value store scoped to one ``(run_id, step_number)``.

    Record the result of an expensive or external sub-task with ``put`` and
    skip it with ``get`` when the step is retried after a crash. ``put``
    returns only once the value is durable in the journal. Absence is always
    safe: a value may be missing (a ``put`` not yet durable when the worker
    died), never wrong. Memos go away with the run's retention. A value over
    the blob threshold is written as a blob first; only its ref is journaled.
    """

    __slots__ = ("_values", "_put", "_blobs")

    def __init__(self, values: dict[str, Any] | None = None,
                 put: Callable[[str, Any], None] | None = None, blobs: Any = None) -> None:
        self._values = dict(values or {})  # bytes, or BlobRefs read on get
        self._put = put
        self._blobs = blobs  # a journaled.blobs.BlobStore, or None: everything inline

    def get(self, key: str, default: bytes | None = None) -> bytes | None:
        v = self._values.get(key)
        if v is None:
            return default
        if not isinstance(v, (bytes, bytearray)):
            v = _blob_store(self._blobs).read(v)
        return v

    def put(self, key: str, value: bytes) -> None:
        """Store ``value`` durably; ``InputTooLarge`` if it (or the step's memos) is too big."""
        if not isinstance(key, str) or not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError("memo keys are str and values bytes")
        from .limits import MAX_MEMOS, check_size

        blobs = self._blobs
        stored: Any
        if type(value) is not bytes:
            from .blobs import as_bytes_view

            value = as_bytes_view(f"memo {key[:64]!r}", value)
        if blobs is not None and len(value) > blobs.threshold:
            stored = blobs.put(value)  # durable before the journal names it
        else:
            stored = bytes(value)
            check_size(f"memo {key[:64]!r}", stored)
        from .blobs import value_size

        total = value_size(stored) + sum(value_size(v) for k, v in self._values.items()
                                         if k != key)
        if total > MAX_MEMOS:
            from .errors import InputTooLarge

            raise InputTooLarge("this step's memos together", total, MAX_MEMOS)
        if self._put is not None:
            self._put(key, stored)
        self._values[key] = stored

    def __contains__(self, key: str) -> bool:
        return key in self._values


def _blob_store(blobs: Any) -> Any:
    """The given store, else the one of ``$JOURNALED_STATE`` (set in every worker)."""
    if blobs is not None:
        return blobs
    import os

    from .blobs import BlobStore

    state = os.environ.get("JOURNALED_STATE")
    if not state:
        raise RuntimeError("this value is a blob and no state directory is known to read it")
    return BlobStore(state)


_E = TypeVar("_E", bound="StepError")


class StepError(Exception):
    """An infrastructure failure of one step.

    ``raise StepError.transient(msg)`` retries with exponential backoff and
    jitter until ``max_attempts`` failures, then dead-letters the step and the
    run ends ``failed``. ``raise StepError.permanent(msg)`` dead-letters at
    once. Any other exception a runner raises counts as transient.

    ``permanent`` and ``transient`` are plain classmethod constructors (as
    Taquba's ``StepError::permanent``); the flag is ``is_permanent``. They
    build the error with ``cls(message)`` and set the flag afterwards, so a
    subclass with its own ``__init__(self, message)`` works with both. On an
    instance, ``err.permanent`` is the same flag as ``err.is_permanent`` (an
    instance attribute kept for code written against journaled 0.1); new code
    reads ``is_permanent``.
    """

    # Class-level defaults for a subclass whose ``__init__`` skips ours.
    is_permanent: bool = False
    message: str = ""

    def __init__(self, message: str = "", is_permanent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self._flag(is_permanent)

    def _flag(self, value: bool) -> None:
        self.is_permanent = value
        # 0.1 read ``err.permanent`` as the flag: an instance attribute shadows
        # the classmethod for instances only (a classmethod is not a data descriptor).
        self.__dict__["permanent"] = value

    @classmethod
    def transient(cls: type[_E], message: str) -> _E:
        """An error worth retrying (up to ``max_attempts`` failures)."""
        err = cls(message)
        err._flag(False)
        return err

    @classmethod
    def permanent(cls: type[_E], message: str) -> _E:
        """An error no retry can fix: the step is dead-lettered at once."""
        err = cls(message)
        err._flag(True)
        return err


class Cancelled(BaseException):
    """Raised by ``CancelToken.raise_if_cancelled``; the run ends ``cancelled``.

    A ``BaseException``, like ``asyncio.CancelledError``, so a runner's
    ``except Exception:`` cannot swallow it and carry on with a cancelled run.
    """


class RunStatus(str, enum.Enum):
    """Where a run is. ``waiting``: a delay or a retry backoff is pending."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    def __str__(self) -> str:
        return self.value


_TERMINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})


class RunOutcome(msgspec.Struct, frozen=True):
    """What a run came to, or where it is while live.

    For a live run ``result`` and ``finished_at`` are ``None``. Times are
    wall-clock seconds since the epoch.
    """

    run_id: str
    status: RunStatus
    result: bytes | None = None
    error: str | None = None
    steps: int = 0
    submitted_at: float | None = None
    finished_at: float | None = None


class Children(Sequence[RunOutcome]):
    """``step.children``: the outcomes of the children the previous step spawned, in order.

    Each item is a ``RunOutcome`` (``status``, ``result``, ``error``). A result
    held as a blob is read when its item is taken, so 10,000 big results
    are never in memory at once.
    """

    __slots__ = ("_items", "_blobs")

    def __init__(self, items: list, blobs: Any = None) -> None:
        self._items = items  # [run_id, status, result (bytes, a BlobRef or None), error]
        self._blobs = blobs

    def __len__(self) -> int:
        return len(self._items)

    def _outcome(self, item: list) -> RunOutcome:
        run_id, status, result, error = item[0], item[1], item[2], item[3]
        if result is not None and not isinstance(result, (bytes, bytearray)):
            result = _blob_store(self._blobs).read(result)
        return RunOutcome(run_id, RunStatus(status), result, error)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self._outcome(x) for x in self._items[i]]
        return self._outcome(self._items[i])

    def statuses(self) -> list[str]:
        """Every child's status, without reading any result."""
        return [x[1] for x in self._items]

    def __repr__(self) -> str:
        return f"<Children: {len(self._items)} outcomes>"


class DeadLetter(msgspec.Struct, frozen=True):
    """A run whose step was dead-lettered, as ``dead()`` reports it (a copy, never live state).

    ``step`` is the step that gave up, ``attempt`` its last delivery, ``kind``
    the last failure (``error``, ``timeout``, ``worker_died``, ``abandoned``,
    ...). ``retry(run_id)`` redrives it.
    """

    run_id: str
    step: int
    attempt: int
    kind: str
    error: str | None
    traceback: str
    finished_at: float | None


# Shared-memory slot layout of one worker, 128 bytes, little-endian:
#   0  u64 dispatch sequence number that is cancelled (0 = none)
#   8  u64 dispatch sequence number now running (0 = idle)
#  16  f64 progress done      24 f64 progress total (NaN = unknown)
#  32  u64 sequence number the progress belongs to
#  40  u16 message length     42..120 message, UTF-8, cut to fit
# 120  u64 unused
# After the last slot, one pool-wide u64: non-zero once the supervisor drains.
SLOT_SIZE = 128
_U64 = struct.Struct("<Q")
_PROGRESS = struct.Struct("<ddQH")
_MSG_ROOM = SLOT_SIZE - 42 - 8


def block_size(workers: int) -> int:
    """Bytes of a pool's cancel block: the slots, then the stopping word."""
    return SLOT_SIZE * workers + 8


class CancelToken:
    """Run-scoped cooperative cancellation, read without a syscall.

    Backed by one slot of a shared-memory block: the supervisor writes the
    dispatch sequence number it cancels, the token compares it with its own,
    so a stale flag never cancels the next step. Runners that ignore the
    token stay correct: the outcome of a cancelled run is discarded, and a
    step that does not stop is killed after a grace period.

    ``stopping()`` is the shutdown notice: True once the supervisor began
    draining (the step may finish, but a long one should checkpoint soon).
    """

    __slots__ = ("_buf", "_off", "_seq", "_local", "_stop")

    def __init__(self, buf: Any = None, slot: int = 0, seq: int = 1, stop_at: int = -1) -> None:
        self._buf = buf if buf is not None else bytearray(SLOT_SIZE)
        self._off = slot * SLOT_SIZE
        self._seq = seq
        self._local = buf is None
        self._stop = stop_at  # offset of the pool's stopping word; -1: none

    def is_cancelled(self) -> bool:
        return _U64.unpack_from(self._buf, self._off)[0] == self._seq

    def stopping(self) -> bool:
        """True once the supervisor is shutting down (draining); a plain memory read."""
        return self._stop >= 0 and _U64.unpack_from(self._buf, self._stop)[0] != 0

    def cancel(self) -> None:
        """Cancel this token locally (for tests and ``journaled step``)."""
        _U64.pack_into(self._buf, self._off, self._seq)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until cancelled or ``timeout`` seconds pass; True if cancelled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.0005
        while not self.is_cancelled():
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                time.sleep(min(pause, left))
            else:
                time.sleep(pause)
            pause = min(pause * 2, 0.005)
        return True

    def raise_if_cancelled(self) -> None:
        if self.is_cancelled():
            raise Cancelled("run was cancelled")


class Step:
    """One step of a run, handed to ``runner(step)``.

    Attributes:
        run_id: the caller-visible run id.
        step_number: 0-based; step 0 gets the submission input as payload.
        payload: bytes from the previous ``Continue``/``ContinueAfter`` (a big one
            is read from its blob on first access; ``payload_view()`` maps it
            instead, zero-copy).
        headers: submitter metadata; ``journaled.*`` keys are stripped.
        job_id: unique per step, stable across its attempts.
        attempts: deliveries so far, 1 on the first; >1 after a retry, a
            worker death or a supervisor crash.
        cancel_token: run-scoped: once the run is cancelled every later
            look at it says so.
        signal: the ``Signal`` that woke this step after ``ContinueOnSignal``,
            else ``None``.
        memo: durable key-value store of this ``(run_id, step_number)``.
        children: after a step that returned ``Spawn``, the ``Children`` outcomes
            (a sequence of ``RunOutcome``, in spawn order), else ``None``.

    Steps must be idempotent per ``(run_id, step_number)``: delivery is
    at-least-once.
    """

    __slots__ = ("run_id", "step_number", "_payload", "_ref", "_blobs", "headers", "job_id",
                 "attempts", "cancel_token", "signal", "memo", "_progress", "_type", "runner",
                 "children")

    def __init__(self, run_id: str, step_number: int, payload: Any,
                 headers: dict[str, str] | None = None, attempts: int = 1,
                 cancel_token: CancelToken | None = None,
                 progress: Callable[[float, float | None, str], None] | None = None,
                 signal: Signal | None = None, memo: Memo | None = None,
                 blobs: Any = None, children: Children | None = None) -> None:
        self.run_id = run_id
        self.step_number = step_number
        # ``payload`` is bytes, or a BlobRef read from its blob on first use.
        if isinstance(payload, (bytes, bytearray)):
            self._payload: bytes | None = payload
            self._ref: Any = None
        else:
            self._payload, self._ref = None, payload
        self._blobs = blobs
        self.headers = {k: v for k, v in (headers or {}).items()
                        if not k.startswith(RESERVED_HEADER_PREFIX)}
        self.job_id = f"{run_id}#{step_number}"
        self.attempts = attempts
        self.cancel_token = cancel_token if cancel_token is not None else CancelToken()
        self.signal = signal
        self.memo = memo if memo is not None else Memo()
        self._progress = progress
        self._type: Any = None  # what ``@journaled.typed`` declared for the input
        self.runner = ""  # the name of the runner serving the run ("" outside a worker)
        self.children = children

    @property
    def payload(self) -> bytes:
        """The step's input bytes; a big payload is read from its blob on first access."""
        p = self._payload
        if p is None:
            p = self._payload = _blob_store(self._blobs).read(self._ref)
        return p

    @payload.setter
    def payload(self, value: bytes) -> None:
        self._payload, self._ref = value, None

    def payload_view(self) -> memoryview:
        """The payload as a read-only ``memoryview``, zero-copy for a big one.

        Over an ``mmap`` of the payload's blob (pages come from the page
        cache, nothing is copied): ``numpy.frombuffer(step.payload_view(),
        dtype=...)`` gives an array without reading the bytes into memory
        first. Small payloads: a view of the bytes. Keep the view (or the
        array) only for the step; the mapping closes when the last one goes.
        """
        if self._payload is not None or self._ref is None:
            return memoryview(self.payload).toreadonly()
        return _blob_store(self._blobs).view(self._ref)

    def input(self, type: Any = None) -> Any:
        """The payload decoded (msgpack, validated) as ``type``: a Struct, dict, list...

        Without ``type``, the one ``@journaled.typed`` declared. A payload that
        does not fit raises a permanent ``StepError`` naming the field
        (``... - at `$.qty```), which dead-letters the step unless caught.
        """
        from .typed import decode

        tp = type if type is not None else self._type
        if tp is None:
            raise TypeError("step.input() needs a type: step.input(Order), or declare it "
                            "with @journaled.typed(Order) on the runner")
        return decode(tp, self.payload)

    def progress(self, done: float, total: float | None = None, message: str = "") -> None:
        """Report progress; cheap (a shared-memory write), never journaled."""
        if self._progress is not None:
            self._progress(done, total, message)

    def __repr__(self) -> str:
        shown = repr(self._payload[:32]) if self._payload is not None else \
            f"<blob {self._ref.size:,} bytes>"
        return (f"Step(run_id={self.run_id!r}, step_number={self.step_number}, "
                f"attempts={self.attempts}, payload={shown})")


def write_progress(buf: Any, slot: int, seq: int, done: float, total: float | None,
                   message: str) -> None:
    """Store a progress report in a worker's slot; the reader checks ``seq``."""
    raw = message.encode("utf-8", "replace")[:_MSG_ROOM]
    off = slot * SLOT_SIZE
    _PROGRESS.pack_into(buf, off + 16, float(done),
                        float("nan") if total is None else float(total), seq, len(raw))
    buf[off + 42: off + 42 + len(raw)] = raw


def read_progress(buf: Any, slot: int) -> tuple[int, float, float | None, str]:
    """Return ``(seq, done, total, message)`` last reported in a slot."""
    off = slot * SLOT_SIZE
    done, total, seq, n = _PROGRESS.unpack_from(buf, off + 16)
    msg = bytes(buf[off + 42: off + 42 + min(n, _MSG_ROOM)]).decode("utf-8", "replace")
    return seq, done, (None if total != total else total), msg
