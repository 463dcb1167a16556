"""Build ``tests/data/golden-state-0.2/``: a state directory written by release 0.2.

Kept so the fixture can be rebuilt and read: it ran once with the code of
0.2 (every finished run retained in the journal, before the archive), and
the migration test (``tests/regression/test_archive_migration.py``) starts
today's supervisor on a copy. The state has ~20 finished runs (succeeded,
failed by verdict, dead-lettered, cancelled; every hook delivered), a
compaction (so a snapshot plus a tail), and three live runs: one parked on
signal key ``go``, one delayed an hour, one pending-ish chain finished in the
tail. Only journal segments and the synced mark are copied (no lock, socket,
pid or status file).

Run from the repository root::

    PYTHONPATH=$PWD python tests/data/make_golden_state.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from journaled import Runtime
from tests.apps.golden import runner

OUT = Path(__file__).resolve().parent / "golden-state-0.2"

# (run id, input, headers): finished before the compaction.
BEFORE = (
    [(f"g-echo-{i:02d}", f"echo {i}".encode(), {"app": "echo"}) for i in range(8)]
    + [(f"g-chain-{i}", str(i + 1).encode(), {"app": "chain"}) for i in range(3)]
    + [("g-fail", b"no good", {"app": "fail"}),
       ("g-perm", b"x", {"app": "permanent"}),
       ("g-transient", b"x", {"app": "always_transient"}),
       ("g-cancel-verdict", b"x", {"app": "cancel_verdict"}),
       ("g-flaky", b"x", {"app": "flaky"})]
)
# Finished in the tail, after the compaction.
AFTER = (
    [(f"g-tail-{i}", f"tail {i}".encode(), {"app": "echo", "who": "ann"}) for i in range(3)]
    + [("g-exception", b"x", {"app": "exception"})]
)
LIVE = [("g-wait-signal", b"", {"app": "approval"}),
        ("g-delayed", b"hold me", {"app": "hold"})]
CANCELLED = ("g-cancelled", b"3600", {"app": "long_delay"})


def build(out: Path) -> None:
    hooked: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        with Runtime(state, runner, workers=2, max_attempts=2, backoff_base=0.01,
                     on_terminal=lambda o: hooked.append(o.run_id)) as rt:
            for rid, data, hdrs in BEFORE:
                rt.submit(data, hdrs, run_id=rid)
            for rid, *_ in BEFORE:
                rt.wait(rid, timeout=60)
            rt.submit(CANCELLED[1], CANCELLED[2], run_id=CANCELLED[0])
            deadline = time.monotonic() + 30
            while rt.status(CANCELLED[0]).status.value != "waiting":
                assert time.monotonic() < deadline, "the delayed run never parked"
                time.sleep(0.05)
            rt.cancel(CANCELLED[0], "golden: cancelled while delayed")
            rt.wait(CANCELLED[0], timeout=60)
            time.sleep(0.5)  # let the hooks' HookDelivered records land
            assert rt.supervisor.compact()
            for rid, data, hdrs in AFTER + LIVE:
                rt.submit(data, hdrs, run_id=rid)
            for rid, *_ in AFTER:
                rt.wait(rid, timeout=60)
            deadline = time.monotonic() + 30
            while any(rt.status(rid).status.value != "waiting" for rid, *_ in LIVE):
                assert time.monotonic() < deadline, "the live runs never parked"
                time.sleep(0.05)
            time.sleep(0.5)
        if out.exists():
            shutil.rmtree(out)
        (out / "journal").mkdir(parents=True)
        for f in sorted((state / "journal").iterdir()):
            if f.suffix in (".seg", ".log") or f.name == "synced.mark" or f.name[0].isdigit():
                shutil.copy2(f, out / "journal" / f.name)
    print(f"wrote {out}: {sorted(p.name for p in (out / 'journal').iterdir())}; "
          f"hooks fired for {len(hooked)} runs")


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
