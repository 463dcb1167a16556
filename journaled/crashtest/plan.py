"""What each restart of a crash round gets: its kill, its failpoint, its worker and helper kills.

Aimed failpoints go two times in three to the windows of the write-ahead
rule (before the write, before the sync, right after a send, before the
hook), round-robin, at a random one of the commits left to do; a crash
before the write or the sync comes with a short delay after each send, so
a step sent too early has the time to start and the crash can show it.
With ``--kill-helpers`` some restarts also kill the forkserver or the
resource tracker, followed by a worker kill so that a replacement worker
has to be made without it.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..blobs import DEFAULT_THRESHOLD
from .archive import Archive, failures_per_step, steps_done
from .procs import HELPERS

# Where crashtest aims failpoints, with the action each gets. ``%P`` is drawn
# per restart: points hit on every commit get a small P so the crash lands
# at varied commits, rare points a large one. Two aims in three go to the
# windows of the write-ahead rule (CRITICAL, where ordering bugs hide), the
# third to the other points, round-robin within each group.
AIM_POINTS: dict[str, str] = {
    "journal.before_sync": "crash%{p}",
    "supervisor.after_dispatch": "crash%{p}",
    "supervisor.before_hook": "crash%{hp}",
    "journal.before_write": "crash%{p}",
    "supervisor.before_dispatch": "crash%{p}",
    "journal.after_sync": "crash%{p}",
    "supervisor.after_hook": "crash%{hp}",
    "inbox.before_unlink": "crash",
    "archive.before_commit": "crash%{hp}",
    "archive.after_commit": "crash%{hp}",
    "archive.after_drop": "crash%{hp}",
    "compact.before_rename": "crash",
    "compact.after_rename": "crash",
    "compact.before_delete": "crash",
    "worker.before_step": "exit@{n}",
    "worker.after_step": "exit@{n}",
    # Hit by workers writing payloads over the blob threshold (--payload-bytes 70000).
    "blobs.before_fsync": "exit@{n}",
    "blobs.after_fsync": "exit@{n}",
}
_WORKER_POINTS = ("worker.before_step", "worker.after_step", "blobs.before_fsync",
                  "blobs.after_fsync")
_BLOB_POINTS = ("blobs.before_fsync", "blobs.after_fsync")
CRITICAL = ("journal.before_sync", "supervisor.after_dispatch", "journal.before_write",
            "supervisor.before_hook")
# Set beside an aimed crash to widen its window: a step sent just before the
# crash gets the time to start on its worker, so a lease that was used before
# it was durable shows (harmless when leases are synced before the send).
AIM_EXTRA = {
    "journal.before_sync": "supervisor.after_dispatch=delay:100",
    "journal.before_write": "supervisor.after_dispatch=delay:100",
}
# Share of restarts that aim a failpoint; the rest are killed by the clock.
AIM_SHARE = 0.5


@dataclass
class Config:
    app: str
    runs: int | None = None
    kills: int = 50
    seed: int = 0
    inputs: list[bytes] | None = None
    workers: int = 2
    kill_workers: bool = True
    power_loss: bool = True
    max_attempts: int = 3
    timeout: float = 120.0
    keep: bool = False
    progress: bool = True
    signals: list[tuple[str, bytes]] = field(default_factory=list)
    scratch: Path | None = None  # where the temporary state directories go
    payload_bytes: int = 0  # padding carried in every Continue payload
    kill_helpers: bool = False  # also kill the forkserver and the resource tracker
    readers: bool = True  # run a reader process beside each crash round (check h)
    headers: dict[str, str] = field(default_factory=dict)  # -H: on every run submitted
    runner: str | None = None  # --runner: the named runner every run is submitted to


@dataclass
class Plan:
    """What one restart of the supervisor gets: its kill, its failpoint, its worker kills."""

    seed: int
    kill_at: float | None  # seconds after start; None: let it finish
    aim: str | None = None  # failpoint entry name=action
    worker_kills: list[float] = field(default_factory=list)
    compact_at: float | None = None
    helper_kills: list[tuple[float, str]] = field(default_factory=list)  # (at, kind)

    def describe(self) -> str:
        parts = [f"seed {self.seed}"]
        parts.append(f"kill at {self.kill_at:.2f} s" if self.kill_at is not None
                     else "no kill")
        if self.aim:
            parts.append(f"failpoint {self.aim}")
        if self.worker_kills:
            parts.append("worker kills at " + ", ".join(f"{t:.2f}" for t in self.worker_kills))
        if self.helper_kills:
            parts.append("helper kills " + ", ".join(f"{k} at {t:.2f}"
                                                     for t, k in self.helper_kills))
        if self.compact_at is not None:
            parts.append(f"compact at {self.compact_at:.2f} s")
        return "; ".join(parts)


@dataclass
class Stats:
    rounds: int = 0
    restarts: int = 0
    supervisor_kills: int = 0
    worker_kills: int = 0
    failpoint_kills: int = 0
    helper_kills: Counter[str] = field(default_factory=Counter)  # forkserver, resource_tracker
    helper_kills_planned: int = 0
    helper_kills_missed: int = 0  # the helper was not found (not started yet, or gone)
    self_exits: int = 0  # a supervisor ended by itself, with an error, not by our kill
    dirty_stderr: int = 0  # supervisor runs whose stderr held a Traceback/leaked/KeyError
    reader_lines: int = 0
    reader_errors: int = 0
    worker_kills_skipped: int = 0  # the step could not afford another failure
    worker_kills_idle: int = 0  # the worker had not run a step yet
    points_hit: Counter[str] = field(default_factory=Counter)
    points_aimed: Counter[str] = field(default_factory=Counter)
    compactions_requested: int = 0
    executed_steps: int = 0
    re_executed_steps: int = 0
    reference_steps: int = 0
    max_attempt_seen: int = 0
    reference_seconds: float = 0.0

    @property
    def kills(self) -> int:
        return (self.supervisor_kills + self.worker_kills + self.failpoint_kills
                + sum(self.helper_kills.values()))


class Planner:
    """The planning half of ``CrashTest`` (a mixin: it reads the test's running figures)."""

    cfg: Config
    rng: random.Random
    stats: Stats
    kills_left: int
    work_window: float
    first_step_at: float
    step_seconds: float
    _stalled: int
    _aims_made: int
    _aim_groups: tuple[list[str], list[str]]
    _aim_next: list[int]
    _caller_points: set[str]
    ref_failures: Counter[tuple[str, int]]

    def _plan(self, state: Path, archive: Archive) -> Plan:
        rng = self.rng
        plan = Plan(seed=rng.randrange(1, 2**31), kill_at=0.0)
        # Restarts that finished nothing widen the window, so the work always
        # moves on, however long its steps or unlucky the draws.
        window = self.work_window * 1.5 ** min(self._stalled, 6)
        if rng.random() < 0.2 and not self._stalled:
            # Some kills land in start-up: replay, recovery, re-fired hooks.
            plan.kill_at = rng.uniform(0.05, self.first_step_at)
        else:
            plan.kill_at = self.first_step_at + rng.uniform(0.0, window)
        if rng.random() < AIM_SHARE and self._stalled < 3:
            # The clock is only the fallback of an aimed restart.
            fallback = self.first_step_at + window + rng.uniform(0.2, 1.0)
            plan.aim = self._next_aim(archive, fallback - self.first_step_at)
            if plan.aim is not None:
                plan.kill_at = fallback
        worker_aim = plan.aim is not None and plan.aim.partition("=")[0] in _WORKER_POINTS
        if self.cfg.kill_workers and not worker_aim and self.kills_left > 1:
            n = rng.choice((0, 1, 1, 2))
            lo = min(self.first_step_at, plan.kill_at)
            plan.worker_kills = sorted(rng.uniform(lo, plan.kill_at) for _ in range(n))
        if self.cfg.kill_helpers and self.kills_left > 1 and rng.random() < 0.6:
            # A dead helper shows when a worker must be made: a worker kill follows.
            # The kinds take turns, so even a short torture kills each of them.
            lo = min(self.first_step_at, plan.kill_at)
            at = rng.uniform(lo, plan.kill_at)
            plan.helper_kills = [(at, HELPERS[self.stats.helper_kills_planned % len(HELPERS)])]
            self.stats.helper_kills_planned += 1
            if self.cfg.kill_workers and not worker_aim and \
                    not any(t > at for t in plan.worker_kills):
                plan.worker_kills = sorted([*plan.worker_kills, rng.uniform(at, plan.kill_at)])
        if plan.aim is not None and plan.aim.startswith(("compact.", "inbox.before_unlink")):
            plan.compact_at = self.first_step_at + rng.uniform(0.0, self.work_window / 2)
        elif rng.random() < 0.1:
            plan.compact_at = rng.uniform(0.0, plan.kill_at)
        return plan

    def _next_aim(self, archive: Archive, work_seconds: float) -> str | None:
        rng = self.rng
        group = 0 if self._aims_made % 3 < 2 else 1
        self._aims_made += 1
        points = self._aim_groups[group]
        for _ in range(len(points)):
            point = points[self._aim_next[group] % len(points)]
            self._aim_next[group] += 1
            if point in self._caller_points:
                continue
            if point in _BLOB_POINTS and self.cfg.payload_bytes <= DEFAULT_THRESHOLD:
                continue  # no step writes a blob: the point is never hit
            if point in _WORKER_POINTS and not self._worker_faults_ok(archive, work_seconds):
                continue
            # Fire at a random one of the commits left to do, not always the first.
            left = max(2, self.stats.reference_steps - steps_done(archive))
            p = min(100, max(2, round(100 / rng.uniform(1, left))))
            # A worker point fires on the N-th step of every worker process, a
            # fresh one too. With N above half the steps a worker can run in
            # this restart, the fresh workers never get there: at most the two
            # first ones fail a step, which stays below --max-attempts.
            most = max(2, int(work_seconds / self.step_seconds) + 1)
            action = AIM_POINTS[point].format(p=p, hp=rng.choice((25, 50, 100)),
                                              n=rng.randint(most // 2 + 1, most))
            self.stats.points_aimed[point] += 1
            extra = AIM_EXTRA.get(point)
            if extra and extra.partition("=")[0] not in self._caller_points:
                return f"{point}={action},{extra}"
            return f"{point}={action}"
        return None

    def _worker_faults_ok(self, archive: Archive, work_seconds: float) -> bool:
        """Whether two more failures of any live step keep it below --max-attempts.

        A worker failpoint can fail the same step on both workers before a
        fresh worker (whose hit count starts over) runs it. With only a few
        steps left in the restart's window, N is small and every fresh worker
        gets to its N-th step too: the same step would fail on worker after
        worker (seen in a 1,000-kill torture), which says nothing about the
        supervisor. Such restarts aim elsewhere.
        """
        if work_seconds / self.step_seconds < 6:
            return False
        failures = failures_per_step(archive.records)
        for key, n in failures.items():
            if n + self.ref_failures.get(key, 0) + 2 >= self.cfg.max_attempts:
                return False
        return self.cfg.max_attempts > 2 + max(self.ref_failures.values(), default=0)
