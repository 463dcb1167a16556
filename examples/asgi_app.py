"""A small web front for journaled: a plain ASGI app over ``AsyncClient``.

``POST /runs`` (the body is the run's input; ``?run_id=`` makes it
idempotent) answers ``201 {"run_id": ...}`` once the submission is durable.
``GET /runs/{id}`` answers the run's status; ``?wait=SECONDS`` holds the
request until the run ends (a subscription on the supervisor's socket, no
polling). Errors are JSON with the status a client can act on: 400 for a
bad input or run id, 404 for an unknown run, 409 for a run id taken with
other input, 504 for a wait that ran out.

Any ASGI server runs it; uvicorn is the ``web`` extra (``pip install
journaled[web]``). From the repository root, in two terminals::

    journaled run examples.primes:runner
    uvicorn examples.asgi_app:app          # or: python -m examples.asgi_app
    curl -s -XPOST localhost:8000/runs -d 100000
    curl -s 'localhost:8000/runs/RUN_ID?wait=30'

The state directory is ``$JOURNALED_STATE`` (default ``.journaled``), the
same one ``journaled run`` uses.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

from journaled import AsyncClient, RunOutcome
from journaled.errors import InputTooLarge, InvalidRunId, RunConflict, RunNotFound

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MAX_BODY = 8 << 20


def outcome_json(out: RunOutcome) -> dict[str, Any]:
    doc: dict[str, Any] = {"run_id": out.run_id, "status": out.status.value, "steps": out.steps,
                           "submitted_at": out.submitted_at, "finished_at": out.finished_at}
    if out.error is not None:
        doc["error"] = out.error
    if out.result is not None:
        try:
            doc["result"] = out.result.decode()
        except UnicodeDecodeError:
            doc["result_b64"] = base64.b64encode(out.result).decode()
    return doc


class App:
    """The ASGI callable; one ``AsyncClient`` (one socket connection) for every request."""

    def __init__(self, state_dir: str | None = None) -> None:
        self.state_dir = state_dir or os.environ.get("JOURNALED_STATE", ".journaled")
        self._client: AsyncClient | None = None

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            self._client = AsyncClient(self.state_dir)
        return self._client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            status, doc = await self._route(scope, receive)
        except (InvalidRunId, InputTooLarge, TypeError, ValueError) as e:
            status, doc = 400, {"error": str(e)}
        except RunNotFound as e:
            status, doc = 404, {"error": str(e)}
        except RunConflict as e:
            status, doc = 409, {"error": str(e)}
        except TimeoutError as e:
            status, doc = 504, {"error": str(e)}
        body = json.dumps(doc).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, scope: Scope, receive: Receive) -> tuple[int, dict[str, Any]]:
        method, path = scope["method"], scope["path"].rstrip("/")
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        if path == "/runs" and method == "POST":
            data = await _body(receive)
            rid = await self.client.submit(data, run_id=query.get("run_id"))
            return 201, {"run_id": rid}
        if path.startswith("/runs/") and method == "GET":
            rid = path[len("/runs/"):]
            if "wait" in query:
                out = await self.client.wait(rid, timeout=float(query["wait"]))
            else:
                out = await self.client.status(rid)
            return 200, outcome_json(out)
        return 404, {"error": f"no route {method} {path or '/'}"}


async def _body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise InputTooLarge("the request body", size, MAX_BODY)
        chunks.append(chunk)
        if not msg.get("more_body"):
            return b"".join(chunks)


app = App()

if __name__ == "__main__":
    import importlib

    uvicorn = importlib.import_module("uvicorn")  # the 'web' extra (not needed to import us)
    uvicorn.run("examples.asgi_app:app", port=int(os.environ.get("PORT", "8000")))
