"""``journaled.chain(f0, f1, f2)``: a runner made of plain functions, one per step.

Step N calls ``f_N`` with step N's payload and hands its return value on:
``Continue(value)`` after every function but the last, ``Succeed(value)``
after the last. The step number is durable, so a retry, a redrive or a
crash resumes at the right function with the payload the previous one
returned. A function may:

- take ``(payload)`` or ``(payload, step)`` (for headers, memo, progress,
  the cancel token);
- declare its payload's type with a hint (``def resize(o: Order)``): the
  payload is decoded to it, validated (a bad one is a permanent error
  naming the field); unannotated or ``bytes``: the raw bytes;
- return bytes or any msgspec-encodable value (encoded as msgpack; ``None``
  hands on an empty payload);
- return an outcome itself (``Fail``, ``ContinueAfter``, ``Succeed`` to end
  early...), raise ``StepError``, or be ``async def``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from .api import OUTCOME_TYPES, Continue, Step, StepError, Succeed
from .typed import decode, first_param_type


def _is_outcome(value: Any) -> bool:
    return isinstance(value, OUTCOME_TYPES)


def _wants_step(fn: Callable[..., Any]) -> bool:
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return False
    return len(params) >= 2


class Chain:
    """The runner ``chain`` builds; picklable (its functions are, by reference)."""

    def __init__(self, *fns: Callable[..., Any]) -> None:
        if not fns:
            raise ValueError("chain() needs at least one function")
        for i, f in enumerate(fns):
            if not callable(f):
                raise TypeError(f"chain() argument {i} is not callable: {f!r}")
        self.fns = fns
        self._shape: list[tuple[Any, bool]] | None = None  # per function: (type, wants step)

    def __getstate__(self) -> dict[str, Any]:
        return {"fns": self.fns, "_shape": None}

    def _shapes(self) -> list[tuple[Any, bool]]:
        if self._shape is None:
            self._shape = [(first_param_type(f), _wants_step(f)) for f in self.fns]
        return self._shape

    def run_step(self, step: Step) -> Any:
        n = step.step_number
        if n >= len(self.fns):
            raise StepError.permanent(f"the chain has {len(self.fns)} functions; there is no "
                                      f"step {n}")
        tp, wants_step = self._shapes()[n]
        name = getattr(self.fns[n], "__name__", f"function {n}")
        arg = step.payload if tp is None else decode(tp, step.payload, f"payload of {name}")
        out = self.fns[n](arg, step) if wants_step else self.fns[n](arg)
        last = n == len(self.fns) - 1
        if inspect.iscoroutine(out):
            return _wrap_async(out, last)
        return _wrap(out, last)

    __call__ = run_step

    def __repr__(self) -> str:
        return f"chain({', '.join(getattr(f, '__name__', '?') for f in self.fns)})"


def _wrap(out: Any, last: bool) -> Any:
    if _is_outcome(out):
        return out
    if out is None:
        out = b""  # a function that returns nothing hands on an empty payload
    return Succeed(out) if last else Continue(out)


async def _wrap_async(coro: Any, last: bool) -> Any:
    return _wrap(await coro, last)


def chain(*fns: Callable[..., Any]) -> Chain:
    """A runner from plain functions: step N runs ``fns[N]`` (see the module docstring)."""
    return Chain(*fns)
