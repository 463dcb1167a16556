"""Human approval: a run parks until someone says yes or no, or the wait times out.

Step 0 prepares the request (its input, e.g. ``deploy v2 to prod``) and returns
``ContinueOnSignal(payload, key="approve", timeout=...)``: the run is parked,
holding no worker, until ``journaled signal RUN_ID approve yes`` (or
``Client.signal(run_id, "approve", b"yes")``) arrives. Step 1 reads
``step.signal``: ``yes`` succeeds, ``no`` fails, a timeout fails. A signal sent
before the run parks is kept durably and delivered when it does, and a
supervisor restart in between loses neither the wait nor the answer.

The timeout is the ``timeout`` header in seconds (default 86400). Run it (from
the repository root), in two terminals::

    journaled run examples.approval:runner
    RID=$(journaled submit "deploy v2 to prod" -H timeout=600)
    journaled status $RID        # run ...: waiting / parked: on signal 'approve', times out ...
    journaled signal $RID approve yes     # signal 'approve' sent to run ...
    journaled wait $RID                   # ... succeeded approved: deploy v2 to prod
"""

from __future__ import annotations

from journaled import Cancel, ContinueOnSignal, Fail, Step, StepError, Succeed

KEY = "approve"
DEFAULT_TIMEOUT = 86400.0


def runner(step: Step) -> ContinueOnSignal | Succeed | Fail | Cancel:
    """Step 0 asks for approval; step 1 acts on the answer."""
    if step.cancel_token.is_cancelled():
        return Cancel("cooperative")
    if step.step_number == 0:
        request = step.payload.strip()
        if not request:
            return Fail("empty request: submit what needs approving")
        try:
            timeout = float(step.headers.get("timeout", DEFAULT_TIMEOUT))
        except ValueError:
            return Fail(f"timeout header must be seconds, got {step.headers['timeout']!r}")
        return ContinueOnSignal(request, key=KEY, timeout=timeout)
    if step.step_number == 1:
        sig = step.signal
        if sig is None:
            raise StepError.permanent("step 1 must be woken by the 'approve' signal")
        if sig.timed_out:
            return Fail(f"nobody approved {step.payload.decode(errors='replace')!r} in time")
        answer = sig.data.strip().lower()
        if answer in (b"yes", b"y", b"approve", b"approved"):
            return Succeed(b"approved: " + step.payload)
        if answer in (b"no", b"n", b"reject", b"rejected"):
            return Fail(f"rejected: {step.payload.decode(errors='replace')}")
        return Fail(f"unclear answer {sig.data[:40]!r}: send 'yes' or 'no'")
    raise StepError.permanent(f"the approval workflow has 2 steps, got step {step.step_number}")
