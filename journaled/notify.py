"""Block until files change in a directory, on inotify via watchfiles.

Watching starts when the watcher is built, so a caller can build it, look
at the files, and then wait without missing a change made in between.
watchfiles' default 1600 ms debounce would put that much on every cancel
and every ``wait``; here a change is reported after 1 ms of quiet.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

log = logging.getLogger("journaled.notify")


class DirWatcher:
    """``wait(timeout)`` returns True on a change, False on timeout."""

    def __init__(self, *paths: Path, recursive: bool = False) -> None:
        self._notify = None
        try:
            from watchfiles._rust_notify import RustNotify

            self._notify = RustNotify([str(p) for p in paths], False, False, 300, recursive,
                                      False)
        except Exception as e:  # noqa: BLE001 - fall back to short sleeps
            log.debug("file notification unavailable (%s); polling", e)

    def wait(self, timeout: float | None, stop: threading.Event | None = None) -> bool:
        if self._notify is None:
            time.sleep(min(0.05, timeout if timeout is not None else 0.05))
            return True
        ms = 3_600_000 if timeout is None else max(1, int(timeout * 1000))
        got = self._notify.watch(5, 1, ms, stop)
        if got == "signal":
            # RustNotify ran the SIGINT handler itself and swallowed its
            # KeyboardInterrupt; re-raise it, or Ctrl-C never stops a waiter.
            raise KeyboardInterrupt
        return isinstance(got, set)

    def close(self) -> None:
        if self._notify is not None:
            self._notify.close()
            self._notify = None

    def __enter__(self) -> "DirWatcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
