"""CPU hygiene for worker processes: BLAS/OpenMP thread caps, CPU pinning, RSS watching.

N workers each starting a full BLAS thread pool on N cores run N x N
threads (dask/distributed #7177): every matmul fights the others. So each
worker's ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``,
``NUMEXPR_NUM_THREADS`` and ``VECLIB_MAXIMUM_THREADS`` default to 1 (or
``--threads-per-worker N``), unless the user set any of them: then they are
the user's and none is touched.

Those libraries read the variables once, when they are loaded, and the
forkserver loads the user's module (numpy with it) *before* any worker
forks. So this module is also a forkserver preload, placed before the
user's: imported there it sets the caps in the forkserver itself (from
``JOURNALED_THREADS_PER_WORKER``, which the pool puts in the environment the
forkserver starts with). A worker that wants another count than the
forkserver used (two pools with different settings share one forkserver)
resizes the loaded pools with ``threadpoolctl`` when it is installed.

The RSS monitor is a supervisor thread that reads ``/proc/PID/statm`` of
every worker about every 100 ms: a busy worker over ``--max-worker-rss`` is
killed at once (its step gets a counted attempt with reason ``oom`` and its
peak RSS), an idle one is recycled by the loop (a clean stop, no failure).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

import msgspec

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
ENV_THREADS = "JOURNALED_THREADS_PER_WORKER"  # the count the forkserver caps to
ENV_PIN = "JOURNALED_PIN_CPU"  # the CPU a worker pins itself to
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MB = 1 << 20

# The count this process capped its libraries to when it was the forkserver
# (inherited by every worker it forks); None: it did not (or is no forkserver).
FORKSERVER_THREADS: int | None = None


class Hygiene(msgspec.Struct, frozen=True):
    """What ``journaled run`` asks of its workers (the defaults: one BLAS thread each)."""

    threads_per_worker: int = 1  # 0: leave the thread pools alone
    max_steps_per_worker: int = 0  # recycle a worker after this many steps (0: never)
    max_worker_rss_mb: float = 0.0  # kill a busy worker over this (oom), recycle an idle one
    pin_workers: bool = False  # pin worker i to CPU i (round-robin over the allowed ones)

    @property
    def max_rss_bytes(self) -> int:
        return int(self.max_worker_rss_mb * MB)


def user_set_threads(environ: Mapping[str, str]) -> bool:
    return any(v in environ for v in THREAD_VARS)


def thread_env(environ: Mapping[str, str], n: int) -> dict[str, str]:
    """The caps to add to ``environ`` ({} when ``n`` is 0 or the user set any of them)."""
    if n <= 0 or user_set_threads(environ):
        return {}
    return dict.fromkeys(THREAD_VARS, str(n))


def worker_env(h: Hygiene, slot: int, environ: Mapping[str, str]) -> dict[str, str]:
    """What worker ``slot`` gets on top of the supervisor's environment."""
    out = thread_env(environ, h.threads_per_worker)
    out[ENV_THREADS] = str(h.threads_per_worker)
    if h.pin_workers:
        try:
            cpus = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = []
        if cpus:
            out[ENV_PIN] = str(cpus[slot % len(cpus)])
    return out


def prepare_forkserver(h: Hygiene) -> None:
    """Tell a forkserver started after this what to cap to (read by this module's import)."""
    os.environ[ENV_THREADS] = str(h.threads_per_worker)


def _in_forkserver() -> bool:
    return (sys.argv[:1] == ["-c"] and "multiprocessing.forkserver" in sys.modules
            and threading.current_thread() is threading.main_thread())


def _cap_forkserver() -> None:
    """In the forkserver, before the user's modules load: cap their thread pools."""
    global FORKSERVER_THREADS
    try:
        n = int(os.environ.get(ENV_THREADS, "1"))
    except ValueError:
        n = 1
    caps = thread_env(os.environ, n)
    if caps:
        os.environ.update(caps)
        FORKSERVER_THREADS = n


def apply_in_worker() -> None:
    """In a worker, after its runner module is imported: pinning, and pools sized right."""
    cpu = os.environ.get(ENV_PIN)
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {int(cpu)})
        except (AttributeError, OSError, ValueError):
            pass
    try:
        want = int(os.environ.get(ENV_THREADS, "1"))
    except ValueError:
        return
    if want > 0 and os.environ.get(THREAD_VARS[0]) != str(want):
        return  # the user's settings: not ours to size
    if want <= 0:
        if FORKSERVER_THREADS is None:
            return  # left alone, and the forkserver left them alone too
        want = len(os.sched_getaffinity(0))  # what the libraries take when left alone
    if FORKSERVER_THREADS == want:
        return  # loaded in the forkserver with this count already; later loads read the env
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-not-found]
    except ImportError:
        return
    threadpool_limits(want)


# ------------------------------------------------------------------- memory

def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` (None: gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _cgroup_events() -> Path | None:
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            p = Path("/sys/fs/cgroup") / line[3:].lstrip("/") / "memory.events"
            return p if p.exists() else None
    return None


_EVENTS = _cgroup_events()


def cgroup_oom_kills() -> int | None:
    """The kernel's ``oom_kill`` count for our cgroup (v2), when readable."""
    if _EVENTS is None:
        return None
    try:
        for line in _EVENTS.read_text().splitlines():
            name, _, n = line.partition(" ")
            if name == "oom_kill":
                return int(n)
    except (OSError, ValueError):
        return None
    return None


class RssMonitor:
    """A supervisor thread: reads each worker's RSS every ``interval`` seconds.

    Over ``limit`` while running a step: SIGKILL now, remembered as
    ``(pid, seq, peak)`` in ``killed`` for the loop to charge as ``oom``.
    Over it between steps: the slot goes into ``recycle`` and the loop is
    woken to stop the worker cleanly. ``peaks`` holds each slot's running
    step's peak RSS (and the last sample), for a death the kernel caused.
    """

    def __init__(self, pool: Any, limit: int, wake: Callable[[], None],
                 interval: float = 0.1) -> None:
        self.pool = pool
        self.limit = limit
        self.wake = wake
        self.interval = interval
        self.killed: dict[int, tuple[int, int, int]] = {}  # slot -> (pid, seq, peak)
        self.recycle: set[int] = set()
        self.peaks: dict[int, tuple[int, int, int, int]] = {}  # slot -> (pid, seq, peak, last)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="journaled-rss-monitor")

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(1.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a worker vanishing mid-read is no reason to stop
                pass

    def sample(self) -> None:
        pool = self.pool
        for w in list(pool.workers):
            pid = w.pid
            if not pid or w.proc is None or w.kill_reason:
                continue
            rss = rss_bytes(pid)
            if not rss:
                # Gone, or killed and not yet reaped: a zombie reads 0 resident pages,
                # and taken as the last sample it would hide that the process died
                # near the limit (the kernel's OOM kill read as a plain worker death).
                continue
            seq = pool.running_seq(w)
            with self._lock:
                old = self.peaks.get(w.slot)
                peak = max(rss, old[2]) if old and old[0] == pid and old[1] == seq else rss
                self.peaks[w.slot] = (pid, seq, peak, rss)
                if rss <= self.limit or w.slot in self.killed:
                    continue
                if seq:
                    self.killed[w.slot] = (pid, seq, peak)
                else:
                    self.recycle.add(w.slot)
            if seq:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            self.wake()

    def take_kill(self, slot: int, pid: int | None) -> tuple[int, int] | None:
        """``(seq, peak)`` if this monitor killed ``pid`` for memory (forgotten after)."""
        with self._lock:
            got = self.killed.pop(slot, None)
            if got is not None and got[0] == pid:
                return got[1], got[2]
            return None

    def last_sample(self, slot: int, pid: int | None) -> tuple[int, int, int] | None:
        """``(seq, peak, last)`` of ``pid``'s latest sample in ``slot``."""
        with self._lock:
            got = self.peaks.get(slot)
            if got is not None and got[0] == pid:
                return got[1], got[2], got[3]
            return None

    def take_recycles(self) -> set[int]:
        with self._lock:
            out, self.recycle = self.recycle, set()
            return out


if _in_forkserver():
    _cap_forkserver()
