"""``journaled run --reload`` survives saving a runner with a syntax error.

QA: with --reload, saving a half-edited module is the normal workflow. The
restarted workers failed to import it, five start-up deaths later the
supervisor exited 1 ("worker processes keep dying at start-up"), so fixing
the file did nothing: the developer had to notice and restart by hand.
Under --reload a broken import now backs off and waits for the next change.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from journaled.client import Client
from tests.e2e.helpers import ROOT, cli_env, wait_for

GOOD = '''
from journaled import Succeed
import time

def runner(step):
    time.sleep(0.05)
    return Succeed(step.payload)
'''
DEATH = "at start-up (does the code import?)"  # the supervisor's warning for each


@pytest.mark.timeout(180)
def test_reload_after_a_syntax_error_keeps_serving_once_the_file_is_fixed(tmp_path: Path) -> None:
    app, state, err = tmp_path / "qa_reload_app.py", tmp_path / "s", tmp_path / "err"
    app.write_text(GOOD)
    with open(err, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "journaled.cli", "run",
                                 "qa_reload_app:runner", "--reload", "-w", "2", "--state",
                                 str(state)], cwd=tmp_path,
                                env=cli_env(PYTHONPATH=f"{ROOT}:{tmp_path}"),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f,
                                start_new_session=True)
    try:
        client = Client(state)
        first = client.submit(b"one")
        assert client.wait(first, timeout=60).result == b"one"
        app.write_text(GOOD + "\nthis is not python(\n")
        wait_for(lambda: "code changed" in err.read_text(), 30, "the reload")
        client.submit(b"during")  # leased to workers that cannot import
        # More start-up deaths than the five that once stopped the supervisor (each
        # is one warning; the back-off doubles, so this takes a few seconds).
        wait_for(lambda: err.read_text().count(DEATH) > 5 or proc.poll() is not None, 60,
                 "six start-up deaths")
        assert proc.poll() is None, f"supervisor exited:\n{err.read_text()[-2000:]}"
        app.write_text(GOOD + "\n# fixed\n")
        after = client.submit(b"after")
        assert client.wait(after, timeout=60).result == b"after", err.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, err.read_text()[-2000:]
