"""Unit and property tests of the pure leasing decisions for limits and keys (``journaled.quotas``).

Driven through ``State`` as the supervisor drives it: ``due_runs`` with a
``Gate`` built from the runs in flight, leases, outcomes. What must hold:
never over a limit, never over the per-key concurrency, every key served
(round-robin), no run starved, no head-of-line blocking, and nothing held
after a restart.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from journaled import quotas
from journaled.errors import OverLimit
from journaled.quotas import Buckets, Gate, Quotas, make_quotas, parse_pair, parse_rate
from journaled.state import State, WorkerResult

pytestmark = pytest.mark.timeout(120)


def gate(state: State, q: Quotas, buckets: Buckets | None = None, now: float = 0.0) -> Gate:
    return Gate(q, state.in_flight.values, buckets or Buckets(), now)


def submit(state: State, rid: str, key: str = "", now: float = 1.0, **res: float) -> None:
    state.submit(rid, rid.encode(), now, resources=res or None, key=key)


def lease(state: State, q: Quotas, n: int, now: float = 2.0, buckets: Buckets | None = None
          ) -> list[str]:
    g = gate(state, q, buckets, now)
    runs = state.due_runs(now, n, g)
    for r in runs:
        state.lease(r, 0, now)
    return [r.run_id for r in runs]


def finish(state: State, rid: str, now: float = 3.0) -> None:
    run = state.runs[rid]
    state.complete(rid, run.attempt, WorkerResult("succeed", b"ok"), now)


def held(state: State) -> quotas.Usage:
    return quotas.usage(state.in_flight.values())


# ----------------------------------------------------------------- parsing

def test_parse_limits_and_rates():
    assert parse_pair("--limit", "gpu=1") == ("gpu", 1.0)
    assert parse_pair("--resource", " mem_gb = 8.5 ") == ("mem_gb", 8.5)
    assert parse_rate("tenant-42=5/s") == ("tenant-42", 5.0)
    assert parse_rate("*=30/m") == ("*", 0.5)
    assert parse_rate("a=7200/h") == ("a", 2.0)
    for bad in ("gpu", "=1", "gpu=x", "gpu=-1", "gpu=inf"):
        with pytest.raises(ValueError, match="--limit"):
            parse_pair("--limit", bad)
    for bad in ("a=5", "a=5/d", "=5/s", "a=0/s", "a=x/s"):
        with pytest.raises(ValueError, match="--rate"):
            parse_rate(bad)


def test_check_resources_and_keys():
    assert quotas.check_resources({"b": 2, "a": 0, "c": 0.5}) == {"b": 2.0, "c": 0.5}
    with pytest.raises(TypeError):
        quotas.check_resources({"gpu": "1"})
    with pytest.raises(ValueError):
        quotas.check_resources({"gpu": -1})
    with pytest.raises(ValueError):
        quotas.check_resources({"bad name": 1})
    with pytest.raises(ValueError, match="reserved"):
        quotas.check_key("*")
    assert quotas.check_key(None) == ""
    with pytest.raises(ValueError):
        make_quotas({"gpu": -1})
    with pytest.raises(ValueError):
        make_quotas(rates={"a": 0})


def test_over_limit_is_refused_at_submit_unknown_names_are_unlimited():
    state = State()
    state.quotas = make_quotas({"gpu": 1})
    with pytest.raises(OverLimit, match=r"gpu=2 but --limit gpu=1") as e:
        submit(state, "r1", gpu=2)
    assert "\n" not in str(e.value)
    assert "r1" not in state.runs
    submit(state, "r2", gpu=1, disk=1e6)  # no --limit disk: unlimited
    assert lease(state, state.quotas, 5) == ["r2"]


# --------------------------------------------------------------- decisions

def test_no_head_of_line_blocking():
    state = State()
    q = make_quotas({"gpu": 2})
    submit(state, "a", gpu=1)
    assert lease(state, q, 1) == ["a"]
    submit(state, "big", gpu=2)  # does not fit while "a" holds one
    submit(state, "small", gpu=1)
    submit(state, "plain")
    assert sorted(lease(state, q, 5)) == ["plain", "small"]
    finish(state, "a")
    assert lease(state, q, 5) == []  # "small" still holds one
    finish(state, "small")
    assert lease(state, q, 5) == ["big"]
    assert held(state).held == {"gpu": 2.0}


def test_keys_take_turns():
    state = State()
    q = Quotas()
    for i in range(50):
        submit(state, f"a{i}", key="A")
    for i in range(3):
        submit(state, f"b{i}", key="B")
    submit(state, "p0")
    first = []
    for _ in range(8):  # one at a time, as a single idle worker would take them
        got = lease(state, q, 1)
        first += got
        finish(state, got[0])
    # B and the keyless run are never stuck behind A's fifty; A went first: it came first.
    assert first == ["a0", "b0", "p0", "a1", "b1", "a2", "b2", "a3"]


def test_key_concurrency_and_rate():
    state = State()
    q = make_quotas(key_concurrency=2, rates={"slow": 1.0})
    for i in range(4):
        submit(state, f"a{i}", key="A")
        submit(state, f"s{i}", key="slow")
    buckets = Buckets()
    got = lease(state, q, 10, now=100.0, buckets=buckets)
    assert sorted(got) == ["a0", "a1", "s0"]  # A: concurrency 2; slow: one token
    g = gate(state, q, buckets, 100.0)
    assert state.due_runs(100.0, 10, g) == []
    assert g.wake == pytest.approx(101.0)  # when the next token comes
    finish(state, "s0")
    assert lease(state, q, 10, now=100.5, buckets=buckets) == []
    assert lease(state, q, 10, now=101.0, buckets=buckets) == ["s1"]


def test_rate_star_applies_to_every_key_but_not_keyless():
    q = make_quotas(rates={"*": 2.0, "vip": 100.0})
    assert q.rate_of("x") == 2.0 and q.rate_of("vip") == 100.0 and q.rate_of("") == 0.0


def test_held_is_recomputed_after_a_crash_and_snapshot():
    state = State()
    q = make_quotas({"gpu": 1}, key_concurrency=1)
    submit(state, "g1", key="K", gpu=1)
    submit(state, "g2", key="K", gpu=1)
    assert lease(state, q, 5) == ["g1"]
    # A snapshot taken while g1 holds the gpu, replayed into a fresh state, then a restart.
    fresh = State()
    fresh.apply_all(state.snapshot(5.0))
    assert fresh.runs["g2"].resources == {"gpu": 1.0} and fresh.runs["g2"].key == "K"
    assert held(fresh).held == {"gpu": 1.0}  # still leased in the snapshot
    fresh.recover(6.0)
    assert held(fresh).held == {} and held(fresh).per_key == {}
    assert lease(fresh, q, 5, now=7.0) == ["g1"]  # abandoned, runs again; nothing leaked
    finish(fresh, "g1", 8.0)
    assert lease(fresh, q, 5, now=9.0) == ["g2"]


# ---------------------------------------------------------------- property

run_spec = st.tuples(st.sampled_from(["", "A", "B", "C"]), st.integers(0, 2), st.integers(0, 6))


@settings(max_examples=60, deadline=None)
@given(specs=st.lists(run_spec, min_size=1, max_size=40),
       conc=st.integers(0, 3), workers=st.integers(1, 4),
       finish_order=st.randoms(use_true_random=False))
def test_never_over_a_limit_and_nothing_starves(specs, conc, workers, finish_order):
    limits = {"gpu": 2.0, "mem": 6.0}
    q = make_quotas(limits, conc)
    state = State()
    state.quotas = q
    for i, (key, gpu, mem) in enumerate(specs):
        submit(state, f"r{i}", key=key, gpu=gpu, mem=mem)
    served_at: dict[str, int] = {}
    t = 0
    while len(served_at) < len(specs):
        t += 1
        assert t < 10 * len(specs) + 10, "a run starved"
        free = workers - len(state.in_flight)
        got = lease(state, q, free, now=float(t)) if free > 0 else []
        for rid in got:
            served_at[rid] = t
        u = held(state)
        for name, cap in limits.items():
            assert u.held.get(name, 0.0) <= cap + 1e-9
        if conc:
            assert all(n <= conc for n in u.per_key.values())
        assert state.in_flight, "nothing runs while runs wait: a deadlock"
        done = list(state.in_flight)
        finish_order.shuffle(done)
        for rid in done[:finish_order.randint(1, len(done))]:
            finish(state, rid, float(t))
    assert set(served_at) == {f"r{i}" for i in range(len(specs))}


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 30), min_size=2, max_size=5))
def test_round_robin_serves_every_key_in_turn(counts):
    state = State()
    for k, n in enumerate(counts):
        for i in range(n):
            submit(state, f"k{k}-{i}", key=f"K{k}")
    order = lease(state, Quotas(), sum(counts))
    keys = [rid.split("-")[0] for rid in order]
    # While every key still has runs, each window of len(counts) leases has every key once.
    live = len(counts)
    short = min(counts)
    for w in range(short):
        window = keys[w * live:(w + 1) * live]
        assert sorted(window) == sorted(f"k{k}" for k in range(live))
