"""The inbox: how other processes hand submissions and cancels to the supervisor.

A writer puts each message in its own file under ``STATE/inbox/``: a
dot-named temp file, fsync, atomic rename to its final name, fsync of the
directory, so the file is durable when ``submit`` returns. The supervisor
ignores dot-names and treats every other file as a message; it deletes a
file only after the message's record is durable in the journal, so a crash
anywhere leaves the message either still in the inbox or in the journal
(both, at worst: replaying a submission is idempotent by run id). A file
that does not decode, or is too big to be one, moves to ``inbox/rejected/``
with a ``.why`` beside it; it never crashes the supervisor.

Writers validate a message before it is acknowledged with the same
decoder and checks the supervisor applies (``encode_checked``), so an
acknowledged submission cannot be dropped for its types or sizes. The
supervisor still accepts or rejects each submission of a batch on its own
(a race between clients can make one item conflict), and records each
rejected run id in ``inbox/rejected/runs/<run_id>.json`` *before* it
deletes the inbox file, so ``status``/``wait`` can say ``SubmissionRejected``
with the reason instead of ``RunNotFound``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Union

import msgspec

from . import failpoints
from .app import check_runner_name
from .blobs import BlobRef, BlobStore, as_bytes_view
from .durable import fsync_dir, make_dirs
from .errors import InputTooLarge, InvalidRunId
from .limits import MAX_BODY, MAX_HEADERS, MAX_TEXT, check_size
from .quotas import check_key, check_resources

if TYPE_CHECKING:
    from .notify import DirWatcher

log = logging.getLogger("journaled.inbox")


class SubmitMsg(msgspec.Struct, frozen=True, tag="submit", omit_defaults=True):
    run_id: str
    input: Union[bytes, BlobRef]  # a ref: the client wrote the blob durably before posting
    at: float
    headers: dict[str, str] = {}
    priority: int = 0
    max_attempts: int = 0
    step_timeout: float = 0.0
    runner: str = ""  # "": the supervisor's default runner
    resources: dict[str, float] = {}
    key: str = ""


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


class ScheduleMsg(msgspec.Struct, frozen=True, tag="schedule", omit_defaults=True):
    """Add (or redefine), pause, resume or remove the schedule ``name`` (``action``)."""

    name: str
    action: str
    at: float
    cron: str = ""
    input: bytes = b""
    headers: dict[str, str] = {}
    catch_up: str = "one"
    tz: str = "UTC"


class PauseMsg(msgspec.Struct, frozen=True, tag="pause", omit_defaults=True):
    """Pause (``paused``) or resume dispatch of runs with ``key``, or of all runs."""

    paused: bool
    at: float
    key: str = ""
    all: bool = False


class ForkMsg(msgspec.Struct, frozen=True, tag="fork", omit_defaults=True):
    """Start ``run_id`` at ``step`` of ``source`` (``payload`` None: the recorded one)."""

    run_id: str
    source: str
    step: int
    at: float
    payload: Union[bytes, BlobRef, None] = None


class BatchMsg(msgspec.Struct, frozen=True, tag="batch"):
    """Many submissions in one file: one fsync for all of them."""

    items: list[SubmitMsg]


Message = Union[SubmitMsg, CancelMsg, RedriveMsg, CompactMsg, SignalMsg, BatchMsg,
                ScheduleMsg, PauseMsg, ForkMsg]
SCHEDULE_ACTIONS = ("add", "pause", "resume", "remove")
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(Message)

# One inbox file is read whole by the supervisor: bigger than a record body
# it cannot be anything we wrote (writers split batches below this).
MAX_FILE = MAX_BODY
_I64 = 1 << 63
# '@' for schedule ticks (NAME@2026-12-01T02:00:00Z), '~' for forks (RUN~fork1).
_RUN_ID = re.compile(r"[A-Za-z0-9._:@~-]{1,128}")


def inbox_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "inbox"


def rejected_runs_dir(state_dir: Path) -> Path:
    return inbox_dir(state_dir) / "rejected" / "runs"


# ----------------------------------------------------------------- validation


def check_run_id(run_id: object) -> str:
    """``run_id`` if it is 1-128 chars of ``[A-Za-z0-9._:@~-]``, else ``InvalidRunId``."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise InvalidRunId(run_id)
    return run_id


def check_headers(headers: object) -> dict[str, str]:
    """A copy of ``headers`` if it maps str to str within ``MAX_HEADERS`` bytes."""
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise TypeError(f"headers must be a dict of str to str, got {type(headers).__name__}")
    size = 0
    for k, v in headers.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"headers must map str to str, got {k!r}: {v!r}")
        size += len(k.encode(errors="surrogatepass")) + len(v.encode(errors="surrogatepass"))
    if size > MAX_HEADERS:
        raise InputTooLarge("the headers", size, MAX_HEADERS)
    return dict(headers)


def check_int(what: str, value: object, low: int = -_I64, high: int = _I64 - 1) -> int:
    """An int (not a bool) in ``[low, high]``; ``TypeError``/``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {low} and {high}, got {value}")
    return value


def seconds(what: str, value: object) -> float:
    """Seconds as a finite float >= 0 from a number or a ``timedelta`` (None: 0, no limit)."""
    if value is None:
        return 0.0
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be seconds (a number) or a timedelta, "
                        f"got {type(value).__name__} {value!r}")
    out = float(value)
    if not math.isfinite(out) or out < 0:
        raise ValueError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return out


def check_bytes(what: str, value: object) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, got {type(value).__name__}")
    check_size(what, value)
    return bytes(value)


_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_value(what: str, value: object, blobs: BlobStore | None = None
                ) -> bytes | bytearray | memoryview | BlobRef:
    """An input: bytes-like, or a ``BlobRef``; no size limit for what goes out of line.

    With ``blobs`` a value over its threshold is returned as is (``to_stored``
    writes it as a blob later, once every item of a batch passed); without,
    or at or under the threshold, the inline limit applies.
    """
    if isinstance(value, BlobRef):
        if not (isinstance(value.sha256, str) and _SHA256.fullmatch(value.sha256)
                and isinstance(value.size, int) and value.size >= 0):
            raise ValueError(f"{what}: malformed blob ref {value!r}")
        if blobs is not None and not blobs.exists(value):
            raise ValueError(f"{what}: no blob {value.sha256} of {value.size:,} bytes in "
                             f"{blobs.root} (store it with BlobStore.put first)")
        return value
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, got {type(value).__name__}")
    if type(value) is not bytes:
        value = as_bytes_view(what, value)  # a numpy array's view: len() counts rows
    if blobs is not None and len(value) > blobs.threshold:
        return value
    return check_bytes(what, value)


def to_stored(value: bytes | bytearray | memoryview | BlobRef, blobs: BlobStore | None
              ) -> bytes | BlobRef:
    """``value`` as a message carries it: a big one written (durably) as a blob first."""
    if isinstance(value, BlobRef):
        return value
    if blobs is not None and len(value) > blobs.threshold:
        return blobs.put(value)
    return value if type(value) is bytes else bytes(value)


def check_signal_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"signal key must be a non-empty str, got {key!r}")
    check_size("the signal key", key, MAX_TEXT)
    return key


def check_message(msg: Message) -> None:
    """The checks the supervisor applies beyond decoding; raise on the first problem.

    Raises ``InvalidRunId``, ``InputTooLarge``, ``TypeError`` or ``ValueError``.
    """
    if isinstance(msg, BatchMsg):
        for m in msg.items:
            check_message(m)
        return
    if isinstance(msg, CompactMsg):
        return
    if isinstance(msg, ScheduleMsg):
        check_schedule(msg)
        return
    if isinstance(msg, PauseMsg):
        if not isinstance(msg.key, str) or (not msg.all and not msg.key):
            raise ValueError("pause/resume needs a key or all")
        check_size("the pause key", msg.key, MAX_TEXT)
        return
    check_run_id(msg.run_id)
    if isinstance(msg, ForkMsg):
        check_run_id(msg.source)
        check_int("the fork step", msg.step, 0, (1 << 31) - 1)
        if msg.payload is not None:
            check_value("the fork payload", msg.payload)
        return
    if isinstance(msg, SubmitMsg):
        check_value("the input", msg.input)
        check_headers(msg.headers)
        check_int("priority", msg.priority)
        check_int("max_attempts", msg.max_attempts, 0, (1 << 31) - 1)
        seconds("step_timeout", msg.step_timeout)
        check_runner_name(msg.runner)
        check_resources(msg.resources)
        check_key(msg.key)
    elif isinstance(msg, CancelMsg):
        if not isinstance(msg.reason, str):
            raise TypeError(f"the cancel reason must be a str, got {type(msg.reason).__name__}")
        check_size("the cancel reason", msg.reason, MAX_TEXT)
    elif isinstance(msg, SignalMsg):
        check_signal_key(msg.key)
        check_bytes("the signal data", msg.data)


def check_schedule(msg: ScheduleMsg) -> None:
    """A schedule message's checks (an ``add``'s cron needs croniter: ``CronUnavailable``)."""
    from .schedules import check_catch_up, check_cron, check_name

    check_name(msg.name)
    if msg.action not in SCHEDULE_ACTIONS:
        raise ValueError(f"bad schedule action {msg.action!r}")
    if msg.action == "add":
        check_cron(msg.cron, msg.tz)
        check_catch_up(msg.catch_up)
        check_bytes("the schedule input", msg.input)
        check_headers(msg.headers)


def encode_checked(msg: Message) -> bytes:
    """``msg`` as inbox bytes, once it passed every check the supervisor will apply.

    Round-trips through the supervisor's own decoder, so nothing a client
    was told is queued can be refused later for its types or sizes.
    """
    check_message(msg)
    try:
        data = _enc.encode(msg)
    except (OverflowError, TypeError, ValueError) as e:
        raise ValueError(f"cannot queue this message: {e}") from None
    if len(data) > MAX_FILE:
        raise InputTooLarge("the inbox message", len(data), MAX_FILE)
    try:
        back = _dec.decode(data)
    except msgspec.DecodeError as e:
        raise TypeError(f"cannot queue this message: {e}") from None
    if back != msg:
        raise TypeError(f"cannot queue this message: it does not survive decoding ({msg!r})")
    return data


# ------------------------------------------------------------------- reading


def pending_submissions(state_dir: Path) -> dict[str, SubmitMsg]:
    """Submissions still waiting in the inbox (no supervisor has taken them yet)."""
    out: dict[str, SubmitMsg] = {}
    d = inbox_dir(state_dir)
    try:
        names = sorted(n for n in os.listdir(d) if not n.startswith(".") and n != "rejected")
    except (FileNotFoundError, NotADirectoryError):
        return out
    for name in names:
        try:
            msg = _dec.decode((d / name).read_bytes())
        except Exception:  # noqa: BLE001 - taken or bad: the supervisor decides
            continue
        items = msg.items if isinstance(msg, BatchMsg) else [msg]
        for m in items:
            if isinstance(m, SubmitMsg):
                out.setdefault(m.run_id, m)
    return out


def rejection(state_dir: Path, run_id: str) -> str | None:
    """Why the supervisor refused a submission of ``run_id``, or None if it never did."""
    if not _RUN_ID.fullmatch(run_id):
        return None
    try:
        data = (rejected_runs_dir(state_dir) / f"{run_id}.json").read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return str(json.loads(data)["reason"])
    except (ValueError, KeyError, TypeError):
        return "rejected by the supervisor (its reason file is unreadable)"


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
    """Check, then write one message durably into the inbox; returns its path.

    Raises (before anything is written) what ``encode_checked`` raises.
    """
    data = encode_checked(msg)
    d = inbox_dir(state_dir)
    make_dirs(d)  # state dir and inbox/, each new one's parent fsynced
    # Time-ordered names keep FIFO order for scans of a backlog.
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.msg"
    return write_durable(d, name, data)


class Inbox:
    """The supervisor's side: scan, reject, acknowledge, and wake on new files.

    Rejected files and rejection entries are kept for ``rejected_retention``
    seconds (like finished runs, 7 days by default), then deleted by ``scan``.
    """

    rejected_retention = 7 * 86400.0
    _PRUNE_EVERY = 3600.0

    def __init__(self, state_dir: Path) -> None:
        self.dir = inbox_dir(state_dir)
        make_dirs(self.dir)
        self.rejected = self.dir / "rejected"
        self.rejected_runs = self.rejected / "runs"
        self._seen: set[str] = set()
        self._pruned_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scan(self) -> list[tuple[Path, Message]]:
        """New message files, oldest first; malformed ones are moved to ``rejected/``."""
        out: list[tuple[Path, Message]] = []
        if time.monotonic() - self._pruned_at >= self._PRUNE_EVERY:
            self._pruned_at = time.monotonic()
            self.prune_rejected(time.time() - self.rejected_retention)
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
                size = path.stat().st_size
                if size > MAX_FILE:  # never read a poison file into memory
                    self.reject(path, f"inbox file is {size:,} bytes, over the {MAX_FILE:,}-"
                                      "byte limit; journaled clients never write one")
                    continue
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

    def prune_rejected(self, before: float) -> int:
        """Delete rejected files and rejection entries last changed before ``before``."""
        gone = 0
        for d in (self.rejected, self.rejected_runs):
            try:
                names = os.listdir(d)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                p = d / name
                try:
                    if p.is_file() and p.stat().st_mtime < before:
                        p.unlink()
                        gone += 1
                except OSError:
                    continue
        return gone

    def reject_run(self, run_id: str, why: str, source: str = "") -> None:
        """Record durably that a submission of ``run_id`` was refused, and why.

        Call it before the inbox file is acknowledged: once the file is gone,
        this entry is how a client learns its acknowledged id was refused.
        """
        log.warning("rejected submission of run %s%s: %s", run_id,
                    f" (inbox file {source})" if source else "", why)
        if not _RUN_ID.fullmatch(run_id):
            return  # not a file name we can use; the .why of the file says it
        try:
            make_dirs(self.rejected_runs)
            entry = {"run_id": run_id, "reason": why, "at": time.time(), "file": source}
            write_durable(self.rejected_runs, f"{run_id}.json", json.dumps(entry).encode())
        except OSError as e:
            log.warning("could not record the rejection of run %s: %s", run_id, e)

    def reject(self, path: Path, why: str) -> None:
        """Move a bad message aside with a ``.why``; never fatal."""
        try:
            make_dirs(self.rejected)
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
        # One directory sync for the whole batch: an unlink is durable only then
        # (a resurrected file would be replayed: harmless, but noisy for signals).
        try:
            fsync_dir(self.dir)
        except OSError as e:
            log.warning("could not sync the inbox directory after deleting messages: %s", e)

    def watch(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` from a thread whenever a file lands in the inbox."""
        from .notify import ARRIVALS, DirWatcher

        # Armed here, before the caller's first scan: nothing lands unseen between.
        self._watcher = DirWatcher(self.dir, mask=ARRIVALS)
        self._thread = threading.Thread(target=self._watch, args=(wake, self._watcher),
                                        daemon=True, name="journaled-inbox")
        self._thread.start()

    def _watch(self, wake: Callable[[], None], watcher: DirWatcher) -> None:
        # A periodic wake on timeout doubles as a rescan, in case a change was missed.
        with watcher:
            while not self._stop.is_set():
                watcher.wait(1.0, self._stop)
                if not self._stop.is_set():
                    wake()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._watcher.interrupt()  # out of its wait now, not at the next timeout
            self._thread.join(timeout=2)
