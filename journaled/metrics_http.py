"""Serving the supervisor's metrics: the loop's sampling hook and the ``/metrics`` server.

``publish(sup, mono)`` is called on the loop thread once per turn; it does
nothing until a gauge sample is due (once a second), then samples and
writes ``STATE/metrics.json``. ``MetricsServer`` answers scrapes on its own
thread (stdlib ``ThreadingHTTPServer``): it renders from the counters and
the last gauge sample, never taking the supervisor's state lock, and reads
the archive gauges from ``archive.sqlite3`` itself.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .archive import CachedReader
from .metrics import archive_gauges, write_sample
from .metrics_text import CONTENT_TYPE, render

log = logging.getLogger("journaled.metrics")


def publish(sup: Any, mono: float) -> None:
    """Sample the gauges and write ``metrics.json`` when due (the loop thread, lock held)."""
    m = sup.metrics
    if not m.gauges_due(mono):
        return
    pool = sup.pool
    workers = pool.workers if pool is not None else []
    busy = sum(1 for w in workers if w.outstanding)
    counts = sup._counts or sup.status_counts()
    m.sample_gauges(mono, sup.state, counts, len(workers), busy, sup.compactions,
                    sup.journal.size_bytes)
    if m.write_due(mono):
        write_sample(sup.state_dir, m.sample(syncs=sup.journal.syncs))


def final_sample(sup: Any) -> None:
    """At close: the counters as the supervisor stops (``metrics --once`` shows them)."""
    write_sample(sup.state_dir, sup.metrics.sample(syncs=sup.journal.syncs))


def scrape_text(sup: Any, reader: CachedReader | None = None) -> str:
    """The scrape as text; safe on any thread (copies counters, takes no loop lock)."""
    arch = archive_gauges(Path(sup.state_dir), reader)
    return render(sup.metrics.sample(arch, syncs=sup.journal.syncs))


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.path.split("?", 1)[0]
        if path not in ("/metrics", "/metrics/"):
            self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics\n")
            return
        try:
            body = scrape_text(self.server.sup, self.server.reader).encode()
        except Exception as e:  # noqa: BLE001 - a scrape fails alone, never the supervisor
            log.warning("metrics scrape failed: %s", e)
            self._send(500, "text/plain; charset=utf-8", f"scrape failed: {e}\n".encode())
            return
        self._send(200, CONTENT_TYPE, body)

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would flood the supervisor's stderr


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    sup: Any
    reader: CachedReader


class MetricsServer:
    """``GET /metrics`` for one supervisor. ``bind()`` first (errors before the
    supervisor starts), then ``start()`` once it runs; ``close()`` at the end."""

    def __init__(self, sup: Any, port: int, host: str = "127.0.0.1") -> None:
        self.sup = sup
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def bind(self) -> None:
        """Raises ``OSError`` when the address is taken or not ours."""
        srv = _Server((self.host, self.port), _Handler, bind_and_activate=True)
        srv.sup = self.sup
        srv.reader = CachedReader(self.sup.state_dir)
        self._server = srv
        self.port = srv.server_address[1]

    def start(self) -> None:
        if self._server is None:
            self.bind()
        assert self._server is not None
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="journaled-metrics")
        self._thread.start()

    def close(self) -> None:
        srv = self._server
        if srv is None:
            return
        if self._thread is not None:
            srv.shutdown()
        srv.server_close()
        srv.reader.close()
        self._server = None
