"""Named runners: one supervisor, one state directory, several pipelines.

A *runner spec* is what the supervisor hands to every worker (it crosses
the forkserver, so it is import strings or objects pickled by reference):

- an import string ``module:attr`` (an ``App`` there serves all its
  runners), or several separated by spaces, each optionally renamed
  ``NAME=module:attr`` (``journaled run app:images app:arrays``);
- a list of such strings;
- an ``App``, or a ``{name: runner}`` dict (``Runtime``);
- one runner (function, object with ``run_step``, ``chain``).

Both sides turn it into the same ``RunnerTable``: the supervisor for the
names it accepts (``serving.json``, submit checks), each worker for the
callables it picks by the run's ``runner`` name. A run submitted without a
name goes to the *default*: the runner named ``default`` if there is one,
else the first one given.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Callable, Iterable

from .errors import UnknownRunner

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
DEFAULT = "default"


def check_runner_name(name: object) -> str:
    """A submitted runner name: '' (the default) or 1-64 letters, digits and ``_ . -``."""
    if not isinstance(name, str):
        raise TypeError(f"runner must be a str, got {type(name).__name__}")
    if name and not _NAME.fullmatch(name):
        raise ValueError(f"invalid runner name {name!r}: use 1-64 letters, digits and _ . -")
    return name


class App:
    """A registry of named runners served by one ``journaled run app:app``.

    ::

        app = journaled.App()

        @app.runner("images")
        def images(step): ...

        app.add("arrays", journaled.chain(load, scale, save))

    The decorator returns the function unchanged, so it stays importable
    (workers pickle it by reference). Keep the ``App`` at module level.
    """

    def __init__(self) -> None:
        self.runners: dict[str, Any] = {}
        # Where it was made: workers find it again by module and attribute name.
        self._module = sys._getframe(1).f_globals.get("__name__", "")

    def runner(self, name: str | None = None) -> Callable[[Any], Any]:
        """Register the decorated runner as ``name`` (default: its ``__name__``)."""

        def register(fn: Any) -> Any:
            self.add(name or getattr(fn, "__name__", ""), fn)
            return fn

        return register

    def add(self, name: str, runner: Any) -> None:
        if not name or not _NAME.fullmatch(name):
            raise ValueError(f"invalid runner name {name!r}: use 1-64 letters, digits and _ . -")
        if name in self.runners:
            raise ValueError(f"runner {name!r} is registered twice")
        if not callable(runner) and not hasattr(runner, "run_step"):
            raise TypeError(f"runner {name!r} is neither callable nor has a run_step method")
        self.runners[name] = runner

    def __reduce__(self) -> Any:
        """Pickle by reference (``module:attr``): a worker re-imports the module."""
        mod = sys.modules.get(self._module)
        for attr, value in vars(mod).items() if mod is not None else ():
            if value is self:
                from .pool.worker import load_import_string

                return (load_import_string, (f"{self._module}:{attr}",))
        raise TypeError("an App must be a module-level variable for workers to import it")

    def __repr__(self) -> str:
        return f"App({', '.join(self.runners)})"


class RunnerTable:
    """Runners by name, and the one a run with no name goes to."""

    def __init__(self, runners: dict[str, Any]) -> None:
        if not runners:
            raise ValueError("no runners to serve (an App with no @app.runner?)")
        self.runners = runners
        self.default = DEFAULT if DEFAULT in runners else next(iter(runners))

    @property
    def names(self) -> list[str]:
        return list(self.runners)

    def name_of(self, name: str) -> str:
        return name or self.default

    def get(self, name: str) -> Any:
        """The runner for a run's ``runner`` field; ``UnknownRunner`` if none is served."""
        obj = self.runners.get(name or self.default)
        if obj is None:
            raise UnknownRunner(name, self.names)
        return obj

    def check(self, name: str) -> None:
        if name and name not in self.runners:
            raise UnknownRunner(name, self.names)


def split_targets(spec: str) -> list[str]:
    return spec.split()


def load_table(spec: Any) -> RunnerTable:
    """The ``RunnerTable`` of a runner spec (see the module docstring); imports modules.

    ``ImportError`` for a target that does not load, ``ValueError`` for a
    name served twice.
    """
    from .pool.worker import load_import_string

    if isinstance(spec, RunnerTable):
        return spec
    out: dict[str, Any] = {}

    def put(name: str, obj: Any) -> None:
        if name in out:
            raise ValueError(f"runner {name!r} is given twice")
        out[name] = obj

    def put_obj(name: str, obj: Any) -> None:
        if isinstance(obj, App):
            for n, r in obj.runners.items():
                put(n, r)
        else:
            put(name, obj)

    items: Iterable[Any]
    if isinstance(spec, str):
        items = split_targets(spec)
    elif isinstance(spec, (list, tuple)):
        items = spec
    elif isinstance(spec, dict):
        for name, obj in spec.items():
            check_runner_name(name)
            put(name, load_import_string(obj) if isinstance(obj, str) else obj)
        return RunnerTable(out)
    else:
        items = [spec]
    for item in items:
        if not isinstance(item, str):
            put_obj(_name_of(item), item)
            continue
        rename, eq, target = item.partition("=")
        if not eq:
            rename, target = "", item
        elif not rename or not _NAME.fullmatch(rename):
            raise ValueError(f"invalid runner name {rename!r} in {item!r}")
        obj = load_import_string(target)
        if isinstance(obj, App) and rename:
            raise ValueError(f"{item!r}: an App serves its own names; drop {rename}=")
        put_obj(rename or target.partition(":")[2].rsplit(".", 1)[-1], obj)
    return RunnerTable(out)


def _name_of(obj: Any) -> str:
    name = getattr(obj, "__name__", "") or getattr(obj, "name", "")
    return name if isinstance(name, str) and _NAME.fullmatch(name) else DEFAULT


def spec_modules(spec: Any) -> list[str]:
    """The modules a spec's runners come from: what the forkserver may preload."""
    if isinstance(spec, str):
        items: list[Any] = split_targets(spec)
    elif isinstance(spec, (list, tuple)):
        items = list(spec)
    elif isinstance(spec, dict):
        items = list(spec.values())
    else:
        items = [spec]
    mods = []
    for item in items:
        if isinstance(item, str):
            mods.append((item.partition("=")[2] if "=" in item else item).partition(":")[0])
        elif isinstance(item, App):
            mods.append(item._module)
        else:
            mods.append(getattr(item, "__module__", None) or type(item).__module__)
    return [m for m in dict.fromkeys(mods) if m]
