"""The inbox: how other processes hand submissions and cancels to the supervisor.

A writer puts each message in its own file under ``STATE/inbox/``: a
dot-named temp file, fsync, atomic rename to its final name, fsync of the
directory, so the file is durable when ``submit`` returns. The supervisor
ignores dot-names and treats every other file as a message; it deletes a
file only after the message's record is durable in the journal, so a crash
anywhere leaves the message either still in the inbox or in the journal
(both, at worst: replaying a submission is idempotent by run id). A file
that does not decode moves to ``inbox/rejected/`` with a ``.why`` beside it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Union

import msgspec

from . import failpoints
from .journal import fsync_dir

log = logging.getLogger("journaled.inbox")


class SubmitMsg(msgspec.Struct, frozen=True, tag="submit", omit_defaults=True):
    run_id: str
    input: bytes
    at: float
    headers: dict[str, str] = {}
    priority: int = 0
    max_attempts: int = 0
    step_timeout: float = 0.0


class CancelMsg(msgspec.Struct, frozen=True, tag="cancel"):
    run_id: str
    reason: str
    at: float


class RedriveMsg(msgspec.Struct, frozen=True, tag="redrive"):
    run_id: str
    at: float


class SignalMsg(msgspec.Struct, frozen=True, tag="signal"):
    run_id: str
    key: str
    data: bytes
    at: float


class CompactMsg(msgspec.Struct, frozen=True, tag="compact"):
    """Ask a running supervisor to compact its journal now."""

    at: float


class BatchMsg(msgspec.Struct, frozen=True, tag="batch"):
    """Many submissions in one file: one fsync for all of them."""

    items: list[SubmitMsg]


Message = Union[SubmitMsg, CancelMsg, RedriveMsg, CompactMsg, SignalMsg, BatchMsg]
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(Message)


def inbox_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "inbox"


def write_durable(directory: Path, name: str, data: bytes, mode: int = 0o600) -> Path:
    """Atomically create ``directory/name``: temp file, fsync, rename, fsync directory."""
    final = directory / name
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if failpoints.ENABLED:
        failpoints.hit("inbox.before_rename")
    os.rename(tmp, final)  # atomic: readers see no file or the whole file
    fsync_dir(directory)  # the rename itself is durable only once the directory is synced
    return final


def post(state_dir: Path, msg: Message) -> Path:
    """Write one message durably into the inbox; returns its path."""
    d = inbox_dir(state_dir)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Time-ordered names keep FIFO order for scans of a backlog.
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.msg"
    return write_durable(d, name, _enc.encode(msg))


class Inbox:
    """The supervisor's side: scan, reject, acknowledge, and wake on new files."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = inbox_dir(state_dir)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.rejected = self.dir / "rejected"
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scan(self) -> list[tuple[Path, Message]]:
        """New message files, oldest first; malformed ones are moved to ``rejected/``."""
        out: list[tuple[Path, Message]] = []
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return out
        for name in names:
            if name.startswith(".") or name in self._seen or name == "rejected":
                continue
            path = self.dir / name
            if not path.is_file():
                continue
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            try:
                msg = _dec.decode(data)
            except msgspec.DecodeError as e:
                self.reject(path, f"not a journaled inbox message: {e}")
                continue
            self._seen.add(name)
            out.append((path, msg))
        return out

    def scan_pending(self) -> bool:
        """Whether any message file waits that ``scan`` has not handed out yet."""
        try:
            return any(not n.startswith(".") and n != "rejected" and n not in self._seen
                       for n in os.listdir(self.dir))
        except FileNotFoundError:
            return False

    def reject(self, path: Path, why: str) -> None:
        """Move a bad message aside with a ``.why``; never fatal."""
        self.rejected.mkdir(mode=0o700, exist_ok=True)
        try:
            write_durable(self.rejected, path.name + ".why", (why + "\n").encode())
            os.rename(path, self.rejected / path.name)
            fsync_dir(self.dir)
        except OSError as e:
            log.warning("could not move rejected inbox file %s aside: %s", path.name, e)
        self._seen.discard(path.name)
        log.warning("rejected inbox file %s: %s", path.name, why)

    def ack(self, paths: list[Path]) -> None:
        """Delete messages whose records are durable; a crash before this only replays them."""
        if not paths:
            return
        if failpoints.ENABLED:
            failpoints.hit("inbox.before_unlink")
        for p in paths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
            self._seen.discard(p.name)

    def watch(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` from a thread whenever a file lands in the inbox."""
        self._thread = threading.Thread(target=self._watch, args=(wake,), daemon=True,
                                        name="journaled-inbox")
        self._thread.start()

    def _watch(self, wake: Callable[[], None]) -> None:
        from .notify import DirWatcher

        # A periodic wake on timeout doubles as a rescan, in case a change was missed.
        with DirWatcher(self.dir) as watcher:
            while not self._stop.is_set():
                watcher.wait(1.0, self._stop)
                if not self._stop.is_set():
                    wake()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
