"""The ``journaled_harness`` pytest fixture.

Registered for pytest automatically when journaled is installed (the
``pytest11`` entry point in pyproject.toml); without an install, list it in
your ``conftest.py``: ``pytest_plugins = ["journaled.testing.plugin"]``.

::

    def test_my_runner(journaled_harness):
        h = journaled_harness(my_runner, max_attempts=2)
        rid = h.submit(b"in")
        h.run_until_idle()
        assert h.result(rid) == b"out"

The fixture is a factory: call it with a runner and ``Harness`` options;
each harness gets its own state directory under the test's ``tmp_path``
(kept after a failure, like any ``tmp_path``) and is closed after the test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

import pytest

if TYPE_CHECKING:
    from .harness import Harness


@pytest.fixture
def journaled_harness(tmp_path: Any) -> Iterator[Callable[..., Harness]]:
    """A factory: ``journaled_harness(runner, **options)`` -> a started ``Harness``."""
    from .harness import Harness  # here, not at import: pytest loads this module for everyone

    made: list[Harness] = []

    def make(runner: Any, **options: Any) -> Harness:
        options.setdefault("state_dir", tmp_path / f"journaled-state-{len(made)}")
        h = Harness(runner, **options).start()
        made.append(h)
        return h

    yield make
    for h in reversed(made):
        h.close()


fixture = journaled_harness  # ``from journaled.testing.plugin import fixture`` in a conftest
