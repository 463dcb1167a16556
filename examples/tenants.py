"""Two tenants sharing one scarce resource: run keys, ``--limit`` and an async runner.

Each run renders a small Mandelbrot tile (real CPU work) while holding one
``gpu`` (a stand-in for any scarce thing: a licence, a GPU, a DB connection).
``--limit gpu=1`` lets one step hold it at a time, so the two workers never
render at once; ``--key`` names the tenant, and ready runs of different
tenants take turns, so a tenant that queued 20 runs first cannot starve one
that queued 2 afterwards. The runner is ``async``: it awaits between rows,
so a cancel stops it at the next row. Run it (from the repository root)::

    for i in $(seq 6); do journaled submit --key big-co --resource gpu=1 "$i"; done
    journaled submit --key small-co --resource gpu=1 "99"
    journaled submit --key small-co --resource gpu=1 "98"
    journaled run examples.tenants:render --limit gpu=1 --until-idle
    journaled runs

``journaled submit --resource gpu=2 x`` is refused (exit 2) once a
supervisor has run with ``--limit gpu=1``: such a run could never be leased.
``python -m examples.tenants`` does the same in one process with ``Runtime``
and prints the order the steps were leased in: small-co's two runs are
served among big-co's first ones, not after all six.
"""

from __future__ import annotations

import asyncio

from journaled import Step, StepError, Succeed

SIZE = 48  # pixels per side of a tile
DEPTH = 200  # iterations per pixel


async def render(step: Step) -> Succeed:
    """The tile at offset INPUT (an int) along the real axis: its count of inside points."""
    try:
        shift = int(step.payload or b"0") / 100
    except ValueError:
        raise StepError.permanent(f"input must be an integer, got {step.payload[:40]!r}") \
            from None
    inside = 0
    for row in range(SIZE):
        y = -1.0 + 2.0 * row / SIZE
        for col in range(SIZE):
            c = complex(-2.0 + shift + 2.5 * col / SIZE, y)
            z = 0j
            for _ in range(DEPTH):
                z = z * z + c
                if abs(z) > 2.0:
                    break
            else:
                inside += 1
        await asyncio.sleep(0)  # a cancel lands here, between rows
    return Succeed(f"tile {step.payload.decode()}: {inside} of {SIZE * SIZE} inside".encode())


def main() -> None:
    import tempfile

    from journaled import Runtime
    from journaled.records import Leased
    from journaled.replay import records

    with tempfile.TemporaryDirectory() as tmp:
        with Runtime(tmp, render, workers=2, limits={"gpu": 1}) as rt:
            ids = [rt.submit(str(i).encode(), run_id=f"big-{i}", key="big-co",
                             resources={"gpu": 1}) for i in range(6)]
            ids += [rt.submit(str(i).encode(), run_id=f"small-{i}", key="small-co",
                              resources={"gpu": 1}) for i in (98, 99)]
            for rid in ids:
                print(rid, (rt.wait(rid, timeout=120).result or b"").decode())
        order = [rec.run_id for _, _, rec in records(f"{tmp}/journal") if type(rec) is Leased]
        print("leased in this order:", " ".join(order))


if __name__ == "__main__":
    main()
