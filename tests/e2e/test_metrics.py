"""Prometheus metrics: a real supervisor, real scrapes, parsed by a real parser.

`journaled run --metrics-port 0` serves /metrics; the values must match
the work the test gave it (20 runs, 3 of them dead-lettered), the text must
parse with prometheus_client's parser (strict enough to refuse a malformed
histogram), and `journaled metrics --once` must print the same from the state
directory with the supervisor up and down.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from journaled import Client
from journaled.journal import list_segments
from journaled.metrics import ArchiveGauges, Gauges, Histogram, Sample, depths
from journaled.metrics_text import render

from .helpers import cli_env, wait_for

parser = pytest.importorskip("prometheus_client.parser",
                             reason="prometheus_client (the test extra) parses the scrape")

APP = "tests.apps.ops_apps:runner"


def start(state: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "journaled.cli", "run", APP, "-w", "2", "--metrics-port", "0",
         "--state", str(state), *extra],
        env=cli_env(), stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    for line in proc.stderr:
        m = re.search(r"metrics at http://127\.0\.0\.1:(\d+)/metrics", line)
        if m:
            return proc, int(m.group(1))
        if time.monotonic() > deadline:
            break
    proc.kill()
    pytest.fail(f"no metrics line from the supervisor (exit {proc.wait()})")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    if proc.stderr is not None:
        proc.stderr.close()


def scrape(port: int) -> dict[str, float]:
    """``{name{labels sorted}: value}`` from a scrape, through prometheus_client's parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    return flatten(text)


def flatten(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for fam in parser.text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        if fam.type == "histogram":  # cumulative buckets, +Inf equal to _count
            buckets = [s for s in fam.samples if s.name.endswith("_bucket")]
            values = [s.value for s in buckets]
            assert values == sorted(values), fam.name
            assert buckets[-1].labels["le"] == "+Inf"
            assert values[-1] == out[f"{fam.name}_count"]
    return out


def metrics_once(state: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "journaled.cli", "metrics", "--once", "--json",
                          "--state", str(state)], env=cli_env(), capture_output=True,
                         text=True, timeout=60, check=True)
    return json.loads(out.stdout)


@pytest.mark.timeout(90)
def test_scrape_counts_the_work_given_and_metrics_once_reads_it_up_and_down(tmp_path):
    state = tmp_path / "state"
    client = Client(state)
    ids = [client.submit(f"ok{i}".encode()) for i in range(17)]
    ids += [client.submit(b"fail") for _ in range(3)]
    proc, port = start(state)
    try:
        for rid in ids:
            client.wait(rid, timeout=30)
        # Gauges are sampled once a second; the archive takes finished runs meanwhile.
        m = wait_for(lambda: (lambda m: m if m['journaled_runs{status=succeeded}'] == 17
                              and m["journaled_archive_rows"] == 20 else None)(scrape(port)),
                     timeout=20, what="gauges and archive to catch up")
        assert m["journaled_up"] == 1
        assert m["journaled_runs{status=failed}"] == 3
        assert m["journaled_runs{status=pending}"] == 0
        assert m["journaled_runs_submitted_total"] == 20
        assert m["journaled_runs_ended_total{status=succeeded}"] == 17
        assert m["journaled_runs_ended_total{status=failed}"] == 3
        assert m["journaled_steps_started_total"] == 20
        assert m["journaled_steps_finished_total{outcome=succeeded}"] == 17
        assert m["journaled_steps_finished_total{outcome=failed}"] == 3
        assert m["journaled_steps_failed_total{kind=error}"] == 3
        assert m["journaled_step_duration_seconds_count"] == 20
        assert m["journaled_steps_per_sync_sum"] == 20  # every outcome made durable once
        assert m["journaled_sync_latency_seconds_count"] >= 1
        assert m["journaled_dead_letters"] == 3
        assert m["journaled_dead_letters_total"] == 3
        assert m["journaled_ready_runs"] == 0 and m["journaled_in_flight_steps"] == 0
        assert m["journaled_workers"] == 2
        assert m["journaled_archive_bytes"] > 0
        # Up: the CLI reads the supervisor's own sample (same counters).
        up = metrics_once(state)
        assert up["journaled_up"] == 1
        assert up["journaled_steps_started_total"] == 20
        # Not a metrics page: a 404, not a traceback.
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=10)
        assert e.value.code == 404
    finally:
        stop(proc)
    down = metrics_once(state)
    assert down["journaled_up"] == 0
    assert down['journaled_runs{status="succeeded"}'] == 17
    assert down['journaled_runs{status="failed"}'] == 3
    assert down["journaled_dead_letters"] == 3
    assert down["journaled_archive_rows"] == 20
    assert down["journaled_steps_started_total"] == 20  # the last supervisor's counters
    # The text form of the same parses too.
    text = subprocess.run([sys.executable, "-m", "journaled.cli", "metrics", "--once",
                           "--state", str(state)], env=cli_env(), capture_output=True,
                          text=True, timeout=60, check=True).stdout
    assert flatten(text)["journaled_runs{status=failed}"] == 3


@pytest.mark.timeout(90)
def test_ready_depth_and_oldest_ready_age_while_one_worker_is_busy(tmp_path):
    state = tmp_path / "state"
    client = Client(state)
    long = client.submit(b"sleep:30")
    proc, port = start(state, "-w", "1")
    try:
        wait_for(lambda: client.status(long).status.value == "running", what="the long run")
        queued = [client.submit(f"q{i}".encode()) for i in range(3)]
        m = wait_for(lambda: (lambda m: m if m["journaled_ready_runs"] == 3 else None)(
            scrape(port)), timeout=20, what="ready depth 3")
        assert m["journaled_in_flight_steps"] == 1
        assert m["journaled_runs{status=pending}"] == 3
        assert m["journaled_steps_started_total"] == 1
        time.sleep(1.5)
        m = scrape(port)
        assert m["journaled_oldest_ready_age_seconds"] >= 1.0
        assert 0 < m["journaled_worker_busy_ratio"] <= 1.0  # mean of the last 10 samples
        client.cancel(long)
        for rid in queued:
            client.wait(rid, timeout=30)
        m = wait_for(lambda: (lambda m: m if m["journaled_ready_runs"] == 0 else None)(
            scrape(port)), timeout=20, what="ready depth back to 0")
        assert m["journaled_runs_ended_total{status=cancelled}"] == 1
        assert m["journaled_steps_finished_total{outcome=cancelled}"] == 1
    finally:
        stop(proc)


@pytest.mark.timeout(60)
def test_a_taken_metrics_port_is_a_one_line_error_before_anything_starts(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "journaled.cli", "run", APP,
                              "--metrics-port", str(port), "--state", str(tmp_path / "s")],
                             env=cli_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "cannot serve metrics on 127.0.0.1:" in out.stderr
    assert "Traceback" not in out.stderr
    assert not list_segments(tmp_path / "s" / "journal")  # no supervisor ran


@pytest.mark.timeout(10)
def test_depths_and_histogram_rendering_are_exact():
    class R:
        def __init__(self, status, leased=False, due_at=0.0, wait_key="", submitted_at=0.0,
                     history=(), dead=False):
            self.status, self.leased, self.due_at, self.wait_key = status, leased, due_at, \
                wait_key
            self.submitted_at, self.history, self.dead = submitted_at, list(history), dead
            self.cancel_reason, self.woken = None, None

    now = 1000.0
    runs = [R("pending", submitted_at=900.0), R("running", leased=True),
            R("waiting", due_at=2000.0), R("waiting", wait_key="k"),
            R("waiting", due_at=990.0, submitted_at=100.0),  # delay over: ready since 990
            R("running", submitted_at=100.0, history=[[0, 1, 0, 1.0, 950.0, "c", "", ""]]),
            R("failed", dead=True), R("succeeded")]
    assert depths(runs, now) == (3, 2, 1, 100.0, 1)
    h = Histogram((0.1, 1.0))
    for v in (0.1, 0.5, 5.0):
        h.observe(v)
    snap = h.snapshot()
    assert snap.counts == [1, 1, 1] and snap.count == 3
    text = render(Sample(True, 1, now, Gauges(), ArchiveGauges(), step_seconds=snap))
    m = flatten(text)
    assert m["journaled_step_duration_seconds_bucket{le=0.1}"] == 1
    assert m["journaled_step_duration_seconds_bucket{le=1.0}"] == 2
    assert m["journaled_step_duration_seconds_bucket{le=+Inf}"] == 3
