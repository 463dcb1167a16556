"""``journaled run``: the supervisor in the foreground, with its start-up and
stop lines on stderr and the drain it does on SIGINT/SIGTERM.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from .. import __version__
from . import fail, handles_errors, main, state_option


@main.command()
@click.argument("targets", nargs=-1, required=True, metavar="APP...")
@click.option("-w", "--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: CPU count; on Dask: the cluster's threads).")
@click.option("--executor", default="local", show_default=True, metavar="local|dask://HOST:PORT",
              help="Where steps run: local worker processes, or a Dask distributed cluster.")
@click.option("--max-attempts", "--default-max-attempts", type=click.IntRange(min=1), default=3,
              show_default=True,
              help="Failures a step may have before it is dead-lettered (a run's own wins).")
@click.option("--max-abandons", type=click.IntRange(min=1), default=10, show_default=True,
              help="Supervisor crashes a step may survive before it is dead-lettered.")
@click.option("--step-timeout", "--default-step-timeout", type=click.FloatRange(min=0), default=0,
              show_default=True,
              help="Seconds a step may run before its worker is killed (0: no limit; a run's "
                   "own wins).")
@click.option("--replay-outputs/--no-replay-outputs", default=True, show_default=True,
              help="Accepted for Taquba parity; always on: a journaled outcome is never re-run.")
@click.option("--cancel-grace", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Seconds a cancelled step may keep running before it is killed.")
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="On SIGINT/SIGTERM, seconds in-flight steps may take to finish.")
@click.option("--reload", is_flag=True,
              help="Restart workers (not the supervisor) when a .py file under the current "
                   "directory changes; running steps finish first.")
@click.option("--until-idle", is_flag=True,
              help="Exit 0 once no run is pending, running or delayed.")
@click.option("--backoff", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="First retry delay in seconds; doubles per failure, with jitter.")
@click.option("--on-terminal", "hook", metavar="MODULE:FUNC",
              help="Call FUNC(outcome) once a run's outcome is durable (at least once per run).")
@click.option("--retention", type=click.FloatRange(min=0), default=7 * 86400.0,
              show_default=True, help="Seconds finished runs stay queryable.")
@click.option("--blob-threshold", type=click.IntRange(min=0), default=64 << 10,
              show_default=True, metavar="BYTES",
              help="Payloads, results and memo values longer than this are stored once as "
                   "files under STATE/blobs/ (the journal keeps their hash and size); "
                   "workers read and write them directly.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one JSON object per log line, for log shippers.")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), default=None,
              metavar="PORT",
              help="Serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port, "
                   "printed at start).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="Address the metrics server binds to (0.0.0.0: every interface).")
@click.option("--limit", "limits", multiple=True, metavar="NAME=N",
              help="Resource limit (repeatable): leased steps together hold at most N of "
                   "NAME (runs name theirs at submit: --resource gpu=1). A resource with no "
                   "--limit is unlimited; a run asking for more than N is refused at submit.")
@click.option("--key-concurrency", type=click.IntRange(min=0), default=0, show_default=True,
              help="At most N leased steps per run key (submit --key K; 0: no limit). "
                   "Ready runs of different keys take turns either way.")
@click.option("--rate", "rates", multiple=True, metavar="KEY=N/s",
              help="Steps per second a run key may start (repeatable; N/s, N/m or N/h; "
                   "KEY '*' is every key without its own rate, e.g. --rate '*=5/s').")
@click.option("--threads-per-worker", type=click.IntRange(min=0), default=1, show_default=True,
              help="BLAS/OpenMP threads per worker (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, "
                   "MKL_NUM_THREADS, NUMEXPR_NUM_THREADS, VECLIB_MAXIMUM_THREADS), so N workers "
                   "never run N x N threads; 0, or any of them set in the environment: "
                   "left alone.")
@click.option("--max-steps-per-worker", type=click.IntRange(min=0), default=0, show_default=True,
              help="Replace a worker after N steps (between steps; 0: never). For leaky code.")
@click.option("--max-worker-rss", type=click.FloatRange(min=0), default=0, show_default=True,
              metavar="MB",
              help="A worker over MB resident memory is killed mid-step (the step gets a counted "
                   "attempt of kind 'oom' with its peak RSS) or replaced between steps (0: no "
                   "limit). Checked about every 100 ms.")
@click.option("--pin-workers", is_flag=True,
              help="Pin each worker to one CPU (round-robin over the CPUs this process may use).")
@click.option("-v", "--verbose", is_flag=True, help="Log every terminal run.")
@state_option
@handles_errors
def run(targets: tuple[str, ...], workers: int | None, executor: str, max_attempts: int,
        max_abandons: int, step_timeout: float, replay_outputs: bool, cancel_grace: float,
        drain_timeout: float, reload: bool, until_idle: bool, backoff: float, hook: str | None,
        retention: float, blob_threshold: int, metrics_port: int | None, metrics_host: str,
        log_format: str, limits: tuple[str, ...], key_concurrency: int,
        rates: tuple[str, ...], threads_per_worker: int, max_steps_per_worker: int,
        max_worker_rss: float, pin_workers: bool, verbose: bool, state: Path) -> None:
    """Run the supervisor for APP (``module:function``) in the foreground.

    APP is imported from the current directory, like ``uvicorn app:app``; the
    function is called once per step in a worker process.

    \b
    Several runners, one state directory (pick one per run with
    'journaled submit --runner NAME'):
      journaled run app:images app:arrays     runners "images" and "arrays"
      journaled run thumbs=app:images         served under the name "thumbs"
      journaled run app:app                   every runner of a journaled.App
    A run submitted without --runner goes to the runner named "default" if
    there is one, else to the first one given.

    Ctrl-C (or SIGTERM)
    stops leasing and lets running steps finish for --drain-timeout; a second
    Ctrl-C stops at once. Nothing is lost either way.

    \b
    Exit codes: 0 stopped cleanly; 1 damaged journal or storage failure;
    2 bad APP, bad options, or the state directory is locked by another supervisor.
    """
    from .. import failpoints
    from ..app import load_table, spec_modules
    from ..console import Drain, JsonLog, StatusLine
    from ..pool import load_import_string
    from ..pool.hygiene import Hygiene
    from ..quotas import make_quotas, parse_pair, parse_rate
    from ..state import Policy
    from ..supervisor import Supervisor

    if failpoints.ENV_ERROR is not None:
        fail(failpoints.ENV_ERROR)
    try:
        quotas = make_quotas(dict(parse_pair("--limit", t) for t in limits), key_concurrency,
                             dict(parse_rate(t) for t in rates))
    except ValueError as e:
        fail(str(e))

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLog() if log_format == "json"
                         else logging.Formatter("journaled: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    on_terminal = None
    app = " ".join(targets)
    for spec in filter(None, (*targets, hook)):
        try:
            obj = load_import_string(spec) if spec is hook else load_table(spec)
        except (ImportError, ValueError) as e:
            fail(f"cannot load {spec!r}: {e}")
        except Exception as e:  # noqa: BLE001 - the user's module failed while importing
            fail(f"importing {spec!r} raised {type(e).__name__}: {e}")
        if spec is hook:
            on_terminal = obj
    try:
        table = load_table(app)
    except ValueError as e:  # a name given twice across the targets
        fail(str(e))
    if executor != "local" and not executor.startswith("dask://"):
        fail(f"unknown executor {executor!r}: use 'local' or 'dask://HOST:PORT'")
    if executor.startswith("dask://"):
        try:
            import distributed  # noqa: F401
        except ImportError:
            fail("the Dask executor needs the 'dask' extra: pip install 'journaled[dask]'")
    if workers is None:
        workers = 0 if executor != "local" else (os.cpu_count() or 2)
    policy = Policy(max_attempts=max_attempts, max_abandons=max_abandons,
                    step_timeout=step_timeout, backoff_base=backoff)
    sup = Supervisor(state, app, workers=workers, policy=policy, cancel_grace=cancel_grace,
                     drain_timeout=drain_timeout,
                     # Preloading in the forkserver would pin the old code across reloads.
                     preload=None if reload else spec_modules(app),
                     import_string=app, on_terminal=on_terminal, retention=retention,
                     reload_dir=os.getcwd() if reload else None, executor=executor,
                     blob_threshold=blob_threshold, quotas=quotas,
                     hygiene=Hygiene(threads_per_worker, max_steps_per_worker, max_worker_rss,
                                     pin_workers))

    metrics = None
    if metrics_port is not None:
        from ..metrics_http import MetricsServer

        metrics = MetricsServer(sup, metrics_port, metrics_host)
        try:
            metrics.bind()  # before the supervisor starts: a taken port changes nothing
        except OSError as e:
            fail(f"cannot serve metrics on {metrics_host}:{metrics_port}: {e.strerror or e}")
    drain = Drain(sup)

    def on_signal(signum: int, frame: Any) -> None:
        # Only flags, a wake-up and a look at the heads here; a thread says what happens.
        drain.notice(signum)
        sup.request_stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        sup.start()
    except ConnectionError as e:
        if metrics is not None:
            metrics.close()
        fail(str(e))
    workers = len(sup.pool.workers) if sup.pool is not None else workers
    # This process is the supervisor: what replay built lives as long as it does,
    # so keep the cyclic collector from rescanning it on every full collection.
    gc.freeze()
    # Every run allocates a few tracked objects that live until it is archived: a
    # young generation of 5,000 (not 700) collects 7x less often, ~0.6 us a run less.
    gc.set_threshold(5000, 10, 10)
    counts = sup.state.status_counts()
    click.echo(
        f"journaled {__version__}: supervising {app}"
        + (f" (runners {', '.join(table.names)}; default {table.default})"
           if len(table.names) > 1 else "")
        + f" with {workers} "
        f"worker{'s' if workers != 1 else ''} on {state} "
        f"(journal {sup.journal.size_bytes / 1e6:.1f} MB, {len(sup.state.runs)} runs known, "
        f"{sup.recovered_runs} resumed, {counts['pending']} pending)", err=True)
    if metrics is not None:
        metrics.start()
        click.echo(f"journaled: metrics at http://{metrics.host}:{metrics.port}/metrics",
                   err=True)
    ticker = None
    if sys.stderr.isatty() and log_format == "text":
        ticker = StatusLine(sup)
        ticker.start()
    try:
        sup.run(until_idle=until_idle)
    finally:
        if ticker is not None:
            ticker.stop()
        if metrics is not None:
            metrics.close()
        drain.finish()
    counts = sup.all_counts()  # archived runs too
    click.echo(f"journaled: stopped ({counts['succeeded']} succeeded, {counts['failed']} failed, "
               f"{counts['cancelled']} cancelled, "
               f"{counts['pending'] + counts['running'] + counts['waiting']} unfinished)",
               err=True)
