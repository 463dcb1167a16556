"""DBOS's side of ``peers.py``: a one-step no-op workflow on a SQLite system database.

DBOS leaves SQLite's defaults (rollback journal, ``synchronous=FULL``):
every workflow and step record is fsync'd at commit. Results are polled
every millisecond (DBOS's floor is 1 ms; its default is 1 s), and the
queue that serves client processes polls at the same rate.
"""

from __future__ import annotations

from dbos import DBOS

POLL = 0.001
QUEUE = "jbench"
WORKFLOW = "noop_workflow"


@DBOS.step()
def noop_step(x: int) -> int:
    return x


@DBOS.workflow()
def noop_workflow(x: int) -> int:
    return noop_step(x)
