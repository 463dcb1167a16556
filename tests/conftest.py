"""Shared fixtures for every test directory.

Worker processes are forkserver children that import runners by module
name (``tests.apps.basic``), so the repository root must be on ``sys.path``
before the first pool starts: the forkserver copies the ``sys.path`` of
the process that starts it. ``python -m pytest`` from the root puts it
there; plain ``pytest`` does not, hence the insert below.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from journaled.runtime import Runtime  # noqa: E402 - after the sys.path fix above
from tests.apps import basic  # noqa: E402

FAST = {"workers": 2, "max_attempts": 3, "backoff_base": 0.01, "backoff_cap": 0.05,
        "cancel_grace": 0.5, "drain_timeout": 1.0}


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A fresh state directory path (not created: journaled creates it 0700)."""
    return tmp_path / "state"


@pytest.fixture
def runtime(state_dir: Path) -> Iterator[Callable[..., Runtime]]:
    """Start a ``Runtime`` on ``state_dir`` running ``tests.apps.basic:runner``.

    Keyword arguments override the fast test defaults in ``FAST``. Every
    runtime started here is stopped at teardown without draining, so a test
    that leaves a sleeping step behind does not wait for it.
    """
    started: list[Runtime] = []

    def start(runner: Any = basic.runner, **kw: Any) -> Runtime:
        rt = Runtime(kw.pop("state", state_dir), runner, **{**FAST, **kw})
        rt.start()
        started.append(rt)
        return rt

    yield start
    for rt in reversed(started):
        rt.close(drain=False)



def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Tests go one by one to whichever xdist process is free, except that a module
    with a module-scoped fixture stays on one process.

    Such a fixture is a costly shared start-up (a dask cluster, a dashboard) or, in
    the crash modules, starts every selected case of the module ahead at once: split
    over two processes it would run twice. (``--dist loadgroup`` would do this with
    marks, but its marks are lost on pytest 9.2, whose node ids are read-only.)
    """
    from xdist.scheduler import LoadScopeScheduling

    whole: dict[str, bool] = {}

    def one_process(path: str) -> bool:
        if path not in whole:
            try:
                text = (config.rootpath / path).read_text()
            except OSError:
                text = ""
            whole[path] = 'scope="module"' in text or "scope='module'" in text
        return whole[path]

    class ModuleFixturesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if one_process(path) else nodeid

    return ModuleFixturesTogether(config, log)
