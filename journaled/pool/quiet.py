"""Imported by the forkserver (as a preload module) so a SIGTERM cannot take it down.

A service manager signals the whole process group; the forkserver must
survive that while the supervisor drains its workers. The forkserver runs
``python -c 'from multiprocessing.forkserver import main; ...'`` and imports
its preload modules on its main thread, the only thread where
``signal.signal`` works. Imported anywhere else this module does nothing.

Not ``SIG_IGN``: that would be inherited by every process the forkserver
forks, including other code's (``multiprocessing.Pool.terminate()`` relies
on SIGTERM), so the handler ignores the signal only in the forkserver
itself and, in a forked child, dies of it as by default. Our own workers
set ``SIG_IGN`` first thing (``worker.quiet_signals``). SIGINT needs
nothing: the forkserver ignores it by itself and restores it in children.

A handler alone loses a SIGTERM sent to a child before the child has run
(the parent learns the pid as soon as ``fork`` returns in the forkserver):
``os.fork`` clears the interpreter's pending-signal flags in the child, so
the handler never runs and the child lives on. ``Pool.terminate()`` of a
pool whose worker had not yet been scheduled then waits for it for ever.
So SIGTERM is blocked across each fork and, in the child, the default
action is restored *before* it is unblocked: a SIGTERM that came early
stays pending in the kernel and kills the child the moment it unblocks.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

_PID = os.getpid()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if os.getpid() == _PID:
        return  # the forkserver: the supervisor decides when it goes
    signal.signal(signum, signal.SIG_DFL)  # a forked child: behave as by default
    os.kill(os.getpid(), signum)


def _quiet_exit(kind: type[BaseException], value: BaseException, tb: object) -> None:
    """Last words of the forkserver and its fresh children: none when the supervisor left.

    A supervisor killed while it asks for a worker leaves the forkserver
    reading a half-sent request, or the just-forked child reading the
    half-sent process data; CPython then ends in ``EOFError`` (or a reset
    connection) with a traceback on the shared stderr, which an operator
    would take for a bug. Those exit quietly (the exit status still says
    they failed); anything else is printed as usual. A running worker never
    gets here: ``multiprocessing`` reports its exceptions itself.
    """
    if issubclass(kind, (EOFError, ConnectionError)):
        return
    sys.__excepthook__(kind, value, tb)  # type: ignore[arg-type]


def _in_forkserver() -> bool:
    return (sys.argv[:1] == ["-c"] and "multiprocessing.forkserver" in sys.modules
            and threading.current_thread() is threading.main_thread())


_TERM = {signal.SIGTERM}


def _block_term() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, _TERM)


def _unblock_term() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _TERM)


def _child_term() -> None:
    # Crash window: a SIGTERM sent to this child since the fork is pending
    # (blocked), not lost; it is delivered, as by default, on the unblock.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _unblock_term()


if _in_forkserver():
    signal.signal(signal.SIGTERM, _on_sigterm)
    os.register_at_fork(before=_block_term, after_in_parent=_unblock_term,
                        after_in_child=_child_term)
    sys.excepthook = _quiet_exit
