"""The supervisor socket's wire format: versioned, length-prefixed msgpack frames.

A frame is ``u32 big-endian length | msgpack body``; the body is one
tagged msgspec Struct. The first frame on a connection is the client's
``Hello``; the server answers ``Welcome`` (or ``Err`` and closes for a
version it does not speak). After that every request carries an ``id``
chosen by the client and every answer (``Ok``, ``Outcome`` or ``Err``)
carries the same ``id``; answers to different requests may come in any
order (a ``Wait`` is answered when its run ends).

The request bodies reuse the inbox's messages (``SubmitMsg``,
``CancelMsg``, ``SignalMsg``, ``RedriveMsg``) and the supervisor applies the
same ``check_message`` to them, so both doors refuse the same things and
a submission item carries whatever ``SubmitMsg.input`` is typed as.

Two peers that both say ``lean`` (``Hello.lean``, ``Welcome.lean``) also use
the positional forms of the two commonest frames: ``Put`` for one plain
submission and ``End`` for a pushed end; ``Revoke`` takes back pushed ends
of runs redriven since. Each is a new tag, so an older peer is never sent one.

Frames are bounded by ``MAX_FRAME``: a bigger one is refused and the
connection closed (the client sends a batch that big through the inbox).
"""

from __future__ import annotations

import struct
from typing import Any, Union

import msgspec

from . import errors
from .api import RunOutcome, RunStatus
from .blobs import BlobRef
from .inbox import CancelMsg, ForkMsg, PauseMsg, RedriveMsg, ScheduleMsg, SignalMsg, SubmitMsg

VERSION = 1
MAX_FRAME = 16 << 20
SOCKET_NAME = "supervisor.sock"

_LEN = struct.Struct(">I")
HEADER = _LEN.size


# ------------------------------------------------------------------ requests


class Hello(msgspec.Struct, frozen=True, tag="hello", array_like=True):
    """The first frame. ``ends``: send the ``Outcome`` of each run this connection
    submits unasked, with request id 0 (``PUSHED``), once its end is durable, along
    with the connection's next answer, so a ``wait`` after submits mostly costs no
    round trip. Best effort: the server may drop pushes (too many held); the client
    then asks with ``Wait``. ``lean``: this client reads pushed ends as ``End`` and
    ``Revoke`` (and may send ``Put`` if the ``Welcome`` says ``lean`` too). Trailing
    fields with defaults: an older client's hello decodes as ``False``, an older
    server ignores them."""

    version: int
    pid: int = 0
    ends: bool = False
    lean: bool = False


class Submit(msgspec.Struct, frozen=True, tag="submit", array_like=True):
    """Submit every item or none (a conflict or a bad item refuses the whole batch).

    ``fresh``: every run id in ``items`` was made by the client for this call
    and never sent before, so no archived run can hold it and the supervisor
    skips the archive look-up for re-submits. A resend of the same items (a
    reconnect) says ``False``. Added in version 1 as a trailing field with a
    default: an older peer's frame without it decodes, and an older
    supervisor ignores it.
    """

    id: int
    items: list[SubmitMsg]
    fresh: bool = False


class Put(msgspec.Struct, frozen=True, tag="put", array_like=True, gc=False):
    """One plain submission, the commonest request in its leanest form: a bytes input,
    every option at its default, and an id the client made for this call (as
    ``Submit`` with ``fresh``). Answered ``Ok`` once durable. Sent only to a server
    whose ``Welcome`` says ``lean``; a resend after a broken connection goes as
    ``Submit`` without ``fresh`` (its first try may have taken)."""

    id: int
    run_id: str
    input: bytes
    at: float


class Cancel(msgspec.Struct, frozen=True, tag="cancel", array_like=True):
    id: int
    msg: CancelMsg


class Signal(msgspec.Struct, frozen=True, tag="signal", array_like=True):
    id: int
    msg: SignalMsg


class Retry(msgspec.Struct, frozen=True, tag="retry", array_like=True):
    id: int
    msg: RedriveMsg


class Wait(msgspec.Struct, frozen=True, tag="wait", array_like=True):
    """Answered with the run's ``Outcome`` once it is durable, or ``TimeoutError``."""

    id: int
    run_id: str
    timeout: float | None = None


class Status(msgspec.Struct, frozen=True, tag="status", array_like=True):
    """The live, durable view of one run (no journal fold)."""

    id: int
    run_id: str


class Ops(msgspec.Struct, frozen=True, tag="ops", array_like=True):
    """A schedule, pause/resume or fork message (issue 15); ``Ok`` once its records are durable."""

    id: int
    msg: Union[ScheduleMsg, PauseMsg, ForkMsg]


Request = Union[Hello, Submit, Put, Cancel, Signal, Retry, Wait, Status, Ops]


# ------------------------------------------------------------------- replies


PUSHED = 0  # the request id of an ``Outcome`` the server sent unasked (``Hello.ends``)


class Welcome(msgspec.Struct, frozen=True, tag="welcome", array_like=True):
    """The answer to ``Hello``; ``lean``: this server takes ``Put`` (and pushes ``End``
    to a client whose hello said ``lean``). A trailing field: an older client ignores it."""

    version: int
    pid: int
    lean: bool = False


class Ok(msgspec.Struct, frozen=True, tag="ok", array_like=True, gc=False):
    id: int
    value: Any = None


class Outcome(msgspec.Struct, frozen=True, tag="outcome", array_like=True, gc=False):
    """A run's outcome; a result stored as a blob travels as its ``ref`` (never the bytes)."""

    id: int
    outcome: RunOutcome
    ref: Union[BlobRef, None] = None

    def value(self) -> RunOutcome:
        """The outcome with a blob result back as its ``BlobRef`` (the reader resolves it)."""
        if self.ref is None:
            return self.outcome
        return msgspec.structs.replace(self.outcome, result=self.ref)  # type: ignore[arg-type]


class End(msgspec.Struct, frozen=True, tag="end", array_like=True, gc=False):
    """A run's end pushed unasked (as ``Outcome`` with ``PUSHED``) to a client whose hello
    said ``lean``: ``RunOutcome``'s fields in order, by position (no field names to
    encode and match per push). Only a bytes result; one stored as a blob is pushed as
    ``Outcome`` with its ``ref``."""

    run_id: str
    status: RunStatus
    result: Union[bytes, None] = None
    error: Union[str, None] = None
    steps: int = 0
    submitted_at: Union[float, None] = None
    finished_at: Union[float, None] = None

    @classmethod
    def of(cls, o: RunOutcome) -> End:
        return cls(o.run_id, o.status, o.result, o.error, o.steps,  # type: ignore[arg-type]
                   o.submitted_at, o.finished_at)

    def value(self) -> RunOutcome:
        return RunOutcome(self.run_id, self.status, self.result, self.error, self.steps,
                          self.submitted_at, self.finished_at)


def outcome_reply(req_id: int, out: RunOutcome) -> Outcome:
    """The ``Outcome`` frame for ``out``: a ``BlobRef`` result moves to ``ref``."""
    if isinstance(out.result, BlobRef):
        return Outcome(req_id, msgspec.structs.replace(out, result=None), out.result)
    return Outcome(req_id, out)


class Err(msgspec.Struct, frozen=True, tag="err", array_like=True):
    """An error the client raises as the same class with the same message and fields."""

    id: int
    kind: str
    message: str
    fields: dict[str, Any] = {}


class Revoke(msgspec.Struct, frozen=True, tag="revoke", array_like=True):
    """Ends pushed before (``PUSHED``) that are no longer the runs' ends: each was
    redriven. Sent to a connection that may hold one before the redrive's own answer
    goes out, so a wait that starts after that answer asks again; the client drops
    what it holds for these runs. Only a connection that asked for ends gets one."""

    run_ids: list[str]


Reply = Union[Welcome, Ok, Outcome, Err, Revoke, End]

# What may cross the wire as an error: journaled's own classes and the builtins the
# API raises for bad arguments. Anything else arrives as a plain JournaledError.
_ERRORS: dict[str, type[BaseException]] = {
    name: cls for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, errors.JournaledError)
}
_ERRORS.update(TypeError=TypeError, ValueError=ValueError, TimeoutError=TimeoutError)
# A peer breaking the protocol (bad frame, wrong types, wrong version).
PROTOCOL_ERROR = "ProtocolError"


class ProtocolError(errors.JournaledError):
    """The peer sent something that is not this protocol; the connection is closed."""


_ERRORS[PROTOCOL_ERROR] = ProtocolError


def err_of(req_id: int, e: BaseException) -> Err:
    """The wire form of ``e``: its class name, its message and its public fields."""
    fields = {k: v for k, v in vars(e).items()
              if not k.startswith("_") and isinstance(v, (str, int, float, bool, type(None)))}
    kind = type(e).__name__ if type(e).__name__ in _ERRORS else "JournaledError"
    return Err(req_id, kind, str(e), fields)


def raise_err(err: Err) -> None:
    """Raise what the server raised: same class, same ``str()``, same attributes."""
    cls = _ERRORS.get(err.kind, errors.JournaledError)
    e = cls.__new__(cls)
    Exception.__init__(e, err.message)
    for k, v in err.fields.items():
        try:
            setattr(e, k, v)
        except AttributeError:
            pass
    raise e


# -------------------------------------------------------------------- frames

_enc = msgspec.msgpack.Encoder()
request_decoder = msgspec.msgpack.Decoder(Request)
reply_decoder = msgspec.msgpack.Decoder(Reply)


def frame(msg: msgspec.Struct) -> bytes:
    """``msg`` as one frame; ``ValueError`` if its body is over ``MAX_FRAME``."""
    body = _enc.encode(msg)
    if len(body) > MAX_FRAME:
        raise ValueError(f"a frame of {len(body):,} bytes is over the {MAX_FRAME:,}-byte limit")
    return _LEN.pack(len(body)) + body


def frame_size(buf: bytes | bytearray | memoryview, at: int = 0) -> int:
    """The body length announced by the header at ``buf[at:]`` (which must hold it)."""
    return int(_LEN.unpack_from(buf, at)[0])


def guess_id(body: bytes | memoryview) -> int:
    """The request id of a body that failed to decode, if it has one where ours do; else 0."""
    try:
        raw = msgspec.msgpack.decode(body)
    except (msgspec.DecodeError, ValueError, TypeError):
        return 0
    if isinstance(raw, list) and len(raw) > 1 and type(raw[1]) is int:
        return raw[1]
    return 0
