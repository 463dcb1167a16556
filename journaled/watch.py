"""``journaled watch``: a live, read-only view of a state directory.

Two sources, both read without any lock, so it works from any process and
with or without a supervisor:

- the journal, folded by a ``Client``: counts by status, recent terminal runs,
  dead-lettered steps (what is durable);
- ``STATE/supervisor.json`` (``journaled.live``), rewritten by a running
  supervisor a few times a second: its pid, app, workers, the steps in
  flight with their progress, and counters from which steps/s and syncs/s
  are computed as deltas between refreshes;
- the state lock (``live.health``): a supervisor holding it whose status has
  not changed for a few seconds is reported "not responding: last status
  42 s ago (hung?)", not "no supervisor running" (``--json``: ``health``).

``collect`` turns those into a ``Snapshot``; ``render(snapshot, width)`` is
a pure function from a snapshot to the text of one frame, so it is tested
without a terminal. The live loop only adds plain ANSI escapes (home, clear,
hide/show cursor, the alternate screen), which work over ssh with no curses.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import select
import shutil
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterator

import click
import msgspec

from .live import Health, LiveStatus, health, read_status
from .metrics import run_counts
from .tools import short_bytes

STATUSES = ("pending", "running", "waiting", "succeeded", "failed", "cancelled")
RECENT = 5  # terminal runs and dead letters shown
BIG_ARCHIVE = 100_000  # runs past which the archive is counted less often...
ARCHIVE_COUNT_EVERY = 5.0  # ...every this many seconds
RATE_WINDOW = 3.0  # seconds of supervisor samples a rate is computed over
BIG_STATE = 20_000  # runs past which the journal fold is refreshed less often...
BIG_STATE_EVERY = 2.0  # ...every this many seconds


class WatchStep(msgspec.Struct):
    """One step in flight (or queued behind another on the same worker)."""

    run_id: str
    step: int
    attempt: int
    worker: int
    state: str  # running | queued
    elapsed: float | None = None  # seconds; None while queued
    done: float | None = None
    total: float | None = None
    message: str = ""
    pid: int = 0  # the worker process


class WatchSupervisor(msgspec.Struct):
    pid: int
    app: str
    workers: int
    uptime: float
    journal_bytes: int
    steps_done: int
    syncs: int
    stopping: bool = False


class WatchRun(msgspec.Struct):
    """A recently finished run: ``text`` is its result (shortened) or its error."""

    run_id: str
    status: str
    finished_at: float | None
    text: str


class WatchDead(msgspec.Struct):
    """A dead-lettered step: the run's step, its attempts, how and why it ended."""

    run_id: str
    step: int
    attempts: int
    kind: str
    error: str
    finished_at: float | None


class Snapshot(msgspec.Struct):
    """Everything one frame of ``journaled watch`` shows; ``--json`` prints it as is."""

    state_dir: str
    taken_at: float
    supervisor: WatchSupervisor | None
    counts: dict[str, int]
    in_flight: list[WatchStep]
    steps_per_s: float | None = None
    syncs_per_s: float | None = None
    recent: list[WatchRun] = []
    dead: list[WatchDead] = []
    # running | hung | starting | none, with the supervisor's pid and its status's age:
    # a hung supervisor (lock held, status stale) is not a dead one.
    health: Health | None = None
    paused: dict = {}  # {"all": bool, "keys": [...]}: dispatch paused (journaled pause)


# ------------------------------------------------------------------ collect


def _text(b: bytes | None, n: int = 60) -> str:
    return short_bytes(b, n, none="")


def _first_line(s: str | None, n: int = 120) -> str:
    line = (s or "").strip().splitlines()[0] if (s or "").strip() else ""
    return line if len(line) <= n else line[: n - 1] + "…"


class Collector:
    """Builds snapshots of one state directory, keeping what rates need between calls."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        from .client import Client

        self.state_dir = Path(state_dir)
        self.client = Client(self.state_dir)
        # (updated_at, steps_done, syncs) of the live status, newest last; one supervisor.
        self._samples: deque[tuple[float, int, int]] = deque()
        self._pid: int | None = None
        self._folded: tuple[dict[str, int], list[WatchRun], list[WatchDead]] | None = None
        self._folded_at = 0.0
        self._counts: dict[str, int] = {}
        self._counted_at = -1e9

    def _rates(self, live: LiveStatus, now: float) -> tuple[float, float]:
        if live.pid != self._pid:
            self._samples.clear()
            self._pid = live.pid
        if not self._samples or live.updated_at > self._samples[-1][0]:
            self._samples.append((live.updated_at, live.steps_done, live.syncs))
        while len(self._samples) > 2 and self._samples[1][0] < now - RATE_WINDOW:
            self._samples.popleft()
        t1, steps1, syncs1 = self._samples[-1]
        if now - t1 > 1.0:
            return 0.0, 0.0  # no fresh sample: nothing to measure a rate over
        t0, steps0, syncs0 = self._samples[0]
        if t1 - t0 < 1.0:
            # Too short a look for a rate: the average since the supervisor started.
            span = max(live.updated_at - live.started_at, 1e-3)
            return live.steps_done / span, live.syncs / span
        return (steps1 - steps0) / (t1 - t0), (syncs1 - syncs0) / (t1 - t0)

    def _fold(self, now: float) -> tuple[dict[str, int], list[WatchRun], list[WatchDead]]:
        """Counts, recent runs and dead letters from the journal: O(runs), so on a big
        state they are recomputed every ``BIG_STATE_EVERY`` seconds, not every frame."""
        state = self.client.refresh()
        if self._folded is not None and len(state.runs) > BIG_STATE \
                and now - self._folded_at < BIG_STATE_EVERY:
            return self._folded
        # Finished runs are in the archive: counted with the journal's runs, each
        # once (an index scan: on a big archive at most every few seconds), and
        # the newest read by index, like 'journaled runs'.
        archive = self.client._archive
        if sum(self._counts.values()) < BIG_ARCHIVE \
                or now - self._counted_at >= ARCHIVE_COUNT_EVERY:
            self._counts, self._counted_at = run_counts(state, archive), now
        counts = dict(self._counts)
        pending = getattr(self.client, "_pending", None)
        if pending is not None:  # submissions still in the inbox count as pending
            counts["pending"] += sum(1 for rid in pending() if rid not in state.runs)
        runs = state.runs.values()
        done = heapq.nlargest(RECENT, (r for r in runs if r.terminal),
                              key=lambda r: r.finished_at or 0.0)
        recent = [WatchRun(r.run_id, str(r.status), r.finished_at,
                           _text(r.result) if r.status == "succeeded"
                           else _first_line(r.error))
                  for r in done]
        seen = {r.run_id for r in recent}
        recent += [WatchRun(a.id, a.status, a.finished_at,
                            _text(a.result) if a.status == "succeeded" else _first_line(a.error))
                   for a in archive.call("runs", None, None, RECENT) or [] if a.id not in seen]
        recent = sorted(recent, key=lambda r: r.finished_at or 0.0, reverse=True)[:RECENT]
        dead_rows = [WatchDead(d.run_id, d.step, d.attempt, d.kind, _first_line(d.error),
                               d.finished_at) for d in self.client.dead(limit=RECENT)]
        self._folded, self._folded_at = (counts, recent, dead_rows), now
        return self._folded

    def snapshot(self) -> Snapshot:
        now = time.time()
        counts, recent, dead_rows = self._fold(now)
        live = read_status(self.state_dir)
        hl = health(self.state_dir, now)
        if hl.state != "running":
            live = None  # a stale file, or another pid's: nothing in it is current
        sup = None
        flights: list[WatchStep] = []
        steps_rate = syncs_rate = None
        if live is not None:
            sup = WatchSupervisor(live.pid, live.app, live.workers, now - live.started_at,
                                  live.journal_bytes, live.steps_done, live.syncs,
                                  live.stopping)
            # A status file written while steps ran and then left alone (the supervisor
            # went idle) would show finished steps as running: trust it only if fresh.
            fresh = now - live.updated_at < 2.0
            for s in live.in_flight if fresh else []:
                flights.append(WatchStep(
                    s.run_id, s.step, s.attempt, s.worker, s.state,
                    None if s.started_at is None else max(0.0, now - s.started_at),
                    s.done, s.total, s.message, s.pid))
            steps_rate, syncs_rate = self._rates(live, now)
        else:
            self._samples.clear()
            self._pid = None
        pauses = self.client.state.pauses
        return Snapshot(str(self.state_dir), now, sup, counts, flights, steps_rate,
                        syncs_rate, recent, dead_rows, hl, pauses.describe() if pauses else {})


def collect(state_dir: str | os.PathLike[str]) -> Snapshot:
    """One snapshot, rates averaged since the supervisor started."""
    return Collector(state_dir).snapshot()


# ------------------------------------------------------------------- render


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def _num(x: float) -> str:
    if x != x:  # NaN
        return "?"
    if abs(x) >= 1e6:
        return f"{x / 1e6:.1f}M"
    if abs(x) >= 1e4:
        return f"{x / 1e3:.1f}k"
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def progress_text(done: float | None, total: float | None, message: str,
                  bar: int = 16) -> str:
    """``[####------------]  25%  5/20  message``, or what is known of it."""
    parts = []
    if done is not None and total:
        frac = min(max(done / total, 0.0), 1.0)
        filled = int(frac * bar + 1e-9)
        parts.append(f"[{'#' * filled}{'-' * (bar - filled)}] {frac * 100:3.0f}%")
        parts.append(f"{_num(done)}/{_num(total)}")
    elif done is not None:
        parts.append(_num(done))
    if message:
        parts.append(message)
    return "  ".join(parts) if parts else "-"


def _rate(x: float | None) -> str:
    return "-" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:.1f}")


def render(snap: Snapshot, width: int = 100) -> str:
    """The text of one frame, every line at most ``width`` characters."""
    width = max(width, 40)
    out: list[str] = []
    stamp = time.strftime("%H:%M:%S", time.localtime(snap.taken_at))
    out.append(f"journaled watch  {snap.state_dir}  {stamp}")
    sup = snap.supervisor
    if sup is None:
        note = snap.health.message if snap.health is not None else "no supervisor running"
        out.append(f"{note} (counts are from the journal)")
    else:
        stop = "  STOPPING (draining)" if sup.stopping else ""
        out.append(f"supervisor pid {sup.pid}  {sup.app}  {sup.workers} "
                   f"worker{'s' if sup.workers != 1 else ''}  "
                   f"up {_duration(sup.uptime)}  journal {_bytes(sup.journal_bytes)}{stop}")
        out.append(f"throughput  {_rate(snap.steps_per_s)} steps/s  "
                   f"{_rate(snap.syncs_per_s)} syncs/s  "
                   f"({sup.steps_done:,} steps, {sup.syncs:,} syncs since start)")
    if snap.paused:
        what = "all runs" if snap.paused.get("all") else \
            "keys " + ", ".join(snap.paused.get("keys", []))
        out.append(f"PAUSED: no new steps leased for {what} ('journaled resume' to go on)")
    out.append("")
    total = sum(snap.counts.values())
    out.append("runs  " + "  ".join(f"{s} {snap.counts.get(s, 0)}" for s in STATUSES)
               + f"  (total {total})")
    out.append("")
    running = sum(1 for s in snap.in_flight if s.state == "running")
    queued = len(snap.in_flight) - running
    out.append(f"IN FLIGHT ({running} running, {queued} queued)" if snap.in_flight
               else "IN FLIGHT: none")
    if snap.in_flight:
        rw = min(max(len("RUN"), *(len(s.run_id) for s in snap.in_flight)), 40)
        out.append(f"{'RUN':<{rw}}  {'STEP':>4}  {'ATT':>3}  {'WKR':>3}  {'ELAPSED':>7}  "
                   "PROGRESS")
        for s in sorted(snap.in_flight, key=lambda s: (s.state != "running", s.worker)):
            rid = s.run_id if len(s.run_id) <= rw else s.run_id[: rw - 1] + "…"
            if s.state == "running":
                prog = progress_text(s.done, s.total, s.message)
                el = _duration(s.elapsed)
            else:
                prog, el = "(queued behind the worker's running step)", "queued"
            out.append(f"{rid:<{rw}}  {s.step:>4}  {s.attempt:>3}  {s.worker:>3}  "
                       f"{el:>7}  {prog}")
    out.append("")
    out.append("RECENT RUNS" if snap.recent else "RECENT RUNS: none finished yet")
    for r in snap.recent:
        when = time.strftime("%H:%M:%S", time.localtime(r.finished_at)) if r.finished_at \
            else "-"
        out.append(f"  {when}  {r.status:<9}  {r.run_id}  {r.text}".rstrip())
    out.append("")
    out.append("DEAD LETTERS (journaled dead / journaled retry RUN_ID)" if snap.dead
               else "DEAD LETTERS: none")
    for d in snap.dead:
        out.append(f"  {d.run_id} step {d.step} ({d.attempts} attempts, {d.kind}): {d.error}")
    return "\n".join(line if len(line) <= width else line[: width - 1] + "…" for line in out)


def summary_line(snap: Snapshot) -> str:
    """One line per refresh, for a stdout that is not a terminal."""
    stamp = time.strftime("%H:%M:%S", time.localtime(snap.taken_at))
    counts = " ".join(f"{s}={snap.counts.get(s, 0)}" for s in STATUSES)
    if snap.supervisor is None:
        h = snap.health
        if h is not None and h.pid is not None:
            age = "" if h.status_age is None else f" status_age={h.status_age:.0f}s"
            return f"{stamp} {counts} supervisor={h.state} pid={h.pid}{age}"
        return f"{stamp} {counts} supervisor=none"
    return (f"{stamp} {counts} in_flight={len(snap.in_flight)} "
            f"steps/s={_rate(snap.steps_per_s)} syncs/s={_rate(snap.syncs_per_s)}")


# --------------------------------------------------------------- the screen

# Alternate screen, hide cursor, clear; and the way back.
_ENTER = "\x1b[?1049h\x1b[?25l\x1b[2J\x1b[H"
_LEAVE = "\x1b[?25h\x1b[?1049l"


@contextlib.contextmanager
def _cbreak(fd: int | None) -> Iterator[None]:
    """Keys arrive one at a time, unechoed; Ctrl-C still raises. Restored on every exit."""
    if fd is None:
        yield
        return
    import termios
    import tty

    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, old)


def _sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(0)  # unwinds through the finally blocks that restore the terminal


def _wait_key(fd: int | None, timeout: float) -> bool:
    """Sleep up to ``timeout``; True if ``q`` was pressed (or stdin closed)."""
    if fd is None:
        time.sleep(timeout)
        return False
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return False
    data = os.read(fd, 64)
    return not data or b"q" in data.lower()


def live_loop(collector: Collector, interval: float) -> None:
    out = sys.stdout
    fd: int | None = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    old_term = signal.signal(signal.SIGTERM, _sigterm)
    try:
        with _cbreak(fd):
            out.write(_ENTER)
            try:
                while True:
                    size = shutil.get_terminal_size((100, 30))
                    lines = render(collector.snapshot(), size.columns).split("\n")
                    lines = lines[: max(size.lines - 1, 1)]
                    foot = "q or Ctrl-C to quit" if fd is not None else "Ctrl-C to quit"
                    frame = "\x1b[H" + "".join(f"{ln}\x1b[K\n" for ln in lines) \
                        + f"\x1b[2m{foot}\x1b[0m\x1b[K\x1b[J"
                    out.write(frame)
                    out.flush()
                    if _wait_key(fd, interval):
                        return
            finally:
                out.write(_LEAVE)
                out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old_term)


def lines_loop(collector: Collector, interval: float) -> None:
    old_term = signal.signal(signal.SIGTERM, _sigterm)
    try:
        while True:
            click.echo(summary_line(collector.snapshot()))
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old_term)


@click.command()
@click.option("--interval", type=click.FloatRange(min=0.05), default=0.25, show_default=True,
              help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one snapshot as a JSON object and exit.")
@click.option("--state", "state", envvar="JOURNALED_STATE", default=".journaled",
              show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="State directory (journal, inbox, lock). Env: JOURNALED_STATE.")
def watch(interval: float, once: bool, as_json: bool, state: Path) -> None:
    """Live view: runs by status, steps in flight with progress, throughput, recent runs.

    Read-only and lock-free: run it in another terminal (or over ssh) next to
    'journaled run'. Quit with q or Ctrl-C. With stdout not a terminal it prints
    one summary line per refresh instead of redrawing the screen.
    """
    from .cli import state_problem
    from .errors import JournaledError

    problem = state_problem(state, must_exist=True)
    if problem is not None:
        # Said, not fatal: a watch is often started before 'journaled run' creates it.
        click.echo(f"journaled: warning: {problem}", err=True)
    try:
        collector = Collector(state)
        if as_json:
            click.echo(msgspec.json.encode(collector.snapshot()).decode())
            return
        if once:
            # A pipe or a file gets whole lines; a terminal, lines that fit it.
            width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 200
            click.echo(render(collector.snapshot(), width))
            return
        if sys.stdout.isatty():
            live_loop(collector, interval)
        else:
            lines_loop(collector, interval)
    except JournaledError as e:
        click.echo(f"journaled: error: {e}", err=True)
        sys.exit(1)
    except BrokenPipeError:
        sys.exit(0)
