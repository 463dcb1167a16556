"""journaled: a durable step-workflow runner for CPU-heavy Python on one machine."""

from typing import TYPE_CHECKING

from .api import (
    Attempt,
    Cancel,
    Cancelled,
    CancelToken,
    Children,
    Continue,
    ContinueAfter,
    ContinueOnSignal,
    DeadLetter,
    Fail,
    Memo,
    RunOutcome,
    RunStatus,
    Signal,
    Spawn,
    Step,
    StepError,
    Succeed,
)
from .app import App
from .chain import chain
from .typed import typed

if TYPE_CHECKING:  # for type checkers only: at run time they load lazily (below)
    from .aio import AsyncClient
    from .client import Client
    from .runtime import Runtime

__version__ = "0.1.0"

__all__ = [
    "App", "chain", "typed",
    "AsyncClient", "Attempt", "Cancel", "Cancelled", "CancelToken", "Client", "Continue",
    "ContinueAfter", "ContinueOnSignal", "DeadLetter", "Fail", "Memo", "Runtime", "RunOutcome",
    "RunStatus",
    "Children", "Spawn",
    "Signal", "Step", "StepError", "Succeed", "__version__",
]


def __getattr__(name: str) -> object:
    # Runtime and Client pull in the journal and the pool; a worker that only
    # needs the step API should not pay for them.
    if name == "Runtime":
        from .runtime import Runtime

        return Runtime
    if name == "AsyncClient":
        from .aio import AsyncClient

        return AsyncClient
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(f"module 'journaled' has no attribute {name!r}")
