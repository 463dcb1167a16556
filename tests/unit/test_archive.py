"""``journaled.archive``: upserts, ordering, retention, read-only readers, a missing file.

Real SQLite files in a temporary directory; the concurrent-reader test runs
the writer in another process.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import time
from pathlib import Path

import pytest

from journaled.archive import (
    ARCHIVE_NAME,
    SCHEMA_VERSION,
    Archive,
    CachedReader,
    content_sha256,
    row_of,
)
from journaled.records import Submitted
from journaled.run import FAILED, SUCCEEDED, Run, attempts_of, outcome_of

T0 = 1_700_000_000.0


def finished(rid: str, at: float, status: str = SUCCEEDED, result: bytes | None = b"ok",
             dead: bool = False, input: bytes = b"in", headers: dict | None = None) -> Run:
    run = Run(Submitted(rid, input, at - 1.0, headers or {"who": "ann"}), 0)
    run.status, run.finished_at, run.result, run.dead = status, at, result, dead
    run.attempt = 1
    run.payload = b"last payload"
    run.history = [[0, 1, 0, at - 0.5, at, "completed" if not dead else "dead_lettered",
                    "" if not dead else "boom", ""]]
    if status == FAILED:
        run.result, run.error, run.kind = None, "step 0 dead-lettered: boom", "error"
    return run


@pytest.mark.timeout(30)
def test_missing_file_reads_as_empty_and_is_never_created(tmp_path: Path):
    assert Archive(tmp_path).open_reader() is None
    reader = CachedReader(tmp_path)
    assert reader.call("get", "r") is None and reader.call("runs") is None
    assert not (tmp_path / ARCHIVE_NAME).exists(), "a reader must never create the archive"
    assert not Archive(tmp_path / "nowhere").exists()


@pytest.mark.timeout(30)
def test_upsert_is_idempotent_and_rebuilds_the_run_exactly(tmp_path: Path):
    w = Archive(tmp_path).open_writer()
    runs = [finished(f"r{i}", T0 + i) for i in range(5)] + \
        [finished("dead", T0 + 10, FAILED, dead=True)]
    assert w.upsert(row_of(r) for r in runs) == 6
    counts = w.count()
    assert w.upsert((row_of(r) for r in runs), counts) == 6, "archiving again (a crash window) ..."
    assert counts == w.count() == {"succeeded": 5, "failed": 1}, "kept counts stay exact"
    r = Archive(tmp_path).open_reader()
    assert r is not None
    assert r.count() == {"succeeded": 5, "failed": 1}, "... leaves one row per run"
    assert r.schema_version() == SCHEMA_VERSION
    for run in runs:
        row = r.get(run.run_id)
        assert row is not None
        back = row.run()
        assert outcome_of(back) == outcome_of(run) == row.outcome()
        assert attempts_of(back) == attempts_of(run) == row.attempt_list()
        assert back.headers == run.headers and back.input == run.input
        assert row.input_sha256 == content_sha256(run.input)
        assert json.loads(row.headers) == run.headers
    assert r.get("r0").run().payload == b"", "a finished run's payload is not kept"
    assert r.get("dead").run().payload == b"last payload", \
        "a dead-lettered run keeps the payload its redrive needs"
    assert r.get("nope") is None


@pytest.mark.timeout(30)
def test_kept_counts_stay_exact_for_new_rows_replaced_rows_and_an_id_twice(tmp_path: Path):
    # New rows are counted without a look-up; a batch holding a row already there, or one
    # id twice, is undone and replaced row by row (the last of an id wins).
    w = Archive(tmp_path).open_writer()
    counts = w.count()
    assert w.upsert([row_of(finished(f"r{i}", T0 + i)) for i in range(3)], counts) == 3
    assert counts == w.count() == {"succeeded": 3}
    redone = finished("r1", T0 + 20, FAILED, dead=True)  # redriven, then dead-lettered
    mixed = [row_of(finished("r3", T0 + 3)), row_of(redone), row_of(finished("r4", T0 + 4))]
    assert w.upsert(mixed, counts) == 3
    assert counts == w.count() == {"succeeded": 4, "failed": 1}
    twice = [row_of(finished("r5", T0 + 5)), row_of(finished("r5", T0 + 6, FAILED, dead=True))]
    assert w.upsert(twice, counts) == 2
    assert counts == w.count() == {"succeeded": 4, "failed": 2}
    row = w.get("r5")
    assert row is not None and row.status == FAILED and row.finished_at == T0 + 6


@pytest.mark.timeout(30)
def test_runs_newest_first_with_status_since_limit_and_dead(tmp_path: Path):
    w = Archive(tmp_path).open_writer()
    rows = [row_of(finished(f"s{i:03d}", T0 + i)) for i in range(200)]
    rows += [row_of(finished(f"f{i:03d}", T0 + 0.5 + i, FAILED, dead=i % 2 == 0))
             for i in range(50)]
    w.upsert(rows)
    ids = [x.id for x in w.runs(limit=5)]
    assert ids == ["s199", "s198", "s197", "s196", "s195"], "newest first by finished_at"
    assert [x.id for x in w.runs("failed", limit=3)] == ["f049", "f048", "f047"]
    assert len(w.runs(limit=None)) == 250 and len(w.runs()) == 100, "default limit 100"
    assert [x.id for x in w.runs(since=T0 + 198)] == ["s199", "s198"], "since: finished >= T"
    dead = w.runs("failed", dead=True, limit=None)
    assert len(dead) == 25 and all(x.dead for x in dead)
    assert w.identities(["s001", "zzz", "f002"]) == {
        "s001": (content_sha256(b"in"), {"who": "ann"}, ""),
        "f002": (content_sha256(b"in"), {"who": "ann"}, "")}
    many = [f"s{i:03d}" for i in range(200)] + [f"x{i}" for i in range(1000)]
    assert len(w.identities(many)) == 200, "more ids than one IN (...) takes"
    assert content_sha256(b"in") in w.blob_refs()


@pytest.mark.timeout(30)
def test_retention_deletes_only_rows_finished_before_the_cutoff(tmp_path: Path):
    w = Archive(tmp_path).open_writer()
    w.upsert(row_of(finished(f"r{i}", T0 + i)) for i in range(10))
    assert w.delete_finished_before(T0 + 4) == 4
    assert sorted(x.id for x in w.runs(limit=None)) == [f"r{i}" for i in range(4, 10)]
    assert w.delete_finished_before(T0 + 4) == 0, "nothing left to delete"


@pytest.mark.timeout(30)
def test_a_newer_schema_is_refused_not_overwritten(tmp_path: Path):
    Archive(tmp_path).open_writer().close()
    db = sqlite3.connect(tmp_path / ARCHIVE_NAME)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="newer than this journaled"):
        Archive(tmp_path).open_writer()


def _writer(state: str, batches: int, ready: multiprocessing.synchronize.Event) -> None:
    w = Archive(state).open_writer()
    ready.set()
    for b in range(batches):
        w.upsert(row_of(finished(f"b{b:04d}-{i:03d}", T0 + b * 1000 + i)) for i in range(200))
    w.close()


@pytest.mark.timeout(120)
def test_a_read_only_reader_sees_whole_commits_while_another_process_writes(tmp_path: Path):
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_writer, args=(str(tmp_path), 150, ready))
    proc.start()
    assert ready.wait(60)
    reader = CachedReader(tmp_path)
    seen: list[int] = []
    while proc.is_alive() or not seen:
        counts = reader.call("count") or {}
        n = counts.get("succeeded", 0)
        assert n % 200 == 0, f"a reader saw half a transaction ({n} rows)"
        newest = reader.call("runs", None, None, 1)
        if n:
            assert newest and newest[0].id.endswith("-199"), "the newest row of a whole batch"
        seen.append(n)
        time.sleep(0.005)
    proc.join(60)
    assert proc.exitcode == 0
    assert reader.call("count") == {"succeeded": 150 * 200}
    assert len(set(seen)) > 2, "the reader should have read while the writer committed"
    assert os.stat(tmp_path / ARCHIVE_NAME).st_size > 0


@pytest.mark.timeout(30)
def test_a_run_both_archived_and_still_in_the_journal_counts_once(tmp_path: Path):
    """The moment between archiving a run and journaling its ``Archived`` record:
    readers adding the journal's counts to the archive's must count it once."""
    from types import SimpleNamespace

    from journaled.metrics import run_counts

    w = Archive(tmp_path).open_writer()
    w.upsert(row_of(r) for r in [finished("old", T0), finished("both", T0 + 1),
                                 finished("bad", T0 + 2, FAILED, dead=True)])
    live = Run(Submitted("live", b"in", T0, {}), 0)
    journal = {"both": finished("both", T0 + 1), "bad": finished("bad", T0 + 2, FAILED),
               "fresh": finished("fresh", T0 + 3), "live": live}
    reader = CachedReader(tmp_path)
    assert reader.call("count_besides", ["both", "bad", "fresh", "fresh"]) == \
        {"succeeded": 1, "failed": 0}, "only the archived ones of those are taken off"
    counts = run_counts(SimpleNamespace(runs=journal), reader)
    assert counts["succeeded"] == 3 and counts["failed"] == 1 and counts["pending"] == 1, counts
    assert sum(counts.values()) == len({"old", *journal}), "every run counted once"
    assert reader.call("count_besides", []) == {"succeeded": 2, "failed": 1}
    empty = CachedReader(tmp_path / "none")
    assert run_counts(SimpleNamespace(runs=journal), empty)["succeeded"] == 2
