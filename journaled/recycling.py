"""Worker recycling and memory kills: the supervisor's side of ``pool.hygiene``.

``--max-steps-per-worker`` and ``--max-worker-rss`` (idle) recycle a worker
between steps: it is told to stop after its running step (steps queued on it
go back in line unstarted), exits cleanly and is replaced; nothing is
charged, a log line says why. A busy worker over ``--max-worker-rss`` is
killed by the RSS monitor; a worker the kernel OOM-killed is recognised as
well as we can (a SIGKILL we did not send, while the cgroup's ``oom_kill``
count rose or the last sample was near the limit). Either way its running
step gets a counted attempt of kind ``oom`` with the peak RSS seen.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from .pool import Pool, Worker
from .pool.hygiene import MB, Hygiene, RssMonitor, cgroup_oom_kills

log = logging.getLogger("journaled.supervisor")

RECYCLE = "recycle"  # Worker.kill_reason of a worker stopped to be replaced: no verdict on it


class Recycling:
    """A supervisor mixin: recycle workers, tell memory kills from other deaths."""

    hygiene: Hygiene
    pool: Pool | None
    _stopping: bool

    def _init_recycling(self) -> None:
        self._rss: RssMonitor | None = None
        self._oom_count = cgroup_oom_kills()
        self.recycled = 0

    def _start_rss_monitor(self, wake: Any) -> None:
        pool = self.pool
        if self.hygiene.max_rss_bytes and pool is not None and hasattr(pool, "running_seq"):
            self._rss = RssMonitor(pool, self.hygiene.max_rss_bytes, wake)
            self._rss.start()

    def _stop_rss_monitor(self) -> None:
        if self._rss is not None:
            self._rss.close()
            self._rss = None

    def _recycle_workers(self, unsent: Any) -> None:
        """Stop workers due for replacement, between steps; their exit respawns them."""
        pool = self.pool
        h = self.hygiene
        if pool is None or self._stopping or not (h.max_steps_per_worker or self._rss):
            return
        over = self._rss.take_recycles() if self._rss is not None else set()
        for w in pool.workers:
            if w.proc is None or w.kill_reason or w.stopping or unsent(w):
                continue
            if h.max_steps_per_worker and w.steps_run >= h.max_steps_per_worker:
                why = f"after {w.steps_run} steps (--max-steps-per-worker)"
            elif w.slot in over:
                why = f"at {h.max_worker_rss_mb:g} MB between steps (--max-worker-rss)"
            else:
                continue
            log.warning("recycling worker %d (pid %s) %s", w.slot, w.pid, why)
            w.kill_reason = RECYCLE
            pool.stop(w)
            self.recycled += 1

    def _oom_of(self, w: Worker, pid: int | None, code: int | None, reason: str,
                running: int) -> tuple[int, str] | None:
        """``(peak_rss, why)`` if the step ``running`` on ``w`` died for memory, else None."""
        if not running:
            return None
        seen = self._oom_count
        now_count = cgroup_oom_kills()
        self._oom_count = now_count
        if self._rss is not None:
            got = self._rss.take_kill(w.slot, pid)
            if got is not None and got[0] == running:
                limit = self.hygiene.max_worker_rss_mb
                return got[1], (f"killed for memory: RSS {got[1] / MB:.0f} MB passed "
                                f"--max-worker-rss {limit:g} MB")
        if reason or code != -signal.SIGKILL:
            return None
        sample = self._rss.last_sample(w.slot, pid) if self._rss is not None else None
        peak = sample[1] if sample is not None and sample[0] == running else 0
        near = bool(sample and self.hygiene.max_rss_bytes
                    and sample[2] >= 0.8 * self.hygiene.max_rss_bytes)
        if (seen is not None and now_count is not None and now_count > seen) or near:
            return peak, ("killed by the kernel's OOM killer" + (
                f" (peak RSS {peak / MB:.0f} MB)" if peak else ""))
        return None
