"""A supervisor killed while it asks the forkserver for a worker leaves the
forkserver reading a half-sent request. CPython's forkserver then died with an
``EOFError`` traceback on the shared stderr, which the 1,000-kill torture
flagged as a dirty restart. The forkserver, and a child it forked whose
parent died before sending the child its process data, must exit quietly.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.e2e.helpers import ROOT, cli_env

_SCRIPT = textwrap.dedent("""
    import os, socket, sys, tempfile, time
    from multiprocessing import forkserver
    from journaled.runtime import Runtime
    from tests.apps import basic

    if __name__ == "__main__":
        rt = Runtime(tempfile.mkdtemp() + "/s", basic.runner, workers=1)
        rt.start()
        if sys.argv[1] == "request":
            # What a killed supervisor leaves: a connection to the forkserver,
            # closed before the request (the fds and the child's arguments) was sent.
            s = socket.socket(socket.AF_UNIX)
            s.connect(forkserver._forkserver._forkserver_address)
            s.close()
        else:
            # Or a child forked for it that never got its process data (seen in
            # the 64 KB torture): the fresh child reads EOF.
            sentinel, w = forkserver._forkserver.connect_to_new_process([])
            os.close(w)
        time.sleep(1.0)
        # The forkserver still serves: a new worker comes up after a kill.
        rid = rt.submit(b"after")
        print(rt.wait(rid, timeout=30).status.value)
        rt.close(drain=False)
""")



@pytest.mark.timeout(90)
@pytest.mark.parametrize("left", ["request", "child"])
def test_forkserver_left_mid_request_by_a_killed_supervisor_prints_no_traceback(
        tmp_path: Path, left: str) -> None:
    script = tmp_path / "supervise.py"
    script.write_text(_SCRIPT)
    p = subprocess.run([sys.executable, str(script), left], cwd=ROOT, env=cli_env(),
                       capture_output=True, text=True, timeout=80)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split() == ["succeeded"], p.stdout
    assert "Traceback" not in p.stderr and "EOFError" not in p.stderr, p.stderr[-3000:]
