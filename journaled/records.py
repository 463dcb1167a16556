"""The journal's record types: frozen, tagged msgspec Structs, one per transition.

Each record is one state transition, so a torn batch leaves a consistent
prefix. Tags are short and explicit because they are on disk; new fields
go last with defaults and no field ever changes type. Public outcomes
(``journaled.api``) become records only in ``state.py``'s
``outcome_records``, so editing a public class never silently changes
the disk format. Times are wall-clock seconds since the epoch.
"""

from __future__ import annotations

from typing import Union

import msgspec

from .blobs import BlobRef

# Big bytes live out of line (``journaled.blobs``): a field that can hold them
# is bytes inline or a BlobRef naming a durable blob (old segments: bytes).
Value = Union[bytes, BlobRef]

class Record(msgspec.Struct, frozen=True, tag_field="t", array_like=True, omit_defaults=True,
             gc=False):
    """Base of every journal record."""


class Submitted(Record, tag="sub"):
    """A run exists. Replay: step 0 is ready with ``input`` as payload."""

    run_id: str
    input: Value
    at: float
    headers: dict[str, str] = {}
    priority: int = 0
    max_attempts: int = 0  # 0: the supervisor's default
    step_timeout: float = 0.0  # 0: the supervisor's default
    runner: str = ""  # the named runner serving the run ("": the supervisor's default)
    resources: dict[str, float] = {}  # name -> amount held while a step is leased (quotas)
    key: str = ""  # concurrency/rate key ("": none); keys are served round-robin
    parent: str = ""  # the run that spawned this one (never journaled so: see ``Spawned``)


class Leased(Record, tag="lea"):
    """Durable before the step reaches a worker. Replay: the step is in flight, the attempt is spent."""

    run_id: str
    step: int
    attempt: int
    worker: int
    at: float


class Released(Record, tag="rel"):
    """A lease handed back without an outcome.

    Replay: unstarted (queued behind a dead step, taken back, skipped at
    shutdown) it is not a delivery; ``started`` (a lost executor, or a
    worker that died holding its result) it counts as an abandoned
    delivery, like a supervisor crash, not as a failure. ``started`` with
    ``shutdown``: the supervisor's own drain cut the step; the delivery is
    spent but counts toward nothing (a deploy is not a crash).
    """

    run_id: str
    step: int
    attempt: int
    started: bool = False
    at: float = 0.0
    shutdown: bool = False  # with started: cut at the drain timeout, not an abandon


class StepDone(Record, tag="don"):
    """A step returned ``Continue``/``ContinueAfter``. Replay: the next step is ready at ``due_at``."""

    run_id: str
    step: int
    attempt: int
    payload: Value
    at: float
    due_at: float = 0.0  # with signal_key: the wait's timeout (0 = none)
    signal_key: str = ""  # park until a signal with this key arrives


class AttemptFailed(Record, tag="fai"):
    """An attempt failed and will be retried at ``retry_at``. Replay: a failure is counted.

    ``kind`` is ``error``, ``timeout``, ``worker_died`` or ``oom``.
    """

    run_id: str
    step: int
    attempt: int
    kind: str
    error: str
    at: float
    retry_at: float
    traceback: str = ""
    peak_rss: int = 0  # kind oom: the worker's peak resident bytes during the step


class CancelRequested(Record, tag="can"):
    """Someone asked to cancel the run. Replay: the token is set; the run ends cancelled."""

    run_id: str
    reason: str
    at: float


class Terminated(Record, tag="end"):
    """The run's one terminal transition. Replay: the run is finished.

    ``status`` is ``succeeded``, ``failed`` or ``cancelled``. ``dead`` marks
    a dead-lettered step (retries exhausted, permanent error, abandons).
    """

    run_id: str
    status: str
    at: float
    step: int
    attempt: int = 0
    result: Union[bytes, BlobRef, None] = None
    error: Union[str, None] = None
    dead: bool = False
    traceback: str = ""
    kind: str = ""
    peak_rss: int = 0  # kind oom: the worker's peak resident bytes during the step


class HookDelivered(Record, tag="hok"):
    """``on_terminal`` returned for this run. Replay: do not fire it again."""

    run_id: str


class Recovered(Record, tag="rec"):
    """A supervisor started on this journal. Replay: every lease still open was abandoned."""

    at: float
    pid: int = 0
    app: str = ""  # the runner's import string, for 'journaled step'


class SignalSent(Record, tag="sig"):
    """A signal for a run. Replay: wakes the run parked on ``key``, else is buffered."""

    run_id: str
    key: str
    data: bytes
    at: float


class MemoPut(Record, tag="mem"):
    """A step stored a memo value. Replay: retries of that step see it."""

    run_id: str
    step: int
    key: str
    value: Value


class Redriven(Record, tag="rdv"):
    """An operator redrove a dead-lettered run. Replay: its dead step runs again, fresh attempts."""

    run_id: str
    at: float


class Archived(Record, tag="arc"):
    """These finished runs are durable in ``archive.sqlite3``. Replay: drop them from the state.

    Written only after the archive commit returned, so a run is always in
    the journal, the archive, or both (then replay archives it again: an upsert).
    """

    run_ids: list[str]
    at: float


class RunSnapshot(msgspec.Struct, frozen=True, array_like=True, omit_defaults=True):
    """One live or retained run inside a ``Snapshot``."""

    run_id: str
    input: Value
    submitted_at: float
    headers: dict[str, str]
    priority: int
    max_attempts: int
    step_timeout: float
    step: int
    payload: Value
    attempt: int
    failures: int
    abandons: int
    due_at: float
    status: str
    cancel_reason: Union[str, None] = None
    result: Union[bytes, BlobRef, None] = None
    error: Union[str, None] = None
    finished_at: Union[float, None] = None
    hook_delivered: bool = False
    dead: bool = False
    traceback: str = ""
    seq: int = 0
    leased: bool = False
    worker: int = -1
    leased_at: float = 0.0
    kind: str = ""
    wait_key: str = ""
    signals: dict[str, bytes] = {}
    woken: Union[list, None] = None  # [key, data, timed_out] for the next step
    used_keys: list[str] = []
    memos: dict[str, Value] = {}
    history: list[list] = []  # [step, attempt, worker, started, finished, outcome, error, tb]
    order: int = 0  # submission order: ready runs of one priority go oldest run first
    runner: str = ""
    resources: dict[str, float] = {}
    key: str = ""
    # The payload that entered each step 1..step (fork from step N), bounded (run.TRAIL_BYTES).
    trail: list[Union[bytes, BlobRef, None]] = []
    parent: str = ""  # a spawned child: its parent's run id
    # A parent (journaled.fanout): its last Spawn's step, its child count, the live ones.
    spawn_step: int = -1
    spawned: int = 0
    pending: int = 0


class Restored(Record, tag="rst"):
    """An archived dead-lettered run brought back to be redriven (a ``Redriven`` follows).

    Replay: the run is in the state again, as it was archived.
    """

    run: RunSnapshot


class Snapshot(Record, tag="snp"):
    """Every run worth keeping at compaction time, in parts of bounded size.

    Replay: part 0 replaces the whole state; later parts add their runs.
    """

    at: float
    runs: list[RunSnapshot]
    part: int = 0
    app: str = ""  # part 0: the runner's import string last recovered, for 'journaled step'
    last_at: float = 0.0  # time of the last record folded before it (ends abandoned attempts)
    hooks: bool = False  # hooks were in use: undelivered terminal runs are kept
    order: int = 0  # part 0: the submission counter (archived runs took numbers too)
    schedules: list["Schedule"] = []  # part 0: every schedule with its cursor
    paused: list[str] = []  # part 0: dispatch paused for these keys ("*": all; see pausing)


class Schedule(msgspec.Struct, array_like=True, omit_defaults=True):
    """One schedule as the state holds it (and a snapshot keeps it): definition and cursor.

    ``cursor`` is the last tick handled (submitted, or skipped by the
    catch-up policy), epoch seconds; ticks after it are still owed.
    """

    name: str
    cron: str
    input: bytes
    created_at: float
    cursor: float
    headers: dict[str, str] = {}
    catch_up: str = "one"
    tz: str = "UTC"
    paused: bool = False


class ScheduleSet(Record, tag="sst"):
    """A schedule was added (or redefined). Replay: it exists; its first tick is after ``at``."""

    name: str
    cron: str
    input: bytes
    at: float
    headers: dict[str, str] = {}
    catch_up: str = "one"
    tz: str = "UTC"


class ScheduleChanged(Record, tag="sch"):
    """A schedule was paused, resumed or removed (``action``). Replay: so it stays."""

    name: str
    action: str
    at: float


class ScheduleCursor(Record, tag="scu"):
    """Ticks up to ``tick`` are handled. Written in the same batch as those ticks' ``Submitted``,
    after them: a torn batch keeps a submission without its cursor (the id makes the
    re-submit a no-op), never a cursor without its submission (a skipped tick)."""

    name: str
    tick: float
    at: float


class DispatchPaused(Record, tag="dpa"):
    """No new step of matching runs is leased while paused (``key``; ``all``: every run)."""

    key: str
    paused: bool
    at: float
    all: bool = False


class Forked(Record, tag="frk"):
    """A new run that starts at ``step`` with ``payload``, copied from ``source``'s history.

    Replay: the run exists, ready at ``step``, with ``memos`` as that step's memos and the
    source's trail up to ``step``; the source run is untouched.
    """

    run_id: str
    source: str
    step: int
    input: Value
    payload: Value
    at: float
    headers: dict[str, str] = {}
    priority: int = 0
    max_attempts: int = 0
    step_timeout: float = 0.0
    memos: dict[str, Value] = {}
    trail: list[Union[bytes, BlobRef, None]] = []
    runner: str = ""  # the source's runner, resources and key carry over
    resources: dict[str, float] = {}
    key: str = ""


class Spawned(Record, tag="spn"):
    """A step returned ``Spawn``: its outcome and its children's submissions, as one record.

    Replay: the parent's step is done (``then`` is the next step's payload)
    and it parks until every child is terminal; child ``i`` exists with
    ``children[i]`` as input and run id ``fanout.child_id(run_id, step, i)``.
    One record, so a torn write or a crash has all of them or none.
    ``headers`` is ``None`` when the children inherit the parent's.
    """

    run_id: str
    step: int
    attempt: int
    then: Value
    at: float
    children: list[Value]
    headers: Union[dict[str, str], None] = None


AnyRecord = Union[Submitted, Leased, Released, StepDone, AttemptFailed, CancelRequested,
                  Terminated, HookDelivered, Recovered, Redriven, SignalSent, MemoPut, Snapshot,
                  Archived, Restored, ScheduleSet, ScheduleChanged, ScheduleCursor,
                  DispatchPaused, Forked, Spawned]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyRecord)

encode = _encoder.encode
decode = _decoder.decode
