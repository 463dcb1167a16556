"""``AsyncClient``: the ``Client`` for asyncio code (web handlers), over the same socket.

One connection per ``AsyncClient`` carries every concurrent call: requests
are tagged with ids and a reader task hands each answer to the coroutine
that asked, so a thousand handlers awaiting ``wait`` cost one socket and
no threads. Answers mean what ``Client``'s mean (durable on return, same
errors). With no supervisor listening, or for a run the supervisor does
not hold live (waiting in the inbox, rejected, archived), the call runs
``Client``'s inbox path in a thread (``asyncio.to_thread``), and a
connection that breaks before its answer is retried the same way (every
request is idempotent by run id; see ``Client._door_call``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable, Sequence

import msgspec

from .api import RunOutcome
from .app import check_runner_name
from .blobs import BlobRef, BlobStore
from .client import Client, fits_a_frame, fresh_submit, submit_msgs
from .connection import DoorLost, socket_path
from .errors import RunNotFound
from .inbox import (
    CancelMsg,
    RedriveMsg,
    SignalMsg,
    check_bytes,
    check_run_id,
    check_signal_key,
    seconds,
)
from .protocol import (
    HEADER,
    MAX_FRAME,
    VERSION,
    Cancel,
    Err,
    Hello,
    Ok,
    Outcome,
    Retry,
    Signal,
    Status,
    Wait,
    Welcome,
    frame,
    frame_size,
    raise_err,
    reply_decoder,
)
from .server import short_path
from .serving import check_served_runner, served_limits

__all__ = ["AsyncClient"]


class AsyncClient:
    """Submit, cancel, signal, retry and wait from asyncio code.

    Args:
        state_dir: the supervisor's state directory.
        use_socket: ``False`` always uses the inbox (in a thread).

    Use ``async with AsyncClient(state) as c:`` or call ``await c.close()``.
    """

    def __init__(self, state_dir: str | os.PathLike[str], *, use_socket: bool = True) -> None:
        self.state_dir = Path(state_dir)
        self.use_socket = use_socket
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._connecting: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sync: Client | None = None  # the inbox path, one thread at a time
        self._sync_lock = threading.Lock()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._drop(DoorLost("the client was closed"))

    # ---------------------------------------------------------- the socket

    async def _connect(self) -> bool:
        loop = asyncio.get_running_loop()
        if self._writer is not None and self._loop is not loop:
            self._drop(DoorLost("used from another event loop"))  # its streams belong there
        if self._writer is not None:
            return True
        if not self.use_socket:
            return False
        if self._connecting is None or self._loop is not loop:
            self._connecting = asyncio.Lock()
            self._loop = loop
        async with self._connecting:
            if self._writer is not None:
                return True
            path = socket_path(self.state_dir)
            if not path.exists():
                return False
            addr, fd = short_path(path)
            try:
                reader, writer = await asyncio.open_unix_connection(addr, limit=MAX_FRAME + 64)
            except OSError:
                return False
            finally:
                if fd >= 0:
                    os.close(fd)
            try:
                writer.write(frame(Hello(VERSION, os.getpid())))
                welcome = await asyncio.wait_for(_read_reply(reader), 5.0)
            except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.TimeoutError,
                    msgspec.DecodeError, ValueError):
                writer.close()
                return False
            if type(welcome) is not Welcome:
                writer.close()
                return False
            self._reader, self._writer = reader, writer
            self._task = asyncio.get_running_loop().create_task(self._read_loop(reader))
            return True

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                msg = await _read_reply(reader)
                fut = self._pending.pop(getattr(msg, "id", 0), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (OSError, EOFError, asyncio.IncompleteReadError, msgspec.DecodeError,
                ValueError) as e:
            self._drop(DoorLost(f"the supervisor's socket closed: {e or 'end of stream'}"))
        except asyncio.CancelledError:
            pass

    def _drop(self, err: BaseException) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        task, self._task = self._task, None
        pending, self._pending = self._pending, {}
        try:
            if writer is not None:
                writer.close()
            if task is not None and task is not asyncio.current_task():
                task.cancel()
            for fut in pending.values():
                if not fut.done():
                    fut.set_exception(err)
        except RuntimeError:
            pass  # their event loop is closed: nothing of theirs can run again

    async def _call(self, make: Callable[[int], Any], timeout: float | None = None
                    ) -> tuple[bool, Any]:
        """``(True, answer)`` from the supervisor, or ``(False, None)``: use the inbox path."""
        for _ in (1, 2):  # reconnect once, as Client does
            if not await self._connect():
                return False, None
            rid = next(self._ids)
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._pending[rid] = fut
            writer = self._writer
            assert writer is not None
            try:
                writer.write(frame(make(rid)))
                await writer.drain()
                msg = await asyncio.wait_for(fut, timeout)
            except (DoorLost, OSError):
                self._pending.pop(rid, None)
                self._drop(DoorLost("the supervisor's socket broke"))
                continue
            except asyncio.TimeoutError:
                self._pending.pop(rid, None)
                raise TimeoutError("the supervisor did not answer in time") from None
            except BaseException:
                self._pending.pop(rid, None)
                raise
            t = type(msg)
            if t is Ok:
                return True, msg.value
            if t is Outcome:
                return True, msg.value()
            if t is Err:
                try:
                    raise_err(msg)
                except RunNotFound:
                    return False, None
            return False, None
        return False, None

    async def _inbox(self, fn: Callable[[Client], Any]) -> Any:
        """Run ``fn`` on the inbox path in a thread, one at a time (a fold is not shared)."""
        def work() -> Any:
            with self._sync_lock:
                if self._sync is None:
                    self._sync = Client(self.state_dir, use_socket=False)
                return fn(self._sync)
        return await asyncio.to_thread(work)

    # --------------------------------------------------------------- calls

    async def submit(self, input: Any = b"", headers: dict[str, str] | None = None,
                     run_id: str | None = None, *, priority: int = 0, max_attempts: int = 0,
                     step_timeout: float | timedelta | None = 0.0,
                     runner: str | None = None, resources: dict[str, float] | None = None,
                     key: str | None = None) -> str:
        """As ``Client.submit``: the run's id, once its submission is durable."""
        return (await self.submit_many([input], headers,
                                       [run_id] if run_id is not None else None,
                                       priority=priority, max_attempts=max_attempts,
                                       step_timeout=step_timeout, runner=runner,
                                       resources=resources, key=key))[0]

    async def submit_many(self, inputs: Iterable[Any], headers: dict[str, str] | None = None,
                          run_ids: Sequence[str] | None = None, *, priority: int = 0,
                          max_attempts: int = 0, step_timeout: float | timedelta | None = 0.0,
                          runner: str | None = None, resources: dict[str, float] | None = None,
                          key: str | None = None) -> list[str]:
        """As ``Client.submit_many``: all or nothing, one group commit."""
        if runner:
            check_served_runner(self.state_dir, check_runner_name(runner))
        items, ids = submit_msgs(inputs, headers, run_ids, priority, max_attempts, step_timeout,
                                 runner=runner, resources=resources, key=key,
                                 limits=served_limits(self.state_dir) if resources else None)
        if items and fits_a_frame(items):
            served, _ = await self._call(fresh_submit(items, run_ids is None))
            if served:
                return ids
        # The same ids through the inbox: a no-op for any the socket already took.
        same = [m.run_id for m in items]
        opts = dict(priority=priority, max_attempts=max_attempts, step_timeout=step_timeout,
                    runner=runner, resources=resources, key=key)
        await self._inbox(lambda c: c.submit_many([m.input for m in items], headers, same,
                                                  **opts))
        return ids

    async def cancel(self, run_id: str, reason: str = "cancelled") -> RunOutcome:
        """As ``Client.cancel``: the status the request found (terminal: it came too late)."""
        check_run_id(run_id)
        served, was = await self._call(
            lambda i: Cancel(i, CancelMsg(run_id, reason, time.time())))
        if served:
            return was  # type: ignore[no-any-return]
        return await self._inbox(lambda c: c.cancel(run_id, reason))  # type: ignore[no-any-return]

    async def signal(self, run_id: str, key: str, data: bytes = b"") -> None:
        """As ``Client.signal``."""
        check_run_id(run_id)
        check_signal_key(key)
        raw = check_bytes("the signal data", data)
        served, _ = await self._call(lambda i: Signal(i, SignalMsg(run_id, key, raw, time.time())))
        if not served:
            await self._inbox(lambda c: c.signal(run_id, key, raw))

    async def retry(self, run_id: str) -> None:
        """As ``Client.retry``."""
        check_run_id(run_id)
        served, _ = await self._call(lambda i: Retry(i, RedriveMsg(run_id, time.time())))
        if not served:
            await self._inbox(lambda c: c.retry(run_id))

    async def _resolved(self, out: RunOutcome) -> RunOutcome:
        """A result stored as a blob read into ``result`` (in a thread: it may be big)."""
        if isinstance(out.result, BlobRef):
            return await asyncio.to_thread(BlobStore(self.state_dir).resolve_outcome, out)
        return out

    async def status(self, run_id: str) -> RunOutcome:
        """As ``Client.status``: the supervisor's durable view, else the journal (in a thread)."""
        if isinstance(run_id, str):
            served, out = await self._call(lambda i: Status(i, run_id))
            if served:
                return await self._resolved(out)
        return await self._inbox(lambda c: c.status(run_id))  # type: ignore[no-any-return]

    async def wait(self, run_id: str, timeout: float | timedelta | None = None) -> RunOutcome:
        """As ``Client.wait``: the outcome once durable; builtin ``TimeoutError`` if not in time."""
        limit = None if timeout is None or timeout == float("inf") else \
            seconds("timeout", timeout)
        start = time.monotonic()
        if isinstance(run_id, str):
            served, out = await self._call(lambda i: Wait(i, run_id, limit),
                                           None if limit is None else limit + 30.0)
            if served:
                return await self._resolved(out)
        left = None if limit is None else max(0.0, limit - (time.monotonic() - start))
        # A wait may be long: its own Client (its own fold), so it blocks no other call.
        return await asyncio.to_thread(
            lambda: Client(self.state_dir, use_socket=False).wait(run_id, left))

    async def outcomes(self, run_ids: Iterable[str], timeout: float | timedelta | None = None
                       ) -> AsyncIterator[RunOutcome]:
        """Each run's outcome as it ends, in the order they end (``as_completed``)."""
        tasks = [asyncio.ensure_future(self.wait(rid, timeout)) for rid in run_ids]
        try:
            for fut in asyncio.as_completed(tasks):
                yield await fut
        finally:
            for t in tasks:
                t.cancel()


async def _read_reply(reader: asyncio.StreamReader) -> Any:
    head = await reader.readexactly(HEADER)
    size = frame_size(head)
    if size > MAX_FRAME:
        raise ValueError(f"the supervisor sent a {size:,}-byte frame")
    return reply_decoder.decode(await reader.readexactly(size))
