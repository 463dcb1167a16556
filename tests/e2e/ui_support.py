"""Shared by the dashboard tests: a real supervisor subprocess and a dashboard server."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

from journaled.live import health
from journaled.ui import make_server

from .helpers import cli_env, wait_for

APP = "tests.apps.ops_apps:runner"


class Supervisor:
    """``journaled run`` on a state directory, in its own process."""

    def __init__(self, state: Path, workers: int = 2) -> None:
        self.state = state
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "journaled.cli", "run", APP, "-w", str(workers),
             "--state", str(state)], env=cli_env(), stderr=subprocess.DEVNULL)
        wait_for(lambda: health(state).state == "running", timeout=60,
                 what="the supervisor to publish its status")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # drain: running steps see stopping()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Dashboard:
    """``journaled.ui`` served on a free port, on a thread of the test process."""

    def __init__(self, state: Path) -> None:
        self.srv = make_server(state, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        self._thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()
