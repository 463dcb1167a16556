"""One run as the state machine holds it, and its snapshot and public forms.

``State`` (``state.py``) is the only writer of a ``Run``: the fold mutates it
in place. A snapshot copies it to a ``RunSnapshot`` record and back;
``outcome_of``/``attempts_of`` give the public views.
"""

from __future__ import annotations

from .api import Attempt, RunOutcome, RunStatus
from .blobs import same_content, value_size
from .records import RunSnapshot, Submitted

PENDING, RUNNING, WAITING = "pending", "running", "waiting"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
# Payloads kept per step for 'fork' (inline bytes together, a blob ref its ref's size):
# past this a step's entry is None: a live run's memory, its snapshot and its archive row
# grow by at most this. 64 KiB, not more: a payload sweep at 1 MiB a run held 35 MB of
# 4 KB payloads and 170 MB of 64 KB ones in the supervisor (1.6 and 14 MB without a trail).
TRAIL_BYTES = 64 << 10
_STATUS = {s.value: s for s in RunStatus}  # RunStatus(v) costs ~1.4 us a call, this ~0.1


class Run:
    """Everything known about one run; mutated only by ``State.apply``."""

    __slots__ = (
        "run_id", "input", "headers", "submitted_at", "priority", "max_attempts",
        "step_timeout", "step", "payload", "attempt", "failures", "abandons", "due_at",
        "status", "leased", "worker", "leased_at", "cancel_reason", "result", "error",
        "finished_at", "hook_delivered", "dead", "traceback", "kind", "seq",
        "wait_key", "signals", "woken", "used_keys", "memos", "history", "order",
        "runner",
        "resources", "key",
        "trail", "trail_bytes",
        "parent", "spawn_step", "spawned", "pending",
    )

    def __init__(self, rec: Submitted, seq: int) -> None:
        self.run_id = rec.run_id
        self.input = rec.input
        self.headers = rec.headers
        self.submitted_at = rec.at
        self.priority = rec.priority
        self.max_attempts = rec.max_attempts
        self.step_timeout = rec.step_timeout
        self.step = 0
        self.payload = rec.input
        self.attempt = 0
        self.failures = 0
        self.abandons = 0
        self.due_at = 0.0
        self.status = PENDING
        self.leased = False
        self.worker = -1
        self.leased_at = 0.0
        self.cancel_reason: str | None = None
        self.result: bytes | None = None
        self.error: str | None = None
        self.finished_at: float | None = None
        self.hook_delivered = False
        self.dead = False
        self.traceback = ""
        self.kind = ""
        self.seq = seq
        self.wait_key = ""  # parked on this signal key (or woken from it)
        self.signals: dict[str, bytes] = {}  # buffered: sent before the run waited
        self.woken: list | None = None  # [key, data, timed_out] for the next step
        self.used_keys: list[str] = []
        self.memos: dict[str, bytes] = {}  # of the current step
        # One entry per delivery: [step, attempt, worker, started, finished, outcome,
        # error, traceback]; lists, not Structs, because the fold fills them in later.
        self.history: list[list] = []
        self.order = 0  # submission order: the ready queue serves older runs first
        self.runner = rec.runner  # "": the supervisor's default runner
        self.resources = rec.resources  # held while a step is leased (journaled.quotas)
        self.key = rec.key
        self.parent = rec.parent  # a spawned child: its parent's run id
        # A parent (journaled.fanout): the step that spawned last, how many children
        # it spawned and how many of them are not terminal yet (parked while > 0).
        self.spawn_step = -1
        self.spawned = 0
        self.pending = 0
        # trail[k - 1]: the payload that entered step k (None once over TRAIL_BYTES).
        self.trail: list = []
        self.trail_bytes = 0

    def keep_payload(self, payload: object) -> None:
        """Remember the payload entering the next step, for 'fork' (bounded)."""
        n = value_size(payload)  # type: ignore[arg-type]
        if self.trail_bytes + n > TRAIL_BYTES:
            self.trail.append(None)
            return
        self.trail_bytes += n
        self.trail.append(payload)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def steps(self) -> int:
        """Steps run to completion (a step that ended the run by its verdict counts)."""
        return steps_of(self.status, self.kind, self.step)


def same_submission(a: tuple[object, dict[str, str], str], input: object,
                    headers: dict[str, str], runner: str) -> bool:
    """Is a re-submit of ``a`` (input, headers, runner) the same run? Else ``RunConflict``.

    The runner counts: the same id sent to another runner is another run, never a
    silent no-op that would leave the caller believing its runner got it.
    """
    return a[2] == runner and a[1] == headers and same_content(a[0], input)  # type: ignore[arg-type]


def steps_of(status: str, kind: str, step: int) -> int:
    """``Run.steps`` from its parts (a ``RunSnapshot`` has them too)."""
    return step + 1 if status == SUCCEEDED or kind in ("fail", "cancel") else step


def run_to_snapshot(r: Run) -> RunSnapshot:
    # All positional, in RunSnapshot's field order: keywords cost msgspec a name
    # match each (1.6 us a call with eight of them, 0.75 without; once per finished run).
    return RunSnapshot(
        r.run_id, r.input, r.submitted_at, r.headers, r.priority, r.max_attempts, r.step_timeout,
        r.step, r.payload, r.attempt, r.failures, r.abandons, r.due_at, r.status,
        r.cancel_reason, r.result, r.error, r.finished_at, r.hook_delivered, r.dead, r.traceback,
        r.seq, r.leased, r.worker, r.leased_at, r.kind, r.wait_key, r.signals, r.woken,
        r.used_keys, r.memos, r.history, r.order, r.runner, r.resources, r.key,
        r.trail, r.parent, r.spawn_step, r.spawned, r.pending)


def run_from_snapshot(s: RunSnapshot) -> Run:
    run = Run(Submitted(s.run_id, s.input, s.submitted_at, s.headers, s.priority,
                        s.max_attempts, s.step_timeout, runner=s.runner,
                        resources=s.resources, key=s.key, parent=s.parent), s.seq)
    run.step, run.payload, run.attempt = s.step, s.payload, s.attempt
    run.failures, run.abandons, run.due_at, run.status = s.failures, s.abandons, s.due_at, s.status
    run.cancel_reason, run.result, run.error = s.cancel_reason, s.result, s.error
    run.finished_at, run.hook_delivered, run.dead = s.finished_at, s.hook_delivered, s.dead
    run.traceback, run.leased, run.worker = s.traceback, s.leased, s.worker
    run.leased_at, run.kind = s.leased_at, s.kind
    run.wait_key, run.signals, run.woken = s.wait_key, dict(s.signals), s.woken
    run.used_keys, run.memos = list(s.used_keys), dict(s.memos)
    run.history = [list(h) for h in s.history]
    run.order = s.order
    run.trail = list(s.trail)
    run.trail_bytes = sum(value_size(v) for v in run.trail)
    run.spawn_step, run.spawned, run.pending = s.spawn_step, s.spawned, s.pending
    return run


def outcome_of(run: Run) -> RunOutcome:
    """The public view of a run; ``result``/``finished_at`` only once terminal."""
    status = run.status  # Run.terminal and Run.steps inlined: twice per serial run
    done = status in TERMINAL
    steps = run.step + 1 if status == SUCCEEDED or run.kind in ("fail", "cancel") else run.step
    return RunOutcome(run.run_id, _STATUS[status], run.result if done else None,
                      run.error, steps, run.submitted_at, run.finished_at if done else None)


def attempts_of(run: Run) -> list[Attempt]:
    """The run's attempt history in its public form."""
    return [Attempt(h[0], h[1], h[2], h[3], h[4], h[5], h[6] or "", h[7] or "",
                    h[8] if len(h) > 8 else 0)
            for h in run.history]
