"""Write a PNG of each dashboard page into a folder: ``python benchmarks/ui_screenshots.py OUT``.

Builds a demo state directory (runs that succeed, fail into dead letters,
take several steps, and one still running), starts a supervisor and the
dashboard on free ports, and drives headless chromium (selenium) through
the overview, the runs table (filtered), a run page, a dead letter's page,
the dead letters and the read-only banner after the supervisor stops.

Needs chromium + chromium-driver (Debian: apt-get install chromium
chromium-driver) and selenium (the test extra).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def shoot(d, url: str, path: Path) -> Path:
    """The whole page, not just the window: grow the window to the page's height first."""
    d.set_window_size(1280, 900)
    d.get(url)
    height = d.execute_script("return document.documentElement.scrollHeight")
    d.set_window_size(1280, min(max(900, int(height) + 20), 4000))
    d.save_screenshot(str(path))
    return path


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), e.get("PYTHONPATH")]))
    e.pop("JOURNALED_STATE", None)
    return e


def demo_state(state: Path) -> tuple[subprocess.Popen, str]:
    """A supervisor on a state with some history; returns it and the running run's id."""
    from journaled import Client

    c = Client(state)
    for i in range(40):
        c.submit(f"job {i}".encode(), headers={"team": "ingest", "n": str(i)})
    for _ in range(5):
        c.submit(b"steps:3", headers={"team": "etl"})
    for _ in range(4):
        c.submit(b"fail", headers={"team": "billing"})
    c.submit(bytes(range(256)) * 4, run_id="binary-input")
    c.submit(b"<b>markup</b> & more", headers={"note": "<script>alert(1)</script>"},
             run_id="escaped")
    sup = subprocess.Popen([sys.executable, "-m", "journaled.cli", "run",
                            "tests.apps.ops_apps:runner", "-w", "2", "--state", str(state)],
                           env=env(), stderr=subprocess.DEVNULL)
    long = c.submit(b"sleep:120", run_id="long-running")
    deadline = time.monotonic() + 60
    while c.status(long).status.value != "running":
        if time.monotonic() > deadline:
            raise SystemExit("the demo supervisor did not start")
        time.sleep(0.1)
    return sup, long


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder for the PNGs")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from journaled.ui import make_server
    from tests.e2e.ui_support import browser

    tmp = Path(tempfile.mkdtemp(prefix="journaled-shots-"))
    state = tmp / "state"
    sup, long = demo_state(state)
    srv = make_server(state, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    d = browser(str(tmp / "profile"))
    shots: list[Path] = []
    try:
        from journaled import Client

        c = Client(state)
        dead = c.dead()
        time.sleep(1.5)  # the live view's counts catch up
        pages = [("overview", "/"), ("runs", "/runs"), ("runs-failed", "/runs?status=failed"),
                 ("run-running", f"/runs/{long}"), ("run-escaped", "/runs/escaped"),
                 ("run-binary", "/runs/binary-input"),
                 ("run-dead", f"/runs/{dead[0].run_id}" if dead else "/dead"),
                 ("dead", "/dead"), ("not-found", "/no/such/page")]
        for name, path in pages:
            shots.append(shoot(d, base + path, args.out / f"{name}.png"))
        sup.send_signal(signal.SIGINT)
        sup.send_signal(signal.SIGINT)
        sup.wait(60)
        shots.append(shoot(d, base + "/dead", args.out / "dead-read-only.png"))
    finally:
        d.quit()
        srv.shutdown()
        if sup.poll() is None:
            sup.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    for p in shots:
        print(p)


if __name__ == "__main__":
    main()
