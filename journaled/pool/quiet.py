"""Imported by the forkserver (as a preload module) to make it ignore SIGINT and SIGTERM.

A service manager signals the whole process group; the forkserver must
survive that so the supervisor can drain its workers, and every worker it
forks inherits the ignored dispositions (they survive exec too). The
forkserver runs ``python -c 'from multiprocessing.forkserver import main; ...'``
and imports its preload modules on its main thread, the only thread where
``signal.signal`` works. Imported anywhere else this module does nothing.
"""

from __future__ import annotations

import signal
import sys
import threading


def _in_forkserver() -> bool:
    return (sys.argv[:1] == ["-c"] and "multiprocessing.forkserver" in sys.modules
            and threading.current_thread() is threading.main_thread())


if _in_forkserver():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
