"""What ``journaled run`` says on stderr besides the supervisor's own log lines.

- ``JsonLog``: ``--log-format json``, one JSON object per line for log shippers.
- ``StatusLine``: on a terminal, a one-line live status redrawn every second,
  from the view the loop publishes (never by walking live state from a thread).
- ``Drain``: on SIGINT/SIGTERM, what the drain does and, at the end, how the
  steps that were running ended.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from typing import Any


class JsonLog(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 6), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class StatusLine:
    """A one-line live status on a terminal: runs by status, steps/s, syncs/s."""

    def __init__(self, sup: Any) -> None:
        import threading

        self.sup = sup
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="journaled-status")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()

    def _loop(self) -> None:
        sup = self.sup
        t0, steps0, syncs0 = time.monotonic(), sup.steps_done, sup.journal.syncs
        while not self._stop.wait(1.0):
            t1, steps1, syncs1 = time.monotonic(), sup.steps_done, sup.journal.syncs
            dt = max(1e-6, t1 - t0)
            # The counts the loop published: never walk the live state from this thread.
            live = getattr(sup, "live", None)
            c = live.counts if live is not None else {}
            line = (f"running {c.get('running', 0)}  waiting {c.get('waiting', 0)}  "
                    f"pending {c.get('pending', 0)}  succeeded {c.get('succeeded', 0)}  "
                    f"failed {c.get('failed', 0)}  cancelled {c.get('cancelled', 0)}  |  "
                    f"{(steps1 - steps0) / dt:,.0f} steps/s  {(syncs1 - syncs0) / dt:,.0f} "
                    "syncs/s")
            t0, steps0, syncs0 = t1, steps1, syncs1
            sys.stderr.write(f"\r\033[K{line[:160]}")
            sys.stderr.flush()


class Drain:
    """What a SIGINT/SIGTERM to ``journaled run`` does, said on stderr (log format too).

    The signal handler only notes the signal and which steps run at that
    moment; a thread logs "draining 2 steps (up to 30 s); Ctrl-C again to
    stop now" (a handler must not write to a stream the loop may be writing
    to), and ``finish`` logs how those steps ended: finished (an outcome was
    journaled) or interrupted (cut at the drain timeout or by a second
    signal; they run again at the next start).
    """

    def __init__(self, sup: Any) -> None:
        import threading

        self.sup = sup
        self.log = logging.getLogger("journaled.cli")
        self.log.setLevel(logging.INFO)  # these lines show without -v
        self.signals: list[int] = []
        self.heads: dict[str, tuple[int, int]] = {}  # run -> (step, failures) at the signal
        self._said = 0
        self._closing = False
        self._ev = threading.Event()
        # Started here, not in the handler: starting a thread takes locks the
        # interrupted main thread may hold.
        self._thread = threading.Thread(target=self._say, daemon=True, name="journaled-drain")
        self._thread.start()

    def notice(self, signum: int) -> None:
        """In the signal handler: note the signal and the steps running now."""
        self.signals.append(signum)
        if len(self.signals) == 1:
            pool, runs = self.sup.pool, self.sup.state.runs
            for w in list(pool.workers) if pool is not None else []:
                try:
                    head = w.outstanding[0]
                except IndexError:
                    continue
                run = runs.get(head.run_id)
                if run is not None:
                    self.heads[head.run_id] = (run.step, run.failures)
        self._ev.set()

    def _say(self) -> None:
        while True:
            self._ev.wait()
            self._ev.clear()
            while self._said < len(self.signals) and self._said < 2:
                signum = self.signals[self._said]
                self._said += 1
                self.log.info(self._message(signum, self._said))
            if self._said >= 2 or self._closing:
                return

    def _message(self, signum: int, nth: int) -> str:
        name = signal.Signals(signum).name
        n = len(self.heads)
        steps = f"{n} step{'s' if n != 1 else ''}"
        if nth == 1:
            if not n:
                return f"{name}: stopping (no step running)"
            again = "Ctrl-C again" if signum == signal.SIGINT else "SIGTERM again"
            return (f"{name}: draining {steps} (up to {self.sup.drain_timeout:g} s); "
                    f"{again} to stop now")
        return f"{name} again: stopping now; steps still running are interrupted " \
               "and run again at the next start"

    def finish(self) -> None:
        """After the loop ended: one summary line, if a signal started the stop."""
        self._closing = True
        self._ev.set()
        self._thread.join(timeout=1)
        if not self.signals:
            return
        runs = self.sup.state.runs
        done = 0
        for rid, (step, failures) in self.heads.items():
            run = runs.get(rid)
            if run is None or run.terminal or run.step != step or run.failures != failures:
                done += 1
        cut = len(self.heads) - done
        self.log.info(f"stopped: {done} step{'s' if done != 1 else ''} finished, "
                      f"{cut} interrupted" + (" (they run again at the next start)"
                                              if cut else ""))
