"""Finding a worker's runners: import strings, ``App`` tables, ``@typed`` runners.

What a worker process (and the inline and remote executors, and the crash
test's execution log) calls once at start-up to turn the runner spec it
was given into callables taking a ``Step``. Apart from ``worker.py``
because none of it runs per step.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from typing import Any, Callable

from ..api import Step
from ..app import App, RunnerTable, load_table
from ..typed import declared_type


def resolve_runner(spec: Any) -> Callable[[Step], Any]:
    """Turn an import string ``module:attr`` or a runner object into a callable."""
    if isinstance(spec, str):
        obj = load_import_string(spec)
    else:
        obj = spec
    if isinstance(obj, App):  # one runner wanted (``journaled step``): the default
        return resolve_runner(load_table(obj).get(""))
    fn = obj.run_step if hasattr(obj, "run_step") else obj
    tp = declared_type(obj)
    return fn if tp is None else functools.partial(_typed_call, fn, tp)


def _typed_call(fn: Callable[[Step], Any], tp: Any, step: Step) -> Any:
    """``@typed`` runners: ``step.input()`` knows the type; step 0's input is checked first."""
    step._type = tp
    if step.step_number == 0:
        step.input()  # a bad input is a permanent error naming the field, before any work
    return fn(step)


def resolve_runners(spec: Any) -> RunnerTable:
    """Every runner of a spec (``journaled.app``), each as a callable taking a ``Step``."""
    table = load_table(spec)
    return RunnerTable({name: resolve_runner(obj) for name, obj in table.runners.items()})


def load_import_string(spec: str) -> Any:
    """Import ``module:attr`` (``attr`` may be dotted); ``ImportError`` says what was missing."""
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise ImportError(f"import string {spec!r} must look like 'module:attribute'")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and mod_name.startswith(e.name):
            raise ImportError(f"could not import module {mod_name!r} (run from the directory "
                              "that contains it)") from e
        raise
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"module {mod_name!r} has no attribute {attr!r}") from None
    if not callable(obj) and not hasattr(obj, "run_step") and not isinstance(obj, App):
        raise ImportError(f"{spec!r} is neither callable nor has a run_step method")
    return obj
