"""Typed payloads: msgspec values in, msgspec values out, bytes on the journal.

A payload or result that is not bytes-like (a ``msgspec.Struct``, a dict,
a list, a number...) is encoded as msgpack by msgspec where it is handed
over (``Client.submit``, ``Continue``/``Succeed`` in the worker); a bytes
value is never touched, so byte runners see exactly what they always did.
Decoding is on demand (``step.input(Order)``, ``Client.result(id,
type=Order)``) or declared (``@journaled.typed(Order)``; a chain
function's type hint), and it validates: a bad payload is a permanent
step error naming the field (msgspec says ``at `$.qty```). No pickle.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable, TypeVar

import msgspec

from .api import Continue, ContinueAfter, ContinueOnSignal, StepError, Succeed

T = TypeVar("T")

_BYTES_LIKE = (bytes, bytearray, memoryview)
_encoder = msgspec.msgpack.Encoder()
_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}
ATTR = "__journaled_type__"


def encode(what: str, value: Any) -> bytes:
    """msgpack bytes of ``value``; ``TypeError`` naming ``what`` if msgspec cannot encode it."""
    try:
        return _encoder.encode(value)
    except (TypeError, msgspec.EncodeError) as e:
        raise TypeError(f"{what} must be bytes or a msgspec-encodable value "
                        f"(Struct, dict, list, number...): {e}") from None


def as_payload(what: str, value: Any) -> Any:
    """``value`` unchanged if bytes-like (or a blob ref), else its msgpack encoding.

    A ``str`` stays an error: it is ambiguous (text or encoded bytes?).
    """
    if isinstance(value, _BYTES_LIKE) or type(value).__name__ == "BlobRef":
        return value
    if isinstance(value, str):
        raise TypeError(f"{what} must be bytes, got str (encode it, or pass a Struct or dict "
                        "for a typed payload)")
    return encode(what, value)


def encode_outcome(out: Any) -> Any:
    """``out`` with a typed payload (or result) encoded; bytes and other outcomes as they are.

    ``TypeError`` (a permanent step error) for a value msgspec cannot encode.
    """
    t = type(out)
    if t is Succeed:
        if not isinstance(out.result, _BYTES_LIKE):
            return msgspec.structs.replace(out, result=as_payload("Succeed.result", out.result))
    elif t is Continue or t is ContinueAfter or t is ContinueOnSignal:
        if not isinstance(out.payload, _BYTES_LIKE):
            return msgspec.structs.replace(
                out, payload=as_payload(f"{t.__name__}.payload", out.payload))
    return out


def decoder(tp: Any) -> msgspec.msgpack.Decoder[Any]:
    dec = _decoders.get(tp)
    if dec is None:
        dec = _decoders[tp] = msgspec.msgpack.Decoder(tp)
    return dec


def decode(tp: type[T] | Any, data: bytes | memoryview, what: str = "payload") -> T:
    """``data`` as ``tp``; a permanent ``StepError`` saying which field is wrong."""
    if tp is bytes or tp is Any:
        return bytes(data) if tp is bytes else data  # type: ignore[return-value]
    try:
        return decoder(tp).decode(data)  # type: ignore[no-any-return]
    except msgspec.ValidationError as e:
        raise StepError.permanent(f"bad {what} for {_type_name(tp)}: {e}") from None
    except msgspec.DecodeError as e:
        raise StepError.permanent(f"{what} is not a msgpack {_type_name(tp)}: {e}") from None


def decode_result(tp: type[T] | Any, data: bytes) -> T:
    """Caller side (``Client.result(id, type=...)``): ``msgspec.ValidationError`` as is."""
    if tp is bytes:
        return data  # type: ignore[return-value]
    return decoder(tp).decode(data)  # type: ignore[no-any-return]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


def typed(tp: Any) -> Callable[[T], T]:
    """Declare the type of a runner's input (step 0's payload).

    ``step.input()`` then decodes to it, and the worker validates step 0's
    payload before calling the runner, so a bad input fails the run at once
    (permanent, naming the field). The runner itself is returned unchanged.
    """

    def mark(runner: T) -> T:
        target = runner
        try:
            setattr(target, ATTR, tp)
        except (AttributeError, TypeError):  # a bound method or builtin: mark the function
            setattr(getattr(target, "__func__", target), ATTR, tp)
        return runner

    return mark


def declared_type(runner: Any) -> Any:
    """The type ``@typed`` declared on a runner (or its ``run_step``), else None."""
    tp = getattr(runner, ATTR, None)
    if tp is None and hasattr(runner, "run_step"):
        tp = getattr(runner.run_step, ATTR, None)
    return tp


def first_param_type(fn: Callable[..., Any]) -> Any:
    """The resolved annotation of ``fn``'s first parameter, or None (unannotated, bytes)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if not params:
        return None
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - an unresolvable hint: treat it as untyped
        hints = {}
    tp = hints.get(params[0].name)
    if tp in (None, bytes, Any, inspect.Parameter.empty):
        return None
    if tp in (bytearray, memoryview):
        return None
    return tp
