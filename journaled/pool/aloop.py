"""Async runners: one event loop per worker process, made once and reused.

A runner whose call returns a coroutine (``async def runner(step)``, an
``async def run_step``, an async chain function) is driven here, on the
worker's main thread. The run's cancel token lives in shared memory and
has no file descriptor to wait on, so a watcher callback looks at it every
``POLL`` seconds while the step's task runs and calls ``task.cancel()``
once it flips; the ``asyncio.CancelledError`` that comes out is the step
being cancelled (``journaled.Cancelled``), as on the sync path. A task that
never yields (``time.sleep``, a busy loop) blocks the watcher too: then the
supervisor's cancel grace or ``step_timeout`` kills the process, as for a
sync step that ignores its token.
"""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine

from ..api import Cancelled, CancelToken

POLL = 0.01  # seconds between looks at the cancel token while an async step runs

_loop: asyncio.AbstractEventLoop | None = None
# Tasks made on the loop since the current step began: the ones it may leave
# behind (cheaper to track here than to scan asyncio.all_tasks() per step).
_spawned: list[asyncio.Task[Any]] = []


def _track(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
    task = asyncio.Task(coro, loop=loop, **kw)
    _spawned.append(task)
    return task


def worker_loop() -> asyncio.AbstractEventLoop:
    """This process's event loop (created on first use, never closed: it lives as long)."""
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
        _loop.set_task_factory(_track)
        asyncio.set_event_loop(_loop)
    return _loop


def run_async(coro: Coroutine[Any, Any, Any], token: CancelToken) -> Any:
    """Run one step's coroutine to its end; a cancel of the run cancels its task."""
    loop = worker_loop()
    if token.is_cancelled():
        coro.close()
        raise Cancelled("run was cancelled")
    task = loop.create_task(coro)
    cut = False
    timer: asyncio.TimerHandle

    def watch() -> None:
        nonlocal cut, timer
        if task.done():
            return
        if token.is_cancelled():
            cut = True
            task.cancel("run was cancelled")
        else:
            timer = loop.call_later(POLL, watch)

    timer = loop.call_later(POLL, watch)
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        # Ours (the token flipped) or the runner's own: either way the step did
        # not finish, and a cancelled run is what the sync path reports too.
        raise Cancelled("run was cancelled" if cut or token.is_cancelled()
                        else "the step's task was cancelled") from None
    finally:
        # A pending timer would keep this step's task (and its frames) alive.
        timer.cancel()
        _drain(loop)


def _drain(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel tasks the step left behind, so none runs into the next step."""
    left = [t for t in _spawned if not t.done()]
    _spawned.clear()
    for t in left:
        t.cancel()
    if left:
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        _spawned.clear()
