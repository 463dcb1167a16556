"""Test-only environment switches: each weakens a guarantee, so each is announced.

``JOURNALED_FAILPOINTS`` injects faults, ``JOURNALED_UNSAFE_DISPATCH_BEFORE_SYNC``
breaks the write-ahead rule on purpose and ``JOURNALED_SIMULATE_POWER_LOSS``
holds journal writes in memory until each sync. Crash tests need them; a
service that inherits one from a test harness must not run silently without
its guarantees, so the supervisor logs one loud line at start-up naming each.
"""

from __future__ import annotations

import logging
import os

from . import failpoints

log = logging.getLogger("journaled.supervisor")

# Test-only environment switches and the guarantee each one takes away.
TEST_KNOBS = {
    "JOURNALED_FAILPOINTS": "injected crashes, I/O errors, delays and skipped fsyncs",
    "JOURNALED_UNSAFE_DISPATCH_BEFORE_SYNC": "steps are sent before their leases are durable "
                                             "(breaks the write-ahead rule)",
    "JOURNALED_SIMULATE_POWER_LOSS": "journal writes are held in memory until each sync, "
                                     "and a crash loses them",
}


def unsafe_knobs_set(env: dict[str, str] | None = None) -> dict[str, str]:
    """The test-only switches set in ``env`` (default: this process), name -> value."""
    env = dict(os.environ) if env is None else env
    out = {}
    for name in TEST_KNOBS:
        value = env.get(name, "")
        if value and (name == "JOURNALED_FAILPOINTS" or value == "1"):
            out[name] = value
    return out


def warn_test_knobs() -> None:
    """One loud line when a switch that weakens a guarantee is on; refuse a bad failpoint spec.

    Raises:
        failpoints.FailpointSpecError: ``JOURNALED_FAILPOINTS`` is malformed.
    """
    failpoints.check_env()
    knobs = unsafe_knobs_set()
    if knobs:
        log.warning("WARNING: TEST-ONLY SWITCHES ARE SET, durability is NOT guaranteed: %s; "
                    "unset them outside tests",
                    "; ".join(f"{k}={v} ({TEST_KNOBS[k]})" for k, v in knobs.items()))
