"""A SIGTERM sent to a forkserver child before it has run must still kill it.

journaled's forkserver (``pool.quiet``) ignores SIGTERM with a Python-level
handler that re-raises the default action in forked children. A child that
had not yet been scheduled when the signal came lost it: ``os.fork`` clears
the interpreter's pending-signal flags in the child, so the handler never
ran. ``multiprocessing.Pool.terminate()`` of another pool sharing the
process's forkserver then joined such a worker for ever: the CI flake of
``test_benchmarks_quick[cpu_scaling.py]`` (its bare ``Pool`` hung in
``_terminate_pool``, the worker left orphaned with the forkserver). Before
the fix about a third of the children below survived.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.e2e.helpers import ROOT, cli_env

_SCRIPT = textwrap.dedent("""
    import multiprocessing, os, signal, sys, tempfile, time
    from multiprocessing import forkserver
    from journaled.runtime import Runtime
    from tests.apps import basic

    def sleeper():
        time.sleep(60)

    if __name__ == "__main__":
        # journaled's forkserver: started by a Runtime, shared by the process.
        rt = Runtime(tempfile.mkdtemp() + "/s", basic.runner, workers=1)
        rt.start()
        ctx = multiprocessing.get_context("forkserver")
        if sys.argv[1] == "process":
            survived = 0
            for _ in range(60):
                p = ctx.Process(target=sleeper, daemon=True)
                p.start()
                os.kill(p.pid, signal.SIGTERM)  # at once: the child may not have run yet
                p.join(10)
                if p.exitcode is None:
                    survived += 1
                    p.kill()
                    p.join()
                elif p.exitcode != -signal.SIGTERM:
                    print("exit", p.exitcode)
            print("survived", survived)
        else:
            for _ in range(20):
                with ctx.Pool(2):
                    pass  # terminate() while its workers may still be starting
            print("terminated")
        # The forkserver itself still ignores SIGTERM and serves.
        os.kill(forkserver._forkserver._forkserver_pid, signal.SIGTERM)
        time.sleep(0.2)
        print(rt.wait(rt.submit(b"after"), timeout=30).status.value)
        rt.close(drain=False)
""")


@pytest.mark.timeout(150)
@pytest.mark.parametrize("what", ["process", "pool"])
def test_sigterm_right_after_start_kills_a_forkserver_child(tmp_path: Path, what: str) -> None:
    script = tmp_path / "early_term.py"
    script.write_text(_SCRIPT)
    try:
        p = subprocess.run([sys.executable, str(script), what], cwd=ROOT, env=cli_env(),
                           capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:  # the pool case hung in Pool.terminate()
        pytest.fail(f"hung (a worker outlived its SIGTERM): {e.stdout!r}")
    assert p.returncode == 0, p.stderr[-3000:]
    want = ["survived", "0"] if what == "process" else ["terminated"]
    assert p.stdout.split() == [*want, "succeeded"], p.stdout + p.stderr[-2000:]
