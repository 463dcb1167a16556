"""Typed payloads: msgspec values in and out, msgpack on the journal, bytes untouched.

``Client.submit(obj)``, ``Continue(obj)`` and ``Succeed(obj)`` take a
Struct or any msgspec-encodable value; ``@journaled.typed`` and
``step.input(T)`` decode and validate (a bad payload is a permanent error
naming the field); ``result(id, type=T)`` decodes the result.
"""

from __future__ import annotations

import subprocess
import sys

import msgspec
import pytest

from journaled import Runtime
from journaled.client import Client
from tests.apps import runner_apps
from tests.apps.runner_apps import Order

from .helpers import ROOT, cli_env

APPS = "tests.apps.runner_apps"

RUNNERS = {"typed": runner_apps.typed_runner, "bytes": runner_apps.bytes_runner,
           "unencodable": runner_apps.unencodable, "echo": runner_apps.echo_type}


@pytest.mark.timeout(60)
def test_typed_runner_through_journaled_run(state_dir):
    c = Client(state_dir)
    rid = c.submit(Order("tea", 3))  # no supervisor yet: the inbox carries the msgpack
    done = subprocess.run([sys.executable, "-m", "journaled.cli", "run",
                           f"{APPS}:typed_runner", "--state", str(state_dir), "-w", "1",
                           "--until-idle"], cwd=ROOT, env=cli_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert c.result(rid, type=dict) == {"sku": "tea", "total": 7.5, "step": 1}, \
        "step 0 decodes an Order, hands a Priced on, step 1 decodes it"
    assert c.result(rid) == msgspec.msgpack.encode({"sku": "tea", "total": 7.5, "step": 1}), \
        "without type= the result is the msgpack bytes"


@pytest.mark.timeout(60)
def test_typed_values_bytes_and_bad_payloads_in_one_runtime(state_dir):
    with Runtime(state_dir, RUNNERS, workers=1) as rt:
        ok = rt.submit(Order("ink", 2), runner="typed")
        bad = rt.submit({"sku": "ink", "qty": "two"}, runner="typed")
        missing = rt.submit({"sku": "ink"}, runner="typed")
        raw = b"\x82\xa3sku\xa3ink"  # looks like msgpack: must still arrive as these bytes
        plain = rt.submit(raw, runner="bytes")
        enc = rt.submit(b"", runner="unencodable")
        lst = rt.submit([1, 2, 3], runner="echo")
        assert rt.wait(ok, timeout=30).status.value == "succeeded"
        assert rt.result(ok, type=dict)["total"] == 5.0
        for rid, says in [(bad, "$.qty"), (missing, "`qty`")]:
            out = rt.wait(rid, timeout=30)
            assert out.status.value == "failed", out
            assert says in (out.error or "") and "Order" in (out.error or ""), out.error
            assert "permanent" in (out.error or "")
            assert len(rt.history(rid)) == 1, "a bad payload is never retried"
        assert rt.wait(plain, timeout=30).result == raw[::-1], "bytes are never re-encoded"
        out = rt.wait(enc, timeout=30)
        assert out.status.value == "failed" and "Continue.payload" in (out.error or "")
        assert rt.wait(lst, timeout=30).status.value == "succeeded"
        assert rt.result(lst, type=dict) == {"raw": msgspec.msgpack.encode([1, 2, 3]),
                                            "as_list": [1, 2, 3]}
        with pytest.raises(msgspec.ValidationError):
            rt.result(ok, type=Order)  # the result is a dict without qty


@pytest.mark.timeout(30)
def test_submit_refuses_what_it_cannot_encode_before_queueing(state_dir):
    c = Client(state_dir)
    with pytest.raises(TypeError, match="must be bytes, got str"):
        c.submit("text")
    with pytest.raises(TypeError, match="msgspec-encodable"):
        c.submit(object())
    assert not c._pending(), "nothing may reach the inbox"
