"""Fan-out/fan-in: a parent run splits its work into child runs, then gathers them.

The parent's step 0 submits ``K`` child runs through ``journaled.Client``,
each summing the squares of one slice of ``[0, N)``; the parent then polls
with ``ContinueAfter(delay=0.2)`` (a durable timer: it holds no worker while
it waits) until every child is terminal, and succeeds with the total, which
is ``(N - 1) * N * (2N - 1) / 6``. Children run through this same runner;
the ``role=child`` header tells them apart.

Retries are safe: child run ids are derived from the parent's run id
(``PARENT.c0``, ``PARENT.c1``, ...), and re-submitting an id with the same
input is a no-op, so a step 0 re-run after a crash does not fork twice.

Input: ``N`` or ``N K`` (defaults 1000000 and 4). The children are submitted
to the state directory in the submitter's ``state`` header, else
``$JOURNALED_STATE``, else ``.journaled`` (relative to the supervisor's
working directory, which workers share). Run it (from the repository root)::

    journaled submit "1000000 4"
    journaled run examples.fanout:runner --until-idle
    journaled runs           # the parent, its four children, all succeeded

With another state directory, tell the parent where it is::

    journaled submit "1000000 4" -H state=/tmp/jobs --state /tmp/jobs
    journaled run examples.fanout:runner --until-idle --state /tmp/jobs
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from journaled import Cancel, Continue, ContinueAfter, Fail, Step, StepError, Succeed

DEFAULT_N = 1_000_000
DEFAULT_K = 4
POLL = 0.2  # seconds between two looks at the children
_BLOCK = 50_000

_clients: dict[str, Any] = {}  # one incremental reader per state dir, per worker process


def _client(state_dir: str) -> Any:
    from journaled import Client

    if state_dir not in _clients:
        _clients[state_dir] = Client(state_dir)
    return _clients[state_dir]


def state_dir_of(step: Step) -> str:
    return step.headers.get("state") or os.environ.get("JOURNALED_STATE") or ".journaled"


def child_ids(parent: str, k: int) -> list[str]:
    """Deterministic child run ids: the same parent always names the same children."""
    base = parent if len(parent) <= 100 else "p-" + hashlib.sha1(parent.encode()).hexdigest()
    return [f"{base}.c{i}" for i in range(k)]


def sum_squares(lo: int, hi: int) -> int:
    return sum(i * i for i in range(lo, hi))


def _child(step: Step) -> Succeed | Cancel:
    lo, hi = (int(x) for x in step.payload.split())
    total = 0
    for start in range(lo, hi, _BLOCK):
        if step.cancel_token.is_cancelled():
            return Cancel("cooperative")
        stop = min(start + _BLOCK, hi)
        total += sum_squares(start, stop)
        step.progress(stop - lo, hi - lo, f"slice {lo}..{hi}")
    return Succeed(str(total).encode())


def _fan_out(step: Step) -> Continue | Fail:
    words = step.payload.split()
    try:
        n = int(words[0]) if words else DEFAULT_N
        k = int(words[1]) if len(words) > 1 else DEFAULT_K
    except ValueError:
        return Fail(f"input must be 'N [K]' (integers), got {step.payload[:40]!r}")
    if n < 0 or not 1 <= k <= 1000:
        return Fail(f"need N >= 0 and 1 <= K <= 1000, got N={n} K={k}")
    ids = child_ids(step.run_id, k)
    inputs = [f"{n * i // k} {n * (i + 1) // k}".encode() for i in range(k)]
    headers = {"role": "child", "parent": step.run_id}
    if "state" in step.headers:
        headers["state"] = step.headers["state"]
    # Idempotent: on a retry the same ids with the same inputs are a no-op.
    _client(state_dir_of(step)).submit_many(inputs, headers, ids)
    return Continue(json.dumps({"children": ids}).encode())


def _fan_in(step: Step) -> ContinueAfter | Succeed | Fail | Cancel:
    ids = json.loads(step.payload)["children"]
    client = _client(state_dir_of(step))
    outs = [client.status(cid) for cid in ids]
    if step.cancel_token.is_cancelled():
        for o in outs:
            if not o.status.terminal:
                client.cancel(o.run_id, f"parent {step.run_id} cancelled")
        return Cancel("cooperative")
    done = [o for o in outs if o.status.terminal]
    step.progress(len(done), len(outs), "children finished")
    if len(done) < len(outs):
        return ContinueAfter(step.payload, delay=POLL)
    bad = [o for o in outs if o.status.value != "succeeded"]
    if bad:
        return Fail(f"{len(bad)} of {len(outs)} children did not succeed: "
                    + ", ".join(f"{o.run_id} {o.status.value}" for o in bad[:3]))
    return Succeed(str(sum(int(o.result or b"0") for o in outs)).encode())


def runner(step: Step) -> Any:
    """A child sums its slice; a parent fans out at step 0, then polls until all are done."""
    if step.headers.get("role") == "child":
        return _child(step)
    if step.cancel_token.is_cancelled():
        return Cancel("cooperative")
    if step.step_number == 0:
        return _fan_out(step)
    try:
        return _fan_in(step)
    except (KeyError, ValueError) as e:
        raise StepError.permanent(f"bad parent payload at step {step.step_number}: {e}") from e
