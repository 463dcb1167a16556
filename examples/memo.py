"""An expensive or external sub-task, done once even when its step is retried.

Step 0 "charges a card": the external call is simulated by appending a line
to a ledger file, so you can count how often it really happened. Before the
call the step looks in ``step.memo``; a receipt recorded by an earlier
delivery of this same step means the charge already happened, so it is
skipped. ``step.memo.put`` returns only once the receipt is durable in the
journal, so a crash right after it (the ``crash`` header makes the first
delivery ``os._exit``) costs a retry of the step but never a second charge.
Step 1 "ships" and succeeds with the receipt.

Without the memo, the retried step would charge twice: delivery is
at-least-once. (One window remains, as with any external call: a crash after
the charge but before ``put`` is durable. An idempotency key, here the run
id, is how a real payment API closes it.)

The ledger is the ``ledger`` header, else ``$MEMO_LEDGER``, else
``memo-ledger.txt`` in the supervisor's working directory. Run it (from the
repository root)::

    journaled submit order-17 -H crash=1 -H ledger=/tmp/ledger.txt
    journaled run examples.memo:runner --until-idle
    journaled status RUN_ID        # step 0: worker_died, then completed
    cat /tmp/ledger.txt            # one charge
"""

from __future__ import annotations

import os

from journaled import Cancel, Continue, Fail, Step, StepError, Succeed

KEY = "charge"


def ledger_path(step: Step) -> str:
    return step.headers.get("ledger") or os.environ.get("MEMO_LEDGER") or "memo-ledger.txt"


def charge(step: Step, order: str) -> bytes:
    """The expensive, non-idempotent sub-task: one line per real charge."""
    receipt = f"receipt:{step.run_id}:{order}"
    with open(ledger_path(step), "a") as f:
        f.write(f"{receipt} attempt={step.attempts}\n")
        f.flush()
        os.fsync(f.fileno())
    return receipt.encode()


def runner(step: Step) -> Continue | Succeed | Fail | Cancel:
    """Step 0 charges once (memoized); step 1 ships."""
    if step.cancel_token.is_cancelled():
        return Cancel("cooperative")
    if step.step_number == 0:
        order = step.payload.decode("utf-8", "replace").strip()
        if not order:
            return Fail("empty order id")
        receipt = step.memo.get(KEY)
        if receipt is None:
            receipt = charge(step, order)
            step.memo.put(KEY, receipt)  # durable when it returns
        if step.headers.get("crash") == "1" and step.attempts == 1:
            os._exit(1)  # simulate a crash after the charge: the step is retried
        return Continue(receipt)
    if step.step_number == 1:
        return Succeed(b"shipped with " + step.payload)
    raise StepError.permanent(f"the memo workflow has 2 steps, got step {step.step_number}")
