"""``kill -9`` of the supervisor while sixteen client processes submit over its socket.

Each client submits its own run ids one at a time and writes an id down
only once ``submit`` returned (acknowledged); on any error it submits the
same id again. The supervisor is killed mid-stream, at several points
(once a quarter of the submissions is acknowledged, again past five
eighths after a restart), so some clients lose
their connection before an answer (``Client`` then resends through the
inbox with the same id) and some submit through the inbox while it is
down. After a restart every acknowledged id must be journaled exactly once,
and no id journaled twice. With ``JOURNALED_SIMULATE_POWER_LOSS=1`` a kill
also loses every journal write not yet synced, as a power cut would: an
answer given before the sync would show up here as a lost run.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from journaled.client import Client
from tests.e2e.helpers import ROOT, cli_env, journal_records, wait_for

CLIENTS = 16
EACH = 40

_CLIENT = r"""
import sys, time
from journaled.client import Client
state, tag, n, acks = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
c = Client(state)
with open(acks, "a") as out:
    for i in range(n):
        rid = f"{tag}-{i}"
        while True:
            try:
                c.submit(f"in-{rid}".encode(), run_id=rid)
                break
            except Exception as e:  # a dying supervisor: the same id again is safe
                print(f"retry {rid}: {type(e).__name__}: {e}", file=sys.stderr)
                time.sleep(0.05)
        out.write(rid + "\n")
        out.flush()
"""


def _start(state: Path, power_loss: bool) -> subprocess.Popen[bytes]:
    env = cli_env(JOURNALED_SIMULATE_POWER_LOSS="1" if power_loss else "0")
    return subprocess.Popen([sys.executable, "-m", "journaled.cli", "run",
                             "tests.apps.door_apps:runner", "--state", str(state), "-w", "2"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _acked(acks: list[Path]) -> list[str]:
    out: list[str] = []
    for p in acks:
        if p.exists():
            out += [ln for ln in p.read_text().splitlines() if ln]
    return out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("power_loss", [False, True], ids=["kill", "power-loss"])
def test_kill_9_mid_submit_loses_no_acknowledged_submission_and_duplicates_none(
        tmp_path, power_loss):
    state = tmp_path / "state"
    sup = _start(state, power_loss)
    wait_for(lambda: Client(state)._door() is not None, 60, "the socket to listen")
    acks = [tmp_path / f"acks-{i}" for i in range(CLIENTS)]
    procs = [subprocess.Popen([sys.executable, "-c", _CLIENT, str(state), f"c{i}", str(EACH),
                               str(acks[i])], cwd=ROOT, env=cli_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i in range(CLIENTS)]
    total = CLIENTS * EACH
    try:
        before = 0
        for share in (2, 5):  # in eighths: kill, restart, kill again further on
            # Kill once a good share went through the socket, while the rest is in flight.
            wait_for(lambda n=total * share // 8: len(_acked(acks)) >= n, 120,
                     f"{share}/8 of the submissions to be acknowledged")
            os.kill(sup.pid, signal.SIGKILL)
            sup.wait()
            before = len(_acked(acks))
            time.sleep(1.0)  # clients go on through the inbox while nothing listens
            if before < total:
                assert len(_acked(acks)) > before, \
                    "with the supervisor down the inbox must serve"
            sup = _start(state, power_loss)
            if share == 2:
                wait_for(lambda: Client(state)._door() is not None, 60,
                         "the restarted supervisor's socket to listen")
        for p in procs:
            _, err = p.communicate(timeout=200)
            assert p.returncode == 0, err.decode()[-2000:]
        acked = _acked(acks)
        assert len(acked) == total and len(set(acked)) == total
        # Inbox submissions are journaled once the restarted supervisor takes them.
        wait_for(lambda: set(acked) <= {r.run_id for r in journal_records(state)
                                        if type(r).__name__ == "Submitted"},
                 90, "every acknowledged submission to be journaled")
        counts = collections.Counter(r.run_id for r in journal_records(state)
                                     if type(r).__name__ == "Submitted")
        twice = [rid for rid, n in counts.items() if n > 1]
        assert not twice, f"journaled more than once: {twice[:5]}"
        c = Client(state)
        for rid in acked[:: max(1, len(acked) // 40)]:
            assert c.wait(rid, timeout=60).result == f"in-{rid}".encode()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        sup.send_signal(signal.SIGINT)
        try:
            sup.wait(30)
        except subprocess.TimeoutExpired:
            sup.kill()
            sup.wait()
