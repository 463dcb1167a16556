"""Huey's side of ``peers.py``: a SqliteHuey made durable, its no-op task and its consumer.

Durable as journaled is: WAL journal with ``synchronous=FULL`` (Huey's
``fsync=True``), so every enqueue and every result is fsync'd before the
call returns (in WAL mode SQLite's ``NORMAL`` would sync only at
checkpoints). The consumer polls every 0.5 ms (``initial_delay`` =
``max_delay``, no back-off) so its default 0.1-10 s polling does not
decide the result; clients poll for results at the same rate. SQLite's busy
timeout is raised from Huey's 5 s to 120 s: with 16 client processes on two
busy cores, enqueues otherwise fail with "database is locked".
"""

from __future__ import annotations

import os

from huey import SqliteHuey

POLL = 0.0005
huey = SqliteHuey("jbench", filename=os.environ.get("JBENCH_HUEY_DB", "jbench-huey.db"),
                  fsync=True, journal_mode="wal", results=True, timeout=120)


@huey.task()
def noop(x: int) -> int:
    return x


def consumer_main(workers: int = 2) -> None:
    """``python -c 'from benchmarks._peer_huey import consumer_main; consumer_main()'``."""
    huey.create_consumer(workers=workers, worker_type="process", periodic=False,
                         initial_delay=POLL, backoff=1.0, max_delay=POLL,
                         check_worker_health=False).run()


def wait(result) -> int:  # type: ignore[no-untyped-def]
    return result.get(blocking=True, timeout=600, backoff=1.0, max_delay=POLL)
