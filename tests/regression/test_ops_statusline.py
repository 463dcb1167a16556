"""The terminal status line of ``journaled run`` shows the counts the loop published.

Issue 11 item 7 (CLI part): the status-line thread walked the live state
(``status_counts()``) while the loop changed it and died with "dictionary
changed size during iteration". It now reads the view the loop publishes
after each status write (``Supervisor.live``), never the live state.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from journaled.client import Client
from tests.e2e.helpers import ROOT, cli_env


@pytest.mark.timeout(120)
def test_status_line_on_a_terminal_during_many_submissions_shows_published_counts(
        tmp_path: Path) -> None:
    state = tmp_path / "s"
    client = Client(state)
    client.submit_many([b"x"] * 300, run_ids=[f"a{i}" for i in range(300)])
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "journaled.cli", "run",
                             "tests.apps.basic:runner", "--state", str(state), "-w", "2"],
                            cwd=ROOT, env=cli_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 60
        i = 0
        while b"succeeded 600" not in out and time.monotonic() < deadline:
            if i < 300:  # the runs dict grows while the status line is drawn
                client.submit(b"y", run_id=f"b{i}")
                i += 1
            ready, _, _ = select.select([master], [], [], 0.01)
            if ready:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
        text = out.decode("utf-8", "replace")
        assert "succeeded 600" in text, text[-2000:]
        assert "steps/s" in text and "syncs/s" in text
        assert "Traceback" not in text and "Exception in thread" not in text, text[-3000:]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        os.close(master)
