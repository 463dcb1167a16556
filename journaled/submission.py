"""Submissions checked and packed: from callers' inputs to inbox messages.

``submit_msgs`` turns inputs, headers and options into ``SubmitMsg``s
that pass every check the supervisor applies (types, sizes, ids, limits;
big inputs written as blobs first), and ``_batches`` packs them into inbox
files. ``Client``, ``Runtime`` and the asyncio client all submit through
it, which is why it lives apart from ``client.py``: it is the submit
path's rules, not one caller's way of delivering them. No journal, no
socket: only the blob store for inputs over the threshold.
"""

from __future__ import annotations

import itertools
import os
import time
from datetime import timedelta
from typing import Any, Callable, Iterable, Sequence

from .app import check_runner_name
from .blobs import BlobRef, BlobStore, same_content, value_size
from .errors import RunConflict
from .inbox import (
    MAX_FILE,
    BatchMsg,
    Message,
    SubmitMsg,
    check_headers,
    check_int,
    check_run_id,
    check_value,
    seconds,
    to_stored,
)
from .protocol import MAX_FRAME, Submit
from .quotas import check_fits, check_key, check_resources
from .typed import as_payload

# A batch file stays well under what the supervisor reads in one go.
_BATCH_BYTES = MAX_FILE // 2


def _reseed_ids() -> None:
    """A new random base for this process's id tails (at import, and in a forked child)."""
    global _ID_BASE, _ID_COUNT
    _ID_BASE = int.from_bytes(os.urandom(4), "little")
    _ID_COUNT = itertools.count()


_ID_BASE = 0
_ID_COUNT = itertools.count()
_reseed_ids()
os.register_at_fork(after_in_child=_reseed_ids)  # a child must not repeat its parent's tails


def new_run_id() -> str:
    """Time-ordered and unique: ids sort in submission order.

    The tail (8 hex digits, as before) is a per-process random base plus a
    counter, not ``os.urandom`` per id: no syscall per submit (one per run
    on the serial path), and no two ids of one process share a tail even if
    the clock repeats or steps back. Across processes it is as random as
    before: a collision needs the same nanosecond and the same 32 bits.
    """
    # hex() rather than an f-string's format specs: the same text, ~5 us less on the
    # cold caches each submit that sleeps until its ack runs on.
    return ("r-" + hex(time.time_ns())[2:] + "-"
            + hex(((_ID_BASE + next(_ID_COUNT)) & 0xFFFFFFFF) | 0x100000000)[3:])


def is_plain(input: Any, headers: Any, run_id: Any, runner: Any, priority: Any,
             max_attempts: Any, step_timeout: Any, resources: Any, key: Any,
             inline_max: int) -> bool:
    """A submit of bytes with every option at its default (most calls), small enough to
    stay inline: ``Runtime.submit`` and ``Client.submit`` build it directly, without
    ``submit_msgs``' general checks, which each of its defaults passes as is."""
    return (type(input) is bytes and headers is None and run_id is None
            and (runner is None or runner == "") and resources is None and key is None
            and type(priority) is int and not priority
            and type(max_attempts) is int and not max_attempts
            and (step_timeout is None
                 or (type(step_timeout) in (int, float) and not step_timeout))
            and len(input) <= inline_max)


def submit_msgs(inputs: Iterable[bytes], headers: dict[str, str] | Sequence[dict[str, str]] | None,
                run_ids: Sequence[str] | None, priority: int, max_attempts: int,
                step_timeout: float | timedelta | None, blobs: BlobStore | None = None,
                runner: str | None = None, *, resources: dict[str, float] | None = None,
                key: str | None = None,
                limits: dict[str, float] | None = None) -> tuple[list[SubmitMsg], list[str]]:
    """Checked submissions (one per distinct run id) and the id of every input, in order.

    A run id given twice with the same input and headers is one run; with
    other input it is ``RunConflict``, raised before anything is queued.
    Inputs over ``blobs``' threshold are written as blobs (durably) once every
    item passed its checks, so the messages carry refs, never big bytes.
    ``limits`` (the supervisor's, from ``STATE/serving.json``): a run asking
    for more raises ``OverLimit`` here, before anything is queued.
    ``headers`` is every item's, or a list with one dict per input
    (``submit --each-line`` JSON lines).
    """
    if isinstance(inputs, (bytes, bytearray, memoryview, str)):
        raise TypeError("inputs must be a list of bytes (for one input use submit())")
    if isinstance(run_ids, str):
        raise TypeError("run_ids must be a list of str (for one id use submit())")
    each = [check_headers(h) for h in headers] if isinstance(headers, (list, tuple)) else None
    hdrs = check_headers(headers) if each is None else {}
    prio = check_int("priority", priority)
    attempts = check_int("max_attempts", max_attempts, 0, (1 << 31) - 1)
    timeout = seconds("step_timeout", step_timeout)
    name = check_runner_name(runner or "")
    res = check_resources(resources)
    k = check_key(key)
    now = time.time()
    # Typed payloads: a Struct, dict, list... is msgpack-encoded here; bytes stay as they are.
    ins = [as_payload("the input", data) for data in inputs]
    if run_ids is not None and len(run_ids) != len(ins):
        raise ValueError(f"got {len(ins)} inputs but {len(run_ids)} run ids")
    if each is not None and len(each) != len(ins):
        raise ValueError(f"got {len(ins)} inputs but {len(each)} header dicts")
    checked: list[tuple[str, Any, dict[str, str]]] = []
    ids: list[str] = []
    seen: dict[str, Any] = {}
    for i, data in enumerate(ins):
        raw = check_value("the input" if len(ins) == 1 else f"input {i}", data, blobs)
        rid = check_run_id(run_ids[i]) if run_ids is not None else new_run_id()
        ids.append(rid)
        if rid in seen:
            if not _same_input(seen[rid], raw):
                raise RunConflict(rid)
            continue
        seen[rid] = raw
        if limits:
            check_fits(rid, res, limits)
        checked.append((rid, raw, hdrs if each is None else each[i]))
    # Every item passed: now the big inputs become blobs, durable before any message.
    out = [SubmitMsg(rid, to_stored(raw, blobs), now, h, prio, attempts, timeout, name,
                     resources=res, key=k)
           for rid, raw, h in checked]
    return out, ids


def _same_input(a: Any, b: Any) -> bool:
    if isinstance(a, BlobRef) or isinstance(b, BlobRef):
        return same_content(a if isinstance(a, BlobRef) else bytes(a),
                            b if isinstance(b, BlobRef) else bytes(b))
    return a == b


def _frame_bytes(items: list[SubmitMsg]) -> int:
    """About how big a frame these submissions make (over: they go through the inbox)."""
    return sum((len(m.input) if isinstance(m.input, bytes) else 64) + 256
               + sum(len(k) + len(v) for k, v in m.headers.items()) for m in items)


def fits_a_frame(items: list[SubmitMsg]) -> bool:
    """Whether one socket ``Submit`` carries ``items`` (64 KiB spare for the envelope)."""
    return _frame_bytes(items) < MAX_FRAME - (64 << 10)


def fresh_submit(items: list[SubmitMsg], made_here: bool) -> Callable[[int], Submit]:
    """The ``Submit`` for each try: ``fresh`` (no archive look-up) only for ids made here,
    on the first try; a resend may find its first try applied and archived."""
    tries = [made_here]

    def make(req_id: int) -> Submit:
        fresh, tries[0] = tries[0], False
        return Submit(req_id, items, fresh)
    return make


def _batches(items: list[SubmitMsg]) -> Iterable[Message]:
    """Inbox messages for ``items``: one file, or several when they are big."""
    group: list[SubmitMsg] = []
    size = 0
    for m in items:
        n = value_size(m.input) + 256 + sum(len(k) + len(v) for k, v in m.headers.items())
        if group and size + n > _BATCH_BYTES:
            yield group[0] if len(group) == 1 else BatchMsg(group)
            group, size = [], 0
        group.append(m)
        size += n
    if group:
        yield group[0] if len(group) == 1 else BatchMsg(group)
