"""``Runtime`` and ``Client`` agree on every shared method (issue 11 item 19; REVIEW §4 10)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from journaled import DeadLetter
from journaled.client import Client
from journaled.errors import InputTooLarge, InvalidRunId, RunNotDead, RunNotFound
from journaled.limits import MAX_VALUE
from journaled.runtime import Runtime
from tests.apps import basic

BOTH = ["runtime", "client"]


@pytest.fixture(params=BOTH)
def api(request: pytest.FixtureRequest, runtime: Callable[..., Runtime],
        state_dir: Path) -> tuple[Any, Runtime]:
    """(the object under test, the Runtime that does the work) on one state directory."""
    rt = runtime()
    return (rt if request.param == "runtime" else Client(state_dir)), rt


@pytest.mark.timeout(60)
def test_retry_of_a_live_run_raises_run_not_dead_on_both(api: tuple[Any, Runtime]) -> None:
    obj, rt = api
    rid = rt.submit(b"done")
    rt.wait(rid, 30)
    with pytest.raises(RunNotDead):
        obj.retry(rid)
    with pytest.raises(RunNotFound):
        obj.retry("nobody")


@pytest.mark.timeout(60)
def test_runs_are_newest_first_on_both(api: tuple[Any, Runtime]) -> None:
    # Newest first by finish time since issue 12 (finished runs come from the archive).
    obj, rt = api
    for rid in ("c", "a", "b"):  # finish order differs from id order
        rt.submit(rid.encode(), run_id=rid)
        rt.wait(rid, 30)
        time.sleep(0.01)
    assert [o.run_id for o in obj.runs()] == ["b", "a", "c"]
    assert [o.run_id for o in obj.runs("succeeded")] == ["b", "a", "c"]
    assert [o.run_id for o in obj.runs(limit=2)] == ["b", "a"]


@pytest.mark.timeout(60)
def test_step_timeout_as_timedelta_is_accepted_by_both(api: tuple[Any, Runtime]) -> None:
    obj, rt = api
    rid = obj.submit(b"t", step_timeout=timedelta(seconds=30))
    assert rt.wait(rid, 30).status.value == "succeeded"
    rid = obj.submit(b"f", step_timeout=2.5)
    assert rt.wait(rid, 30).status.value == "succeeded"
    with rt.supervisor.state_lock:
        assert rt.supervisor.state.runs[rid].step_timeout == 2.5


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call,error", [
    (lambda o: o.submit(b"x", priority=1.5), TypeError),
    (lambda o: o.submit(b"x", max_attempts=True), TypeError),
    (lambda o: o.submit(b"x", step_timeout="5"), TypeError),
    (lambda o: o.submit(b"x", run_id="no spaces"), InvalidRunId),
    # Inputs over the blob threshold go out of line (no limit); signal data has one.
    (lambda o: o.signal("nobody", "k", b"x" * (MAX_VALUE + 1)), InputTooLarge),
    (lambda o: o.submit("text"), TypeError),
    (lambda o: o.signal("nobody", ""), ValueError),
    (lambda o: o.signal("nobody", "k", "text"), TypeError),
    (lambda o: o.status("nobody"), RunNotFound),
    (lambda o: o.history("nobody"), RunNotFound),
], ids=["float-priority", "bool-attempts", "str-timeout", "bad-id", "too-large", "str-input",
        "empty-key", "str-signal-data", "status-missing", "history-missing"])
def test_bad_calls_raise_the_same_error_on_both(api: tuple[Any, Runtime],
                                                 call: Callable[[Any], Any],
                                                 error: type[Exception]) -> None:
    obj, _rt = api
    with pytest.raises(error):
        call(obj)


@pytest.mark.timeout(60)
def test_dead_returns_public_copies_on_both(api: tuple[Any, Runtime]) -> None:
    obj, rt = api
    rid = rt.submit(b"", headers={"app": "permanent"})
    rt.wait(rid, 30)
    dead = obj.dead()
    assert [d.run_id for d in dead] == [rid]
    assert isinstance(dead[0], DeadLetter) and dead[0].attempt == 1
    with pytest.raises(AttributeError):
        dead[0].attempt = 5  # type: ignore[misc]  # frozen: a copy, never live state


@pytest.fixture(params=BOTH)
def idle_api(request: pytest.FixtureRequest, state_dir: Path) -> Iterator[Any]:
    """A reader on a state directory whose supervisor has not taken the inbox yet."""
    if request.param == "client":
        yield Client(state_dir)
        return
    yield Runtime(state_dir, basic.runner, workers=1)  # built, not started: inbox untouched


@pytest.mark.timeout(60)
def test_history_of_an_inbox_run_is_empty_on_both(idle_api: Any, state_dir: Path) -> None:
    rid = Client(state_dir).submit(b"queued", run_id="queued")
    assert idle_api.history(rid) == []
    assert idle_api.status(rid).status.value == "pending"
    assert [o.run_id for o in idle_api.runs()] == [rid]
    with pytest.raises(RunNotDead):
        idle_api.retry(rid)
