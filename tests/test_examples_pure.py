"""The example runners called in-process, no supervisor: their contracts hold on their own.

A driver plays the supervisor's part (advance on ``Continue``, retry on a
transient ``StepError`` with ``attempts + 1``) so a failure here points at
the example, not at the runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from examples import flaky, primes
from journaled.api import (
    OUTCOME_TYPES,
    Cancel,
    CancelToken,
    Continue,
    ContinueAfter,
    Fail,
    Step,
    StepError,
    Succeed,
)

Runner = Callable[[Step], Any]
TERMINAL = (Succeed, Fail, Cancel)


def drive(runner: Runner, data: bytes, run_id: str = "r1", max_attempts: int = 3,
          max_steps: int = 50) -> tuple[Any, list[tuple[int, int, Any]]]:
    """Run ``runner`` to a terminal outcome; return it and ``(step, attempt, outcome|error)``."""
    trace: list[tuple[int, int, Any]] = []
    payload, step_number, attempts = data, 0, 1
    while step_number < max_steps:
        try:
            out = runner(Step(run_id, step_number, payload, attempts=attempts))
        except StepError as err:
            trace.append((step_number, attempts, err))
            if err.permanent or attempts >= max_attempts:
                raise
            attempts += 1
            continue
        assert isinstance(out, OUTCOME_TYPES), f"not an outcome: {out!r}"
        trace.append((step_number, attempts, out))
        if isinstance(out, TERMINAL):
            return out, trace
        payload, step_number, attempts = out.payload, step_number + 1, 1
    raise AssertionError(f"no terminal outcome after {max_steps} steps")


def reference_prime_count(n: int) -> int:
    """Primes below ``n`` by a plain sieve of Eratosthenes, written independently."""
    if n < 3:
        return 0
    is_prime = [True] * n
    is_prime[0] = is_prime[1] = False
    i = 2
    while i * i < n:
        if is_prime[i]:
            for j in range(i * i, n, i):
                is_prime[j] = False
        i += 1
    return sum(is_prime)


# --- primes -------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 10, 11, 100, 1000, 7919, 7920, 30011])
def test_primes_counts_match_reference(n: int) -> None:
    out, trace = drive(primes.runner, str(n).encode())
    assert out == Succeed(str(reference_prime_count(n)).encode())
    assert [s for s, _, _ in trace] == list(range(primes.CHUNKS))
    assert all(isinstance(o, Continue) for _, _, o in trace[:-1])


@pytest.mark.timeout(30)
@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=5000))
def test_primes_property(n: int) -> None:
    out, _ = drive(primes.runner, str(n).encode())
    assert out == Succeed(str(reference_prime_count(n)).encode())


@pytest.mark.timeout(30)
def test_primes_empty_input_means_default() -> None:
    out, _ = drive(primes.runner, b"")
    assert out == Succeed(str(reference_prime_count(primes.DEFAULT_N)).encode())


@pytest.mark.timeout(30)
def test_primes_steps_are_idempotent() -> None:
    """At-least-once delivery: any step run again on the same payload says the same."""
    _, trace = drive(primes.runner, b"20000")
    payloads = [b"20000"] + [o.payload for _, _, o in trace[:-1]]
    for step_number, payload in enumerate(payloads):
        again = primes.runner(Step("r1", step_number, payload, attempts=2))
        assert again == trace[step_number][2]


@pytest.mark.timeout(30)
def test_primes_chunks_tile_the_range() -> None:
    for n in (0, 1, 7, 100, 12345):
        bounds = [primes.chunk_bounds(n, c) for c in range(primes.CHUNKS)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in pairwise(bounds))


@pytest.mark.timeout(30)
def test_primes_reports_progress() -> None:
    seen: list[tuple[float, float | None, str]] = []
    step = Step("r1", 0, b"40000", progress=lambda d, t, m: seen.append((d, t, m)))
    assert isinstance(primes.runner(step), Continue)
    assert seen, "no progress reported"
    assert all(t == 40000 for _, t, _ in seen)
    dones = [d for d, _, _ in seen]
    assert dones == sorted(dones) and dones[-1] == primes.chunk_bounds(40000, 0)[1]


@pytest.mark.timeout(30)
def test_primes_cancelled_token_cancels() -> None:
    token = CancelToken()
    token.cancel()
    assert primes.runner(Step("r1", 0, b"50000", cancel_token=token)) == Cancel("cooperative")


@pytest.mark.timeout(30)
def test_primes_cancel_mid_chunk() -> None:
    """The token is looked at inside a chunk too, not only at its start."""
    token = CancelToken()
    calls = 0

    def progress(done: float, total: float | None, message: str) -> None:
        nonlocal calls
        calls += 1
        token.cancel()

    step = Step("r1", 0, b"400000", cancel_token=token, progress=progress)
    assert primes.runner(step) == Cancel("cooperative")
    assert calls == 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize("data", [b"abc", b"-5", b"1e6"])
def test_primes_bad_input_fails(data: bytes) -> None:
    out, trace = drive(primes.runner, data)
    assert isinstance(out, Fail) and len(trace) == 1


@pytest.mark.timeout(30)
def test_primes_payload_for_wrong_step_is_permanent() -> None:
    payload = b'{"n":100,"chunk":2,"count":0}'
    with pytest.raises(StepError) as info:
        primes.runner(Step("r1", 1, payload))
    assert info.value.permanent


@pytest.mark.timeout(30)
def test_primes_inputs_file_matches_inputs() -> None:
    path = Path(primes.__file__).with_name("primes.inputs")
    lines = [line.encode() for line in path.read_text().splitlines() if line.strip()]
    assert lines == primes.INPUTS
    assert len(lines) == 8 and all(int(x) > 0 for x in lines)


# --- flaky --------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("order", [b"bad", b"bad-order-3", b"", b"  "])
def test_flaky_invalid_order_fails_at_step_0(order: bytes) -> None:
    out, trace = drive(flaky.runner, order)
    assert isinstance(out, Fail) and out.reason
    assert [(s, a) for s, a, _ in trace] == [(0, 1)]


@pytest.mark.timeout(30)
def test_flaky_good_order_path() -> None:
    out, trace = drive(flaky.runner, b"order-17")
    assert out == Succeed(b"shipped:order-17")
    steps = [(s, a, type(o)) for s, a, o in trace]
    assert steps == [
        (0, 1, Continue),
        (1, 1, StepError),
        (1, 2, Continue),
        (2, 1, ContinueAfter),
        (3, 1, Succeed),
    ]
    err = trace[1][2]
    assert isinstance(err, StepError) and not err.permanent
    wait = trace[3][2]
    assert isinstance(wait, ContinueAfter) and wait.delay_seconds() == pytest.approx(0.5)
    assert wait.payload == b"order-17"


@pytest.mark.timeout(30)
def test_flaky_first_delivery_of_step_1_is_always_transient() -> None:
    """Deterministic, not random: the retry logic can count on it."""
    for _ in range(5):
        with pytest.raises(StepError) as info:
            flaky.runner(Step("r1", 1, b"order-17", attempts=1))
        assert not info.value.permanent
        assert flaky.runner(Step("r1", 1, b"order-17", attempts=2)) == Continue(b"order-17")


@pytest.mark.timeout(30)
def test_flaky_only_one_retry_budget_needed() -> None:
    """With max_attempts=2 the run still succeeds: one failure, then success."""
    out, _ = drive(flaky.runner, b"order-99", max_attempts=2)
    assert out == Succeed(b"shipped:order-99")
    with pytest.raises(StepError):
        drive(flaky.runner, b"order-99", max_attempts=1)


@pytest.mark.timeout(30)
def test_flaky_cancelled_token_cancels() -> None:
    token = CancelToken()
    token.cancel()
    assert flaky.runner(Step("r1", 2, b"order-1", cancel_token=token)) == Cancel("cooperative")


# ---------------------------------------------------------------- fanout, wordcount


def _fan(runner: Callable[[Step], Any], data: bytes, run_id: str = "p") -> Any:
    """Play the supervisor for one Spawn: run each child, then the fan-in step."""
    from journaled.api import Children, Spawn
    from journaled.fanout import child_ids

    out = runner(Step(run_id, 0, data))
    if not isinstance(out, Spawn):
        return out
    ids = child_ids(run_id, 0, len(out.children))
    items = []
    for cid, inp in zip(ids, out.children, strict=True):
        res = runner(Step(cid, 0, inp, headers=out.headers))
        assert isinstance(res, (Succeed, Fail)), res
        items.append((cid, "succeeded", res.result, None) if isinstance(res, Succeed)
                     else (cid, "failed", None, res.reason))
    return runner(Step(run_id, 1, out.then, children=Children(items)))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("n,k", [(0, 1), (1, 1), (10, 3), (1000, 7), (5, 5)])
def test_fanout_total_is_the_sum_of_squares(n: int, k: int) -> None:
    from examples import fanout

    assert _fan(fanout.runner, f"{n} {k}".encode()) == Succeed(str(sum(i * i for i in range(n)))
                                                               .encode())


@pytest.mark.timeout(30)
def test_fanout_step_zero_is_a_spawn_that_tiles_the_range() -> None:
    from examples import fanout
    from journaled.api import Spawn

    out = fanout.runner(Step("p", 0, b"100 3"))
    assert isinstance(out, Spawn) and out.headers == {"role": "child"}
    bounds = [tuple(int(x) for x in c.split()) for c in out.children]
    assert bounds == [(0, 33), (33, 66), (66, 100)]
    assert out == fanout.runner(Step("p", 0, b"100 3", attempts=2)), "a retry spawns the same"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("data", [b"x", b"10 0", b"-1 2"])
def test_fanout_bad_input_fails(data: bytes) -> None:
    from examples import fanout

    assert isinstance(fanout.runner(Step("p", 0, data)), Fail)


@pytest.mark.timeout(30)
def test_fanout_fan_in_fails_when_a_child_did_not_succeed() -> None:
    from examples import fanout
    from journaled.api import Children

    kids = Children([("p:s0.0", "succeeded", b"1", None), ("p:s0.1", "cancelled", None, "x")])
    out = fanout.runner(Step("p", 1, b"2", children=kids))
    assert isinstance(out, Fail) and "p:s0.1 cancelled" in out.reason


@pytest.mark.timeout(30)
def test_wordcount_reduce_equals_a_direct_count_of_the_generated_text() -> None:
    import json
    from collections import Counter

    from examples import wordcount

    out = _fan(wordcount.runner, b"30 200 5")
    assert isinstance(out, Succeed)
    got = json.loads(out.result)
    text = " ".join(wordcount.generate(30, 200, 5))
    direct = Counter(w.strip(".").lower() for w in text.split())
    assert got["words"] == 6000 == sum(direct.values())
    assert got["top"][0] == ["the", direct["the"]]
    assert wordcount.generate(3, 10, 1) == wordcount.generate(3, 10, 1), "seeded: deterministic"


@pytest.mark.timeout(30)
def test_wordcount_bad_input_fails() -> None:
    from examples import wordcount

    assert isinstance(wordcount.runner(Step("w", 0, b"0 10 1")), Fail)
    assert isinstance(wordcount.runner(Step("w", 0, b"abc")), Fail)
