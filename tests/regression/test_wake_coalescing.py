"""Coalesced wake-ups lose none: many threads and socket clients submitting at once all finish.

The loop's wake pipe gets one byte while a wake is pending. If the flag were
cleared before the pipe is emptied, a waker could have its byte read and
leave the flag set, and every later wake-up would be skipped: the loop
would sleep on (or spin past) queued work. This drives many concurrent
callers through both entry points long enough to hit that window.
"""

from __future__ import annotations

import threading

import pytest

from journaled.client import Client


@pytest.mark.timeout(300)
def test_concurrent_submitters_on_both_doors_all_get_answers(runtime, state_dir):
    rt = runtime(workers=2)
    errors: list[BaseException] = []
    done: list[int] = []

    def in_process(n: int) -> None:
        try:
            for _ in range(n):
                rt.wait(rt.submit(b""), 60)
            done.append(n)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def over_socket(n: int) -> None:
        try:
            c = Client(state_dir)
            assert c._door() is not None
            for _ in range(n):
                c.wait(c.submit(b""), 60)
            done.append(n)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=in_process, args=(150,)) for _ in range(12)]
    ts += [threading.Thread(target=over_socket, args=(150,)) for _ in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(240)
    assert not errors, errors[0]
    assert not any(t.is_alive() for t in ts), "a caller never got its answer (a lost wake-up?)"
    assert sum(done) == 18 * 150
