"""``journaled metrics``: the Prometheus scrape, printed from the state directory.

With a supervisor running it reads the sample the supervisor writes to
``STATE/metrics.json`` once a second (no port to know, nothing asked of the
loop) and adds the archive gauges; with none running it folds the journal
and reads the archive itself, and the counters are the last supervisor's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from . import handles_errors, json_option, main, state_option

if TYPE_CHECKING:
    from ..metrics import Sample

FRESH = 5.0  # seconds: an older metrics.json from a live pid means a hung loop: recompute


def current_sample(state: Path) -> Sample:
    """The supervisor's own sample when one runs and publishes, else one read offline."""
    from ..live import lock_holder
    from ..metrics import archive_gauges, offline_sample, read_sample

    pid = lock_holder(state)
    if pid is not None:
        sample = read_sample(state)
        if sample is not None and sample.pid == pid and time.time() - sample.at < FRESH:
            sample.archive = archive_gauges(state)
            return sample
    return offline_sample(state)


@main.command("metrics")
@click.option("--once", is_flag=True,
              help="Print one scrape and exit (without it: one every --interval seconds).")
@click.option("--interval", type=click.FloatRange(min=0.2), default=5.0, show_default=True,
              help="Seconds between scrapes when not --once.")
@json_option
@state_option(must_exist=True)
@handles_errors
def metrics_cmd(once: bool, interval: float, as_json: bool, state: Path) -> None:
    """Print the metrics `journaled run --metrics-port` serves, from the state directory.

    Prometheus text format by default (the same lines a scrape of /metrics
    returns), or with --json one object of {"name{labels}": value}. Works
    with the supervisor down: the gauges (runs by status, ready and waiting
    depth, dead letters, archive size) come from the journal and the
    archive, the counters from the last supervisor's sample, and
    journaled_up is 0.

    \b
    Examples:
      journaled metrics --once --state /srv/jobs
      journaled metrics --once --json | jq '."journaled_ready_runs"'
    """
    from ..metrics_text import as_json as flat
    from ..metrics_text import render

    while True:
        sample = current_sample(state)
        if as_json:
            click.echo(json.dumps(flat(sample), sort_keys=True))
        else:
            click.echo(render(sample), nl=False)
        if once:
            return
        time.sleep(interval)
