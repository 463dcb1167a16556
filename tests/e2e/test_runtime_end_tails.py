"""A waiting caller's own sync leaves the rest of its run's end for later.

When ``Runtime.wait`` runs the sync of its run's end itself (parked as the
flusher's guest), it marks the run ended and wakes its waiters, then
returns; the end's other acts (the hand-off to the archive, the socket
door's recent ends, the log) are done by the next act, right after it sends
its steps, or by the loop within ``TAIL_DELAY`` when no act comes. Either
way before any later turn's acts, and never for a run redriven since.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from benchmarks import apps
from journaled import acting
from journaled.runtime import Runtime


def test_the_rest_of_an_end_comes_with_the_next_act_or_the_loops_turn(tmp_path: Path,
                                                                      monkeypatch) -> None:
    ran: list[tuple[str, int]] = []  # (thread, tails) per _run_tails
    orig = acting.Acting._run_tails

    def run_tails(self: acting.Acting) -> None:
        ran.append((threading.current_thread().name, len(self._tails)))
        orig(self)

    monkeypatch.setattr(acting.Acting, "_run_tails", run_tails)
    with Runtime(tmp_path / "s", apps.noop, workers=1) as rt:
        sup = rt.supervisor
        rt.wait(rt.submit(b"warm"), 30)
        ids = []
        for _ in range(50):
            rid = rt.submit(b"")
            out = rt.wait(rid, 30)
            assert out.status.value == "succeeded"
            ids.append(rid)
            assert rid in sup.outcomes  # reported ended once durable, whatever waits
        # The last end's rest, with no act after it: the loop's turn, soon.
        deadline = time.monotonic() + 5
        while sup._tails and time.monotonic() < deadline:
            time.sleep(0.001)
        assert not sup._tails
        with sup.state_lock:
            queued = set(sup._archive_queued) | {r for r in ids if r not in sup.state.runs}
        assert set(ids) <= queued, "every end reached the archive"
        assert all(rt.status(r).status.value == "succeeded" for r in ids)
    # The path is taken: ends left by the caller's own sync (the next act, on the
    # caller, does most; some go to the loop), one tail at a time. How often
    # depends on the load (the worker may answer before the caller parks:
    # 9 of 30 runs at load 18, most of them at load 3).
    assert len(ran) >= 2 and all(n == 1 for _, n in ran), ran
    assert any(name == "MainThread" for name, _ in ran), ran


def test_no_end_is_left_for_later_with_a_hook(tmp_path: Path) -> None:
    seen: list[str] = []
    with Runtime(tmp_path / "s", apps.noop, workers=1, on_terminal=lambda o: seen.append(o.run_id)
                 ) as rt:
        sup = rt.supervisor
        for _ in range(10):
            rt.wait(rt.submit(b""), 30)
            assert not sup._tails  # the hook's end is done at once, as before
        deadline = time.monotonic() + 10
        while len(seen) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert len(seen) == 10
