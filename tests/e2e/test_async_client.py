"""``AsyncClient``: the same answers as ``Client`` from asyncio code, one connection for all.

Every call runs over the socket and over the inbox (``use_socket=False``);
many concurrent coroutines share one connection; a connection lost under
a ``wait`` carries on through the journal; the ASGI example serves POST
/runs and GET /runs/{id} when driven by raw ASGI calls.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from examples.asgi_app import App
from journaled import AsyncClient, RunStatus
from journaled.client import Client
from journaled.errors import RunConflict, RunNotDead, RunNotFound, RunNotLive
from journaled.records import Submitted
from tests.apps import door_apps

from .helpers import journal_records

DOORS = ["socket", "inbox"]


@pytest.fixture
def sup(runtime):
    return runtime(door_apps.runner)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("door", DOORS)
def test_every_call_answers_as_the_client_does(sup, state_dir, door):
    async def main() -> None:
        async with AsyncClient(state_dir, use_socket=(door == "socket")) as c:
            rid = await c.submit(b"hi", run_id=f"a-{door}")
            if door == "socket":
                assert rid in [r.run_id for r in journal_records(state_dir)
                               if type(r) is Submitted], "durable in the journal on return"
            out = await c.wait(rid, timeout=20)
            assert (out.status, out.result) == (RunStatus.SUCCEEDED, b"hi")
            assert await c.submit(b"hi", run_id=rid) == rid
            with pytest.raises(RunConflict):
                await c.submit(b"other", run_id=rid)
            ids = await c.submit_many([b"1", b"2", b"3"])
            got = {o.run_id: o.result async for o in c.outcomes(ids, timeout=20)}
            assert got == dict(zip(ids, [b"1", b"2", b"3"], strict=True))
            parked = await c.submit(b"", {"app": "park"})
            await c.signal(parked, "go", b"now")
            assert (await c.wait(parked, timeout=20)).result == b"got:now"
            with pytest.raises(RunNotLive):
                await c.signal(parked, "go")
            with pytest.raises(RunNotDead):
                await c.retry(parked)
            slow = await c.submit(b"", {"app": "sleep", "seconds": "30"})
            with pytest.raises(TimeoutError) as info:
                await c.wait(slow, timeout=0.3)
            assert type(info.value) is TimeoutError
            was = await c.cancel(slow, "stop")
            assert not was.status.terminal
            assert (await c.wait(slow, timeout=20)).status is RunStatus.CANCELLED
            with pytest.raises(RunNotFound):
                await c.wait("no-such-run", timeout=1)
            with pytest.raises(RunNotFound):
                await c.cancel("no-such-run")
    run(main())


@pytest.mark.timeout(120)
def test_many_concurrent_coroutines_share_one_connection(sup, state_dir):
    async def main() -> None:
        async with AsyncClient(state_dir) as c:
            async def one(i: int) -> bytes:
                rid = await c.submit(str(i).encode())
                return (await c.wait(rid, timeout=60)).result or b""
            got = await asyncio.gather(*[one(i) for i in range(300)])
            assert got == [str(i).encode() for i in range(300)]
            assert c._writer is not None, "the socket must have served them"
    run(main())


@pytest.mark.timeout(60)
def test_with_no_supervisor_it_queues_in_the_inbox(state_dir, runtime):
    async def submit() -> str:
        async with AsyncClient(state_dir) as c:
            rid = await c.submit(b"early", run_id="early")
            assert (await c.status(rid)).status is RunStatus.PENDING
            return rid
    rid = run(submit())
    runtime(door_apps.runner)

    async def finish() -> None:
        async with AsyncClient(state_dir) as c:
            assert (await c.wait(rid, timeout=20)).result == b"early"
    run(finish())


@pytest.mark.timeout(90)
def test_a_wait_whose_connection_is_lost_carries_on_through_the_journal(runtime, state_dir):
    rt = runtime(door_apps.runner)
    rid = Client(state_dir).submit(b"", {"app": "park"}, run_id="parked")

    async def main() -> None:
        async with AsyncClient(state_dir) as c:
            waiting = asyncio.ensure_future(c.wait(rid, timeout=60))
            await asyncio.sleep(0.5)
            assert c._writer is not None and not waiting.done()
            await asyncio.to_thread(rt.close, False)  # the socket closes under the wait
            await asyncio.to_thread(runtime, door_apps.runner)
            await asyncio.to_thread(Client(state_dir).signal, rid, "go", b"late")
            out = await waiting
            assert out.result == b"got:late"
    run(main())


# ------------------------------------------------------------- the ASGI example


async def call(app: App, method: str, path: str, body: bytes = b"", query: bytes = b""
               ) -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "method": method, "path": path, "query_string": query,
             "headers": []}
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)
    await app(scope, receive, send)
    return sent[0]["status"], json.loads(sent[1]["body"])


@pytest.mark.timeout(60)
def test_the_asgi_example_submits_and_reports_runs(sup, state_dir):
    async def main() -> None:
        app = App(str(state_dir))
        status, doc = await call(app, "POST", "/runs", b"web input", b"run_id=web-1")
        assert (status, doc) == (201, {"run_id": "web-1"})
        status, doc = await call(app, "GET", "/runs/web-1", query=b"wait=20")
        assert status == 200 and doc["status"] == "succeeded" and doc["result"] == "web input"
        assert (await call(app, "POST", "/runs", b"other", b"run_id=web-1"))[0] == 409
        assert (await call(app, "POST", "/runs", b"x", b"run_id=bad%20id"))[0] == 400
        assert (await call(app, "GET", "/runs/nope"))[0] == 404
        fresh = (await call(app, "POST", "/runs", b"", b""))[1]["run_id"]
        t0 = time.monotonic()
        status, doc = await call(app, "GET", f"/runs/{fresh}", query=b"wait=20")
        assert status == 200 and time.monotonic() - t0 < 20
        assert (await call(app, "GET", "/nowhere"))[0] == 404
        await app.client.close()
    run(main())


@pytest.mark.timeout(60)
def test_one_client_can_be_used_from_one_event_loop_after_another(sup, state_dir):
    c = AsyncClient(state_dir)

    async def one(data: bytes) -> bytes:
        return (await c.wait(await c.submit(data), timeout=20)).result or b""
    assert run(one(b"first loop")) == b"first loop"
    assert run(one(b"second loop")) == b"second loop"
    run(c.close())
