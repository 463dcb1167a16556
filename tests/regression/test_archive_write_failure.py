"""Issue 12: an archive write that fails is logged and retried; the runs stay in the journal.

``archive.before_commit=error`` makes the archiver's commit raise ``OSError``
(EIO) as a full or failing disk would. The finished runs must stay readable
from the journal meanwhile, the supervisor keeps serving, and the retry
(after its backoff) archives them.
"""

from __future__ import annotations

import logging

import pytest

from journaled import failpoints
from journaled.archive import Archive
from tests.apps import basic
from tests.e2e.helpers import wait_for


@pytest.fixture(autouse=True)
def _reset_failpoints():
    failpoints.reset()
    yield
    failpoints.reset()


@pytest.mark.timeout(120)
def test_a_failing_archive_write_keeps_the_runs_in_the_journal_and_retries(
        runtime, state_dir, caplog) -> None:
    failpoints.configure("archive.before_commit=error@1")
    caplog.set_level(logging.ERROR, logger="journaled.supervisor")
    rt = runtime(basic.runner)
    sup = rt.supervisor
    rid = rt.submit(b"keep me", {"app": "echo"})
    assert rt.wait(rid, 30).result == b"keep me"
    wait_for(lambda: sup._archiver is not None and sup._archiver.failures >= 1, 30,
             "the archive write to fail")
    assert rid in sup.state.runs, "a run whose archive write failed stays in the journal"
    assert rt.status(rid).result == b"keep me", "and reads as before"
    assert any("archive write failed" in r.getMessage() for r in caplog.records)
    other = rt.submit(b"still serving", {"app": "echo"})
    assert rt.wait(other, 30).result == b"still serving"
    wait_for(lambda: rid not in sup.state.runs and other not in sup.state.runs, 60,
             "the retry to archive both runs")
    reader = Archive(state_dir).open_reader()
    assert reader is not None and reader.get(rid).run().result == b"keep me"
    assert rt.status(rid).result == b"keep me"
