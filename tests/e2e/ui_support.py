"""Shared by the dashboard tests: a real supervisor subprocess and a dashboard server."""

from __future__ import annotations

import shutil
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


# Headless chromium that stays off the network (this machine's closed network
# otherwise stalls it on its background fetches), with a fresh profile each time.
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900")


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def browser_missing() -> str | None:
    """Why no browser test can run here, or None when chromium, its driver and selenium are."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'journaled[test]')"
    if chromium_binary() is None:
        return "chromium is not installed (Debian: apt-get install chromium)"
    if shutil.which("chromedriver") is None:
        return "chromedriver is not installed (Debian: apt-get install chromium-driver)"
    return None


def browser(profile: str):  # -> selenium.webdriver.Chrome
    """Headless chromium driven by selenium, with ``profile`` as its fresh user-data-dir."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.binary_location = chromium_binary() or ""
    d = webdriver.Chrome(options=opts, service=Service(executable_path=shutil.which(
        "chromedriver")))
    d.set_page_load_timeout(30)
    return d
