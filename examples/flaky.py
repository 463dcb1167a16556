"""Example of the failure paths: ``Fail``, a transient ``StepError`` retry, ``ContinueAfter``.

An "order" goes through four steps:

0. validate: an input starting with ``bad`` ends the run ``failed`` by the
   runner's verdict (``Fail``: nothing is dead-lettered, nothing retried);
1. charge a "flaky payment service": the first delivery always raises
   ``StepError.transient``, so the supervisor retries it after a backoff
   (deterministic on ``step.attempts``, not random, so tests can count on it);
2. wait for the warehouse: ``ContinueAfter(delay=0.5)`` makes step 3 due
   half a second later, a wall-clock due time that survives restarts;
3. ship: ``Succeed(b"shipped:" + order)``.

Run it (from the repository root)::

    journaled submit order-17
    journaled submit bad-order-3
    journaled run examples.flaky:runner --until-idle
    journaled runs
"""

from __future__ import annotations

from journaled import Cancel, Continue, ContinueAfter, Fail, Step, StepError, Succeed

WAREHOUSE_DELAY = 0.5


def runner(step: Step) -> Continue | ContinueAfter | Succeed | Fail | Cancel:
    """One step of the order workflow; every step is idempotent for its payload."""
    if step.cancel_token.is_cancelled():
        return Cancel("cooperative")
    order = step.payload
    if step.step_number == 0:
        name = order.decode("utf-8", "replace").strip()
        if not name:
            return Fail("empty order id")
        if name.startswith("bad"):
            return Fail(f"order {name!r} failed validation")
        return Continue(name.encode())
    if step.step_number == 1:
        if step.attempts == 1:
            raise StepError.transient("payment service timed out (first attempt always does)")
        return Continue(order)
    if step.step_number == 2:
        return ContinueAfter(order, delay=WAREHOUSE_DELAY)
    if step.step_number == 3:
        return Succeed(b"shipped:" + order)
    raise StepError.permanent(f"the order workflow has 4 steps, got step {step.step_number}")
