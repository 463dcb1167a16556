"""Which worker deaths are charged as ``oom`` (``Recycling._oom_of``).

Only the step that was running, and only for a kill we can tie to memory:
the RSS monitor's own kill of that step, or a SIGKILL we did not send while
the last sample was near ``--max-worker-rss`` (or the cgroup counted an OOM kill).
"""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest

from journaled.pool.hygiene import MB, Hygiene, RssMonitor
from journaled.recycling import Recycling

pytestmark = pytest.mark.timeout(10)
KILL = -signal.SIGKILL


def care(limit_mb: float = 100) -> Recycling:
    r = Recycling()
    r.hygiene = Hygiene(max_worker_rss_mb=limit_mb)
    r.pool = None
    r._stopping = False
    r._init_recycling()
    r._rss = RssMonitor(SimpleNamespace(workers=[]), int(limit_mb * MB), lambda: None)
    return r


W = SimpleNamespace(slot=0)


def test_the_monitors_own_kill_is_oom_with_its_peak():
    r = care()
    r._rss.killed[0] = (42, 7, 150 * MB)
    peak, why = r._oom_of(W, 42, KILL, "", 7)
    assert peak == 150 * MB and "--max-worker-rss 100 MB" in why
    assert r._oom_of(W, 42, KILL, "", 7) is None  # forgotten once charged


def test_a_kill_near_the_limit_we_did_not_send_is_oom():
    r = care()
    r._rss.peaks[0] = (42, 7, 95 * MB, 90 * MB)
    peak, why = r._oom_of(W, 42, KILL, "", 7)
    assert peak == 95 * MB and "OOM killer" in why


@pytest.mark.parametrize("pid,code,reason,running,last", [
    (42, KILL, "timeout", 7, 90),  # our own kill: its own verdict
    (42, 1, "", 7, 90),  # an exit, not a kill
    (42, KILL, "", 0, 90),  # nothing was running
    (42, KILL, "", 7, 10),  # far from the limit and no cgroup OOM count
    (43, KILL, "", 7, 90),  # the sample was of another process in that slot
])
def test_other_deaths_are_not_oom(pid, code, reason, running, last):
    r = care()
    r._oom_count = None  # no cgroup count to go by
    r._rss.peaks[0] = (42, 7, last * MB, last * MB)
    assert r._oom_of(W, pid, code, reason, running) is None
