"""``journaled ui``: the web dashboard, served until Ctrl-C."""

from __future__ import annotations

from pathlib import Path

import click

from . import fail, handles_errors, main, state_option


@main.command("ui")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8600, show_default=True,
              help="Port to serve on (0: any free port, printed at start).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; the dashboard can cancel runs, so keep it local or put "
                   "it behind an authenticating proxy.")
@state_option(must_exist=True)
@handles_errors
def ui_cmd(port: int, host: str, state: Path) -> None:
    """Serve the web dashboard for the state directory.

    Pages: an overview (runs by status, the last hour's throughput and
    latency), the runs table (status filter, id search, paging), one page per
    run (payload preview, headers, attempts, tracebacks, cancel), and the dead
    letters (retry). Buttons act like 'journaled cancel' / 'retry' and are
    disabled while no supervisor runs (the pages stay readable).

    \b
    Example:
      journaled ui --state /srv/jobs        # then open http://127.0.0.1:8600/
    """
    from ..ui import make_server

    try:
        srv = make_server(state, host, port)
    except OSError as e:
        fail(f"cannot serve the dashboard on {host}:{port}: {e.strerror or e}")
    bound = srv.server_address[1]
    click.echo(f"journaled: dashboard at http://{host}:{bound}/ (Ctrl-C stops it)", err=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
