"""Resource limits, per-key concurrency and rate limits: the pure leasing decisions.

A run may name resources (``{"gpu": 1, "mem_gb": 8}``) and a key
(``"tenant-42"``). The supervisor enforces ``--limit NAME=N`` (the sum
over leased steps never passes N), ``--key-concurrency N`` (at most N
leased steps per key) and ``--rate KEY=N/s`` (a token bucket per key,
``*`` for every key) when it leases. Nothing here reads a clock or
touches a file: the caller passes the time and the runs in flight.

What is *held* is never journaled: it is recomputed from the runs the state
says are leased (``usage``), so a restart, which abandons every open lease,
leaks nothing. Rate buckets live in memory only: a restart refills them.

``FairQueues`` holds the ready runs that carry a key or resources, one heap
per (key, resource shape): every run of one shape is admitted or refused
alike, so a refused head never hides a run behind it that would fit (no
head-of-line blocking), and keys take turns (round-robin), so one tenant's
ten thousand runs cannot starve another's one.
"""

from __future__ import annotations

import heapq
import math
import re
from typing import Any, Callable, Iterable, Mapping

import msgspec

from .errors import OverLimit

EPS = 1e-9  # float sums of resource amounts: 0.1 + 0.2 must fit a limit of 0.3
MAX_NAME = 64
_NAME = re.compile(r"^[A-Za-z0-9_.:*-]{1,64}$")

ADMIT, BLOCK_SHAPE, BLOCK_KEY = 0, 1, 2  # ``Gate.check`` verdicts

Shape = tuple[tuple[str, float], ...]
Entry = tuple[int, int, int, str]  # the ready queue's (-priority, order, seq, run_id)


class Quotas(msgspec.Struct, frozen=True):
    """What ``journaled run`` enforces when it leases (the empty default: nothing)."""

    limits: dict[str, float] = {}  # resource -> most held at once; a name not here is unlimited
    key_concurrency: int = 0  # most leased steps per non-empty key (0: no limit)
    rates: dict[str, float] = {}  # key ('*': every key without its own) -> steps per second

    @property
    def active(self) -> bool:
        return bool(self.limits or self.key_concurrency or self.rates)

    def rate_of(self, key: str) -> float:
        """Steps per second ``key`` may start (0: no limit); keyless runs are never limited."""
        if not key or not self.rates:
            return 0.0
        return self.rates.get(key, self.rates.get("*", 0.0))

    def serving(self) -> dict[str, Any]:
        """This part of ``STATE/serving.json``: what clients check at submit."""
        return {"limits": dict(self.limits), "key_concurrency": self.key_concurrency,
                "rates": dict(self.rates)}


NO_QUOTAS = Quotas()


# ------------------------------------------------------------------ parsing

def _amount(what: str, text: str) -> float:
    try:
        n = float(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(n) or n < 0:
        raise ValueError(f"{what}: {text!r} must be a finite number >= 0")
    return n


def parse_pair(option: str, text: str) -> tuple[str, float]:
    """``gpu=1`` -> ``("gpu", 1.0)``, for ``--limit`` and ``--resource``."""
    name, eq, value = text.partition("=")
    name = name.strip()
    if not eq or not name:
        raise ValueError(f"{option} {text!r}: use NAME=N, e.g. {option} gpu=1")
    return check_name(name, option), _amount(f"{option} {text}", value.strip())


_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_rate(text: str) -> tuple[str, float]:
    """``tenant-42=5/s`` -> ``("tenant-42", 5.0)``; ``*=30/m`` -> ``("*", 0.5)``."""
    key, eq, value = text.rpartition("=")
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*/\s*([a-z]+)\s*", value)
    if not eq or not key or m is None or m.group(2) not in _UNITS:
        raise ValueError(f"--rate {text!r}: use KEY=N/s (or N/m, N/h); KEY '*' is every key")
    n = _amount(f"--rate {text}", m.group(1))
    if n <= 0:
        raise ValueError(f"--rate {text!r}: the rate must be > 0")
    return key, n / _UNITS[m.group(2)]


def check_name(name: object, what: str = "resource") -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{what} name {name!r}: use 1-{MAX_NAME} of letters, digits and . _ : -")
    return name


def check_resources(resources: Mapping[str, float] | None) -> dict[str, float]:
    """A clean copy of a run's resources: names checked, amounts finite and >= 0, zeros dropped."""
    if resources is None or (type(resources) is dict and not resources):
        return {}  # the common case, before the (slow) generic ``Mapping`` check
    if not isinstance(resources, Mapping):
        raise TypeError(f"resources must be a dict of name -> amount, got "
                        f"{type(resources).__name__}")
    out: dict[str, float] = {}
    for name, n in resources.items():
        check_name(name)
        if isinstance(n, bool) or not isinstance(n, (int, float)):
            raise TypeError(f"resource {name!r}: the amount must be a number, got {n!r}")
        if not math.isfinite(n) or n < 0:
            raise ValueError(f"resource {name!r}: the amount must be a finite number >= 0, "
                             f"got {n!r}")
        if n:
            out[name] = float(n)
    return dict(sorted(out.items()))


def check_key(key: object) -> str:
    if key is None:
        return ""
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, got {type(key).__name__}")
    if key:
        check_name(key, "key")
        if key == "*":
            raise ValueError("key '*' is reserved (it means every key in --rate)")
    return key


def over_limit(resources: Mapping[str, float], limits: Mapping[str, float]) -> str | None:
    """Why a run can never be leased under ``limits`` (None: it can)."""
    for name, n in resources.items():
        cap = limits.get(name)
        if cap is not None and n > cap + EPS:
            return f"{name}={n:g} but --limit {name}={cap:g}"
    return None


def check_fits(run_id: str, resources: Mapping[str, float], limits: Mapping[str, float]) -> None:
    """Raise ``OverLimit`` for a run asking for more than a limit allows."""
    if not resources or not limits:
        return
    why = over_limit(resources, limits)
    if why is not None:
        raise OverLimit(run_id, why)


def shape_of(resources: Mapping[str, float]) -> Shape:
    return tuple(sorted(resources.items()))


# ------------------------------------------------------------------- usage

class Usage:
    """What the leased steps hold: resource sums and leased steps per key."""

    __slots__ = ("held", "per_key")

    def __init__(self) -> None:
        self.held: dict[str, float] = {}
        self.per_key: dict[str, int] = {}

    def add(self, key: str, resources: Mapping[str, float]) -> None:
        held = self.held
        for name, n in resources.items():
            held[name] = held.get(name, 0.0) + n
        if key:
            self.per_key[key] = self.per_key.get(key, 0) + 1


def usage(leased: Iterable[Any]) -> Usage:
    """Recompute what is held from the leased runs (anything with ``key`` and ``resources``)."""
    u = Usage()
    for run in leased:
        if run.key or run.resources:
            u.add(run.key, run.resources)
    return u


class Buckets:
    """One token bucket per rate-limited key: ``rate`` tokens a second, up to ``max(1, rate)``."""

    def __init__(self) -> None:
        self._b: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def tokens(self, key: str, rate: float, now: float) -> float:
        cap = max(1.0, rate)
        tokens, at = self._b.get(key, (cap, now))
        return min(cap, tokens + max(0.0, now - at) * rate)

    def take(self, key: str, rate: float, now: float) -> None:
        self._b[key] = (self.tokens(key, rate, now) - 1.0, now)

    def next_token(self, key: str, rate: float, now: float) -> float:
        """When ``key`` next has a whole token (``now`` if it has one)."""
        short = 1.0 - self.tokens(key, rate, now)
        return now if short <= EPS else now + short / rate


class Gate:
    """Admission for one leasing pass: usage grows with each run it admits."""

    def __init__(self, quotas: Quotas, leased: Callable[[], Iterable[Any]], buckets: Buckets,
                 now: float) -> None:
        self.quotas = quotas
        self._leased = leased
        self._usage: Usage | None = None
        self.buckets = buckets
        self.now = now
        self.wake: float | None = None  # earliest time a rate-blocked key gets a token
        self.over: set[str] = set()  # keys whose head asks for more than a limit allows

    @property
    def usage(self) -> Usage:
        if self._usage is None:
            self._usage = usage(self._leased())
        return self._usage

    def check(self, key: str, resources: Mapping[str, float]) -> int:
        q = self.quotas
        if not q.active:
            return ADMIT
        if key and q.key_concurrency and self.usage.per_key.get(key, 0) >= q.key_concurrency:
            return BLOCK_KEY
        rate = q.rate_of(key)
        if rate and self.buckets.tokens(key, rate, self.now) < 1.0 - EPS:
            t = self.buckets.next_token(key, rate, self.now)
            self.wake = t if self.wake is None else min(self.wake, t)
            return BLOCK_KEY
        if resources and q.limits:
            held = self.usage.held
            for name, n in resources.items():
                cap = q.limits.get(name)
                if cap is not None and held.get(name, 0.0) + n > cap + EPS:
                    if n > cap + EPS:
                        self.over.add(key)
                    return BLOCK_SHAPE
        return ADMIT

    def take(self, key: str, resources: Mapping[str, float]) -> None:
        q = self.quotas
        if not q.active:
            return
        self.usage.add(key, resources)
        rate = q.rate_of(key)
        if rate:
            self.buckets.take(key, rate, self.now)


ADMIT_ALL = Gate(NO_QUOTAS, tuple, Buckets(), 0.0)


# ------------------------------------------------------------ ready queues

class FairQueues:
    """Ready runs with a key or resources: a heap per (key, shape), keys served in turn.

    Entries are lazy like the state's own ready queue: ``valid`` says whether
    one still stands for a ready run. The state's plain heap (no key, no
    resources) takes part as key ``""`` with the empty shape.
    """

    def __init__(self) -> None:
        self._q: dict[str, dict[Shape, list[Entry]]] = {}
        self._turn: dict[str, None] = {}  # keys with entries, next to serve first
        self.count = 0  # entries held (an upper bound of ready runs: some may be stale)

    def __len__(self) -> int:
        return self.count

    def clear(self) -> None:
        self._q.clear()
        self._turn.clear()
        self.count = 0

    def push(self, key: str, shape: Shape, entry: Entry) -> None:
        qs = self._q.get(key)
        if qs is None:
            qs = self._q[key] = {}
            self._turn[key] = None
        heap = qs.get(shape)
        if heap is None:
            heap = qs[shape] = []
        heapq.heappush(heap, entry)
        self.count += 1

    def keys(self) -> list[str]:
        """Keys with entries, in the order they will be served."""
        return list(self._turn)

    def take(self, limit: int, valid: Callable[[Entry], Any], gate: Gate,
             plain: list[Entry] | None = None, paused: Iterable[str] = ()) -> list[Any]:
        """Up to ``limit`` runs ``gate`` admits: keys in turn, best entry of each key first.

        Within one pass what is held only grows, so a refused shape or key
        stays refused until the pass ends; each is looked at once per pick.
        """
        if plain:
            self._turn.setdefault("", None)
        out: list[Any] = []
        blocked_keys: set[str] = set(paused)  # a paused key keeps its place in line
        blocked: set[tuple[str, Shape]] = set()
        while len(out) < limit:
            chosen = None
            empty: list[str] = []
            for key in self._turn:
                if key in blocked_keys:
                    continue
                got = self._best(key, valid, gate, blocked, blocked_keys, plain)
                if got is None:
                    if not self._q.get(key) and (key or not plain):
                        empty.append(key)
                    continue
                chosen = (key, got)
                break
            for key in empty:
                self._turn.pop(key, None)
                self._q.pop(key, None)
            if chosen is None:
                break
            key, (heap, run, resources) = chosen
            heapq.heappop(heap)
            if heap is not plain:
                self.count -= 1
            gate.take(key, resources)
            out.append(run)
            del self._turn[key]  # served: to the back of the line
            self._turn[key] = None
        return out

    def _best(self, key: str, valid: Callable[[Entry], Any], gate: Gate,
              blocked: set[tuple[str, Shape]], blocked_keys: set[str],
              plain: list[Entry] | None) -> tuple[list[Entry], Any, dict[str, float]] | None:
        qs = self._q.get(key, {})
        heads: list[tuple[Entry, Shape, list[Entry], Any]] = []
        shapes: list[tuple[Shape, list[Entry]]] = list(qs.items())
        if key == "" and plain:
            shapes.append(((), plain))
        for shape, heap in shapes:
            if (key, shape) in blocked:
                continue
            run = None
            while heap:
                run = valid(heap[0])
                if run is not None:
                    break
                heapq.heappop(heap)
                if heap is not plain:
                    self.count -= 1
            if run is None:
                if heap is not plain:
                    del qs[shape]
                continue
            heads.append((heap[0], shape, heap, run))
        heads.sort(key=lambda h: h[0])
        for _, shape, heap, run in heads:
            resources = dict(shape)
            verdict = gate.check(key, resources)
            if verdict == ADMIT:
                return heap, run, resources
            if verdict == BLOCK_KEY:
                blocked_keys.add(key)
                return None
            blocked.add((key, shape))
        return None


def make_quotas(limits: Mapping[str, float] | None = None, key_concurrency: int = 0,
                rates: Mapping[str, float] | None = None) -> Quotas:
    """Checked ``Quotas`` from the embedding API's (or the CLI's) pieces."""
    lim = {check_name(k, "--limit"): _amount(f"--limit {k}", str(v))
           for k, v in (limits or {}).items()}
    if isinstance(key_concurrency, bool) or not isinstance(key_concurrency, int) \
            or key_concurrency < 0:
        raise ValueError(f"key_concurrency must be an int >= 0, got {key_concurrency!r}")
    rt: dict[str, float] = {}
    for k, v in (rates or {}).items():
        if not isinstance(k, str) or not k:
            raise ValueError(f"rate key {k!r}: use a run key or '*'")
        n = _amount(f"rate {k}", str(v))
        if n <= 0:
            raise ValueError(f"rate {k}: the rate must be > 0 steps per second")
        rt[k] = n
    return Quotas(lim, key_concurrency, rt)
