"""StepError, Cancelled and typing: the API traps of issue 11 item 19."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import journaled
from journaled import Cancelled, StepError
from journaled.client import Client
from journaled.runtime import Runtime
from tests.apps import client_api
from tests.apps.client_api import QuotaError
from tests.e2e.helpers import ROOT, wait_for


@pytest.mark.timeout(10)
def test_step_error_permanent_classmethod_on_subclass() -> None:
    err = QuotaError.permanent("s3")
    assert type(err) is QuotaError, "permanent() must build the subclass it is called on"
    assert err.is_permanent is True and err.service == "s3"
    assert str(err) == "quota exceeded on s3"
    err2 = QuotaError.transient("gcs")
    assert type(err2) is QuotaError and err2.is_permanent is False
    # The 0.1 spelling of the flag still reads right on an instance.
    assert err.permanent is True and err2.permanent is False
    assert StepError.permanent("x").is_permanent and not StepError.transient("x").is_permanent
    assert not StepError("plain").is_permanent
    assert not hasattr(StepError, "permanent_"), "the old helper name must be gone"


@pytest.mark.timeout(10)
def test_step_error_permanent_is_a_plain_classmethod_not_a_descriptor_hack() -> None:
    raw = StepError.__dict__["permanent"]
    assert isinstance(raw, classmethod), "StepError.permanent must be a classmethod"
    assert "__reduce__" not in StepError.__dict__


@pytest.mark.timeout(10)
def test_cancelled_is_not_swallowed_by_except_exception() -> None:
    assert journaled.Cancelled is Cancelled, "Cancelled must be exported from journaled"
    assert issubclass(Cancelled, BaseException) and not issubclass(Cancelled, Exception)
    token = journaled.CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        try:
            token.raise_if_cancelled()
        except Exception:  # noqa: BLE001 - exactly what a runner might write
            pytest.fail("except Exception swallowed Cancelled")


@pytest.mark.timeout(60)
def test_subclassed_step_errors_in_a_worker_are_permanent_or_retried(
        runtime: Callable[..., Runtime], state_dir: Path) -> None:
    rt = runtime(client_api.runner)
    perm = rt.submit(b"", headers={"app": "quota_permanent"})
    trans = rt.submit(b"", headers={"app": "quota_transient"})
    out = rt.wait(perm, 30)
    assert out.status.value == "failed" and "quota exceeded on s3" in (out.error or "")
    dead = {d.run_id: d for d in rt.dead()}
    assert dead[perm].attempt == 1, "a permanent subclass error must dead-letter at once"
    out = rt.wait(trans, 30)
    assert (out.status.value, out.result) == ("succeeded", b"2"), \
        "a transient subclass error must be retried"


@pytest.mark.timeout(60)
def test_cancelled_raised_in_a_worker_is_not_swallowed_and_ends_cancelled(
        runtime: Callable[..., Runtime], state_dir: Path, tmp_path: Path) -> None:
    rt = runtime(client_api.runner, cancel_grace=20.0)
    mark = tmp_path / "mark"
    rid = rt.submit(b"", headers={"app": "swallow_cancel", "mark": str(mark)})
    wait_for(mark.exists, 20, "the step to start")
    rt.cancel(rid)
    out = rt.wait(rid, 15)  # well before the 20 s grace kill: the step itself ended
    assert out.status.value == "cancelled"
    assert not Path(str(mark) + ".swallowed").exists(), "except Exception caught Cancelled"
    assert Path(str(mark) + ".saw").exists()
    hist = Client(state_dir).history(rid)
    assert hist[-1].outcome == "cancelled", f"the worker must report a cancel, got {hist}"


@pytest.mark.timeout(120)
def test_mypy_strict_passes_on_the_examples(tmp_path: Path) -> None:
    mypy = Path(sys.executable).with_name("mypy")
    if not mypy.exists():
        pytest.skip("mypy is not installed (pip install -e '.[test]')")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    import importlib.util

    # examples/arrays.py needs numpy (the 'arrays' extra); checked whenever it is there.
    skip = [] if importlib.util.find_spec("numpy") else ["--exclude", "examples/arrays.py"]
    proc = subprocess.run([str(mypy), "--strict", "--cache-dir", str(tmp_path / "cache"),
                           *skip, "examples/", "tests/apps/client_api.py"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.timeout(10)
def test_py_typed_ships_with_the_package() -> None:
    assert (ROOT / "journaled" / "py.typed").is_file()
    text = (ROOT / "pyproject.toml").read_text()
    assert 'journaled = ["py.typed"]' in text, "py.typed must be declared as package data"
