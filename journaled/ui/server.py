"""``journaled ui``: the dashboard's HTTP side (stdlib ``ThreadingHTTPServer``).

It reads through one ``Client``, like the CLI (a lock around it: requests
are few and a client folds the journal incrementally), and acts through
the same calls the CLI's ``cancel``/``retry`` (and ``pause``/``resume`` where
the client has them) make, so every button press is journaled like a
command. With no supervisor running the pages still render, from the
journal and the archive, under a read-only banner, and the buttons are
disabled (a POST then answers 409): an action that would wait in the inbox
unseen is easy to forget about during an incident.

Safety for a localhost tool: every POST carries a per-process random token
(a page from another origin cannot read it, so it cannot forge a form);
the body is capped; a redirect target must be a local path. A bad URL is a
404 page, a bad parameter a 400 page, an internal error a 500 page with one
line (logged); never a traceback.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from ..client import Client
from ..errors import InvalidRunId, JournaledError, RunNotFound
from ..live import health, read_status
from ..metrics import read_counts
from . import pages

log = logging.getLogger("journaled.ui")

PAGE_SIZE = 50
SEARCH_CAP = 5000  # runs scanned for an id search
CHART_CAP = 20_000  # finished runs read for the last hour's charts
MAX_BODY = 16 << 10


class BadRequest(Exception):
    """A parameter the page cannot use: a 400 page with this message."""


class NotFound(Exception):
    """A 404 page with this message."""


class Dashboard:
    """What the pages need from a state directory, one request at a time."""

    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir)
        self.client = Client(self.state_dir)
        self.token = secrets.token_urlsafe(24)
        self.lock = threading.Lock()
        self.can_pause = hasattr(Client, "pause")

    # ------------------------------------------------------------- reads

    def supervisor(self) -> tuple[bool, str]:
        """``(writable, banner HTML)``: writable only while a supervisor runs and answers."""
        h = health(self.state_dir)
        if h.state == "running":
            return True, ""
        return False, (f"<b>Read-only</b>: {pages.esc(h.message)}. The pages show what the "
                       "journal and the archive hold; start <code>journaled run</code> to "
                       "act on runs.")

    def counts(self) -> dict[str, int]:
        live = read_status(self.state_dir)
        if live is not None and live.counts:
            counts = dict(live.counts)
            counts["pending"] = counts.get("pending", 0) + read_counts(self.client)[1]
            return counts
        return read_counts(self.client)[0]

    def overview(self) -> str:
        now = time.time()
        writable, banner = self.supervisor()
        counts = self.counts()
        recent = self.client.runs(since=now - 3600, limit=CHART_CAP)
        h = health(self.state_dir)
        pause = ""
        if self.can_pause:
            pause = ('<p>Dispatch: '
                     + pages.button("/pause", "pause all", self.token, writable,
                                    fields={"back": "/"}, cls="pause")
                     + " " + pages.button("/resume", "resume all", self.token, writable,
                                          fields={"back": "/"}, cls="resume") + "</p>")
        body = pages.overview(counts, recent, now, h.message, pause)
        return pages.layout("Overview", body, active="/", banner=banner)

    def runs(self, q: dict[str, list[str]]) -> str:
        status = _one(q, "status")
        if status and status not in pages.STATUSES:
            raise BadRequest(f"unknown status {status!r}: use one of "
                             f"{', '.join(pages.STATUSES)}")
        text = _one(q, "q").strip()
        raw_page = _one(q, "page") or "1"
        if not raw_page.isdigit() or int(raw_page) < 1 or int(raw_page) > 100_000:
            raise BadRequest(f"page must be a number from 1, not {raw_page!r}")
        page = int(raw_page)
        c = self.client
        if text:
            rows = [o for o in c.runs(status or None, limit=SEARCH_CAP) if text in o.run_id]
            try:  # an exact id is found even past the scan's cap
                exact = c.status(text)
                if all(o.run_id != exact.run_id for o in rows) and \
                        (not status or exact.status.value == status):
                    rows.insert(0, exact)
            except (JournaledError, ValueError):
                pass
            window = rows[(page - 1) * PAGE_SIZE: page * PAGE_SIZE + 1]
        else:
            window = c.runs(status or None, limit=page * PAGE_SIZE + 1)[(page - 1) * PAGE_SIZE:]
        body = pages.runs_table(window[:PAGE_SIZE], status, text, page,
                                len(window) > PAGE_SIZE)
        return pages.layout("Runs", body, active="/runs", banner=self.supervisor()[1])

    def run(self, run_id: str, flash: str = "", err: bool = False) -> str:
        c = self.client
        try:
            out = c._outcome(run_id)
        except (RunNotFound, InvalidRunId) as e:
            raise NotFound(f"no run {run_id!r}") from e
        run = c._run(run_id)
        attempts = c.history(run_id)
        writable, banner = self.supervisor()
        values: dict[str, str] = {}
        if run is not None:
            values["input"] = self._value(run.input)
            if not out.status.terminal and run.step > 0:
                values[f"payload of step {run.step}"] = self._value(run.payload)
        if out.status.terminal and out.status.value == "succeeded":
            values["result"] = self._value(out.result)
        url = pages.run_url(run_id)
        actions = []
        if not out.status.terminal:
            actions.append(pages.button(url + "/cancel", "cancel", self.token, writable,
                                        cls="cancel"))
        if run is not None and run.dead:
            actions.append(pages.button(url + "/retry", "retry", self.token, writable,
                                        cls="retry"))
        key = getattr(run, "key", "") if run is not None else ""
        if self.can_pause and key:
            for what in ("pause", "resume"):
                actions.append(pages.button(f"/{what}", f"{what} key {key}", self.token,
                                            writable, fields={"key": key, "back": url},
                                            cls=what))
        body = pages.run_page(out, run, attempts, values, " ".join(actions))
        return pages.layout(f"Run {run_id}", body, active="/runs", banner=banner)

    def _value(self, value: Any) -> str:
        if value is None:
            return pages.preview(None)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return pages.preview(bytes(value))
        try:  # a blob: read only its start
            with self.client.blobs.open_value(value) as f:
                head = f.read(pages.PREVIEW_BYTES)
        except OSError:
            return '<span class="muted">stored as a blob that is no longer kept</span>'
        return pages.preview(head, getattr(value, "size", len(head)))

    def dead(self) -> str:
        writable, banner = self.supervisor()
        body = pages.dead_page(self.client.dead(limit=500), self.token, writable)
        return pages.layout("Dead letters", body, active="/dead", banner=banner)

    # ------------------------------------------------------------ writes

    def act(self, path: str, form: dict[str, list[str]]) -> tuple[str, str, bool]:
        """Do one POST; returns ``(where to go back, message, is_error)``."""
        parts = path.strip("/").split("/")
        back = _one(form, "back")
        if not back.startswith("/") or back.startswith("//") or "\\" in back:
            back = ""
        c = self.client
        if len(parts) == 3 and parts[0] == "runs" and parts[2] in ("cancel", "retry"):
            run_id = unquote(parts[1])
            back = back or pages.run_url(run_id)
            try:
                if parts[2] == "cancel":
                    was = c.cancel(run_id, reason="cancelled from the dashboard")
                    if was.status.terminal:
                        return back, f"run {run_id} had already {was.status.value}", True
                    return back, f"cancel of {run_id} requested", False
                c.retry(run_id)
                return back, f"run {run_id} redriven: its dead step runs again", False
            except JournaledError as e:
                return back, str(e), True
        if len(parts) == 1 and parts[0] in ("pause", "resume") and self.can_pause:
            key = _one(form, "key") or None
            try:
                getattr(c, parts[0])(key=key)
            except (JournaledError, ValueError) as e:
                return back or "/", str(e), True
            what = f"key {key}" if key else "all dispatch"
            return back or "/", f"{parts[0]}d {what}", False
        raise NotFound(f"nothing to post to at {path}")


def _one(q: dict[str, list[str]], name: str) -> str:
    vals = q.get(name) or [""]
    return vals[0]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "journaled-ui"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        url = urlsplit(self.path)
        q = parse_qs(url.query, keep_blank_values=True)
        d = self.server.dashboard
        path = url.path
        try:
            with d.lock:
                if path == "/":
                    html = d.overview()
                elif path in ("/runs", "/runs/"):
                    html = d.runs(q)
                elif path.startswith("/runs/") and path.count("/") == 2:
                    html = d.run(unquote(path[len("/runs/"):]))
                elif path == "/dead":
                    html = d.dead()
                elif path == "/healthz":
                    self._send(200, b"ok\n", "text/plain; charset=utf-8")
                    return
                else:
                    raise NotFound(f"no page at {unquote(path)}")
            html = _with_flash(html, q)
            self._send(200, html.encode())
        except BadRequest as e:
            self._send(400, pages.error_page(400, str(e)).encode())
        except NotFound as e:
            self._send(404, pages.error_page(404, str(e)).encode())
        except Exception as e:  # noqa: BLE001 - one line for the user, the details logged
            log.exception("dashboard page %s failed", path)
            self._send(500, pages.error_page(500, f"{type(e).__name__}: {e}").encode())

    def do_POST(self) -> None:  # noqa: N802
        d = self.server.dashboard
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if n < 0 or n > MAX_BODY:
            self._send(400, pages.error_page(400, "bad or oversized form").encode())
            return
        form = parse_qs(self.rfile.read(n).decode("utf-8", "replace"), keep_blank_values=True)
        if not hmac.compare_digest(_one(form, "csrf").encode(), d.token.encode()):
            self._send(403, pages.error_page(403, "stale or missing form token: reload the "
                                             "page and try again").encode())
            return
        path = urlsplit(self.path).path
        try:
            with d.lock:
                writable, _ = d.supervisor()
                if not writable:
                    self._send(409, pages.error_page(
                        409, "read-only: no supervisor is running, so nothing was done").encode())
                    return
                back, msg, err = d.act(path, form)
        except NotFound as e:
            self._send(404, pages.error_page(404, str(e)).encode())
            return
        except Exception as e:  # noqa: BLE001
            log.exception("dashboard action %s failed", path)
            self._send(500, pages.error_page(500, f"{type(e).__name__}: {e}").encode())
            return
        sep = "&" if "?" in back else "?"
        where = back + sep + urlencode({"msg": msg, **({"err": "1"} if err else {})})
        self.send_response(303)
        self.send_header("Location", quote(where, safe="/?&=%:@.-_~+"))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self) -> None:  # noqa: N802
        self._send(405, pages.error_page(405, "only GET and POST here").encode())

    do_DELETE = do_PATCH = do_PUT

    def _send(self, code: int, body: bytes, ctype: str = "text/html; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy",
                         "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
                         "form-action 'self'; frame-ancestors 'none'")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def _with_flash(html: str, q: dict[str, list[str]]) -> str:
    msg = _one(q, "msg")
    if not msg:
        return html
    cls = "flash err" if _one(q, "err") else "flash"
    note = f'<div class="{cls}" id="flash">{pages.esc(msg[:500])}</div>'
    return html.replace("<main>", "<main>" + note, 1)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    dashboard: Dashboard


def make_server(state_dir: str | Path, host: str = "127.0.0.1", port: int = 0) -> _Server:
    """Bound and ready; ``serve_forever()`` it (``server_address`` has the port)."""
    srv = _Server((host, port), _Handler)
    srv.dashboard = Dashboard(state_dir)
    return srv
