"""The README's ``Runtime`` snippet runs as pasted (issue 11 item 18): it needs the
``if __name__ == "__main__":`` guard, because workers start from a fresh interpreter."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import ROOT, cli_env


def _block_after(text: str, marker: str) -> str:
    start = text.index(marker)
    m = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert m is not None, f"no python block after {marker!r}"
    return m.group(1)


@pytest.mark.timeout(120)
def test_readme_runtime_snippet_runs_as_pasted(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    (tmp_path / "app.py").write_text(_block_after(readme, "Save this as `app.py`"))
    embed = _block_after(readme, "Save this as `embed.py`")
    assert 'if __name__ == "__main__":' in embed
    (tmp_path / "embed.py").write_text(embed)
    proc = subprocess.run([sys.executable, "embed.py"], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr
    assert "result=b'96'" in proc.stdout, proc.stdout
    assert "['succeeded', 'cancelled']" in proc.stdout, proc.stdout
    assert "Attempt(step=0, attempt=1" in proc.stdout, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
