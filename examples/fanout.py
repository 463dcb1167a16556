"""Fan-out/fan-in: a parent run splits its work into child runs, then gathers them.

The parent's step 0 returns ``Spawn``: ``K`` child runs, each summing the
squares of one slice of ``[0, N)``. The children and the parent's step are
journaled as one record, so a crash keeps all of them or none, and the
children's run ids are derived from the parent's (``PARENT:s0.0``,
``PARENT:s0.1``, ...): a retried step never forks twice. The parent parks
holding no worker; when the last child ends its step 1 runs with
``step.children`` (the children's outcomes, in order) and succeeds with
the total, which is ``(N - 1) * N * (2N - 1) / 6``. Children run through
this same runner; the ``role=child`` header tells them apart. Cancelling
the parent cancels its children.

Input: ``N`` or ``N K`` (defaults 1000000 and 4). Run it (from the
repository root)::

    journaled submit "1000000 4" --run-id sq
    journaled run examples.fanout:runner --until-idle
    journaled status sq      # succeeded; children: 4 spawned by step 0
    journaled runs           # the parent and its four children
"""

from __future__ import annotations

from typing import Any

from journaled import Cancel, Fail, Spawn, Step, Succeed

DEFAULT_N = 1_000_000
DEFAULT_K = 4
_BLOCK = 50_000


def child_ids(parent: str, k: int) -> list[str]:
    """The ids ``Spawn`` gives the children of ``parent``'s step 0."""
    from journaled.fanout import child_ids as ids

    return ids(parent, 0, k)


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


def _fan_out(step: Step) -> Spawn | Fail:
    words = step.payload.split()
    try:
        n = int(words[0]) if words else DEFAULT_N
        k = int(words[1]) if len(words) > 1 else DEFAULT_K
    except ValueError:
        return Fail(f"input must be 'N [K]' (integers), got {step.payload[:40]!r}")
    if n < 0 or not 1 <= k <= 10_000:
        return Fail(f"need N >= 0 and 1 <= K <= 10000, got N={n} K={k}")
    slices = [f"{n * i // k} {n * (i + 1) // k}".encode() for i in range(k)]
    return Spawn(slices, then=str(k).encode(), headers={"role": "child"})


def _fan_in(step: Step) -> Succeed | Fail:
    assert step.children is not None
    bad = [c for c in step.children if c.status.value != "succeeded"]
    if bad:  # the runner decides: here any child that did not succeed fails the total
        return Fail(f"{len(bad)} of {len(step.children)} children did not succeed: "
                    + ", ".join(f"{c.run_id} {c.status.value}" for c in bad[:3]))
    return Succeed(str(sum(int(c.result or b"0") for c in step.children)).encode())


def runner(step: Step) -> Any:
    """A child sums its slice; a parent fans out at step 0 and adds the slices up at step 1."""
    if step.headers.get("role") == "child":
        return _child(step)
    if step.cancel_token.is_cancelled():
        return Cancel("cooperative")
    if step.step_number == 0:
        return _fan_out(step)
    if step.children is None:
        return Fail(f"step {step.step_number} of a parent must follow its Spawn")
    return _fan_in(step)
