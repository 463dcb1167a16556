"""The runner table both sides build from one spec, and the typed codec, in-process."""

from __future__ import annotations

import pickle

import msgspec
import pytest

import journaled
from journaled.api import Continue, Step, StepError, Succeed
from journaled.app import check_runner_name, load_table
from journaled.errors import UnknownRunner
from journaled.typed import as_payload, decode, encode_outcome
from tests.apps import runner_apps

APPS = "tests.apps.runner_apps"


@pytest.mark.timeout(10)
def test_targets_names_renames_apps_and_the_default():
    t = load_table(f"{APPS}:images {APPS}:arrays")
    assert t.names == ["images", "arrays"] and t.default == "images"
    t = load_table([f"pics={APPS}:images", f"{APPS}:app"])
    assert t.names == ["pics", "thumbs", "default"] and t.default == "default"
    assert t.get("") is runner_apps.default and t.get("pics") is runner_apps.images
    with pytest.raises(UnknownRunner, match="'x': this supervisor serves pics, thumbs, default"):
        t.get("x")
    t.check("")  # the default is always served
    assert load_table(runner_apps.images).names == ["images"]
    assert load_table(runner_apps.pipeline).names == ["default"]
    with pytest.raises(ValueError, match="drop x="):
        load_table(f"x={APPS}:app")
    with pytest.raises(ValueError, match="given twice"):
        load_table([f"{APPS}:images", f"images={APPS}:arrays"])
    with pytest.raises(ValueError, match="no runners"):
        load_table(f"{APPS}:empty_app")


@pytest.mark.timeout(10)
def test_app_registration_refuses_mistakes_and_pickles_by_reference():
    app = journaled.App()
    app.add("a", runner_apps.images)
    with pytest.raises(ValueError, match="twice"):
        app.add("a", runner_apps.arrays)
    with pytest.raises(ValueError, match="invalid runner name"):
        app.add("has space", runner_apps.arrays)
    with pytest.raises(TypeError):
        app.add("b", 42)
    assert pickle.loads(pickle.dumps(runner_apps.app)) is runner_apps.app
    with pytest.raises(TypeError, match="module-level"):
        pickle.dumps(app)  # a local App cannot be found again by a worker
    assert check_runner_name("") == ""
    for bad, err in [(3, TypeError), ("a/b", ValueError), ("x" * 65, ValueError)]:
        with pytest.raises(err):
            check_runner_name(bad)


@pytest.mark.timeout(10)
def test_typed_codec_keeps_bytes_and_names_the_bad_field():
    raw = b"\x93\x01\x02\x03"
    assert as_payload("x", raw) is raw, "bytes are never re-encoded"
    assert encode_outcome(Continue(raw)).payload is raw
    o = runner_apps.Order("tea", 2)
    assert decode(runner_apps.Order, encode_outcome(Succeed(o)).result) == o
    with pytest.raises(StepError) as e:
        decode(runner_apps.Order, msgspec.msgpack.encode({"sku": "tea", "qty": "2"}))
    assert e.value.is_permanent and "$.qty" in e.value.message
    with pytest.raises(StepError, match="not a msgpack Order"):
        decode(runner_apps.Order, b"\xc1")
    with pytest.raises(TypeError, match="got str"):
        as_payload("the input", "text")
    step = Step("r", 0, msgspec.msgpack.encode(o))
    assert step.input(runner_apps.Order) == o
    with pytest.raises(TypeError, match="needs a type"):
        step.input()
