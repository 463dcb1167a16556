"""The runner of ``tests/data/make_golden_state.py``: the basic scenarios plus a signal wait."""

from __future__ import annotations

from typing import Any

from journaled import Step

from . import basic, state_apps


def runner(step: Step) -> Any:
    app = step.headers.get("app", "echo")
    if app in ("approval", "hold"):
        return state_apps.APPS[app](step)
    return basic.APPS[app](step)
