"""``examples/arrays.py`` end to end: 32 MB numpy arrays between four steps, via the CLI.

Needs numpy (the ``arrays`` extra); skipped with the reason when it is missing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from journaled.blobs import BlobRef, BlobStore
from tests.e2e.helpers import ROOT, cli_env, journal_records

np = pytest.importorskip("numpy", reason="examples/arrays.py needs numpy: "
                                         "pip install 'journaled[arrays]'")

CLI = [sys.executable, "-m", "journaled.cli"]


def _cli(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*CLI, *args, "--state", str(state)], env=cli_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.timeout(300)
def test_arrays_pipeline_passes_32_mb_arrays_through_blobs(tmp_path: Path) -> None:
    from examples import arrays

    n = 2000
    state = tmp_path / "state"
    src, dst = tmp_path / "a.bin", tmp_path / "result.bin"
    x = arrays.make_input(n, seed=3)
    x.tofile(src)
    rid = _cli("submit", "--input-file", str(src), "-H", f"shape={n},{n}", "-H",
               "dtype=float64", state=state).stdout.strip()
    _cli("run", "examples.arrays:runner", "--until-idle", "-w", "2", state=state)
    _cli("result", rid, "--out", str(dst), state=state)
    got = np.fromfile(dst, dtype=np.float64).reshape(n, n)
    assert np.allclose(got, arrays.reference(x))
    # Every array travelled as a blob (input, three payloads, the result); the
    # journal holds their refs only.
    sizes = [st.st_size for _p, st in BlobStore(state).names()]
    assert sizes == [n * n * 8] * 5, sizes
    assert any(isinstance(getattr(r, "input", None), BlobRef) for r in journal_records(state)
               ) or any(isinstance(s.result, BlobRef) for r in journal_records(state)
                        for s in getattr(r, "runs", []))
    journal = sum(p.stat().st_size for p in (state / "journal").glob("*.log"))
    assert journal < 64 << 10, f"the journal holds {journal} bytes"
    check = subprocess.run([sys.executable, "-m", "examples.arrays", "check", str(src), str(dst),
                            "--n", str(n)], cwd=ROOT, env=cli_env(), capture_output=True,
                           text=True, timeout=120)
    assert check.stdout.strip() == "ok", check
