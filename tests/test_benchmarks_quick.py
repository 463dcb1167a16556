"""Every benchmark script runs in ``--quick`` mode and prints the JSON it promises.

Only the shape is checked: exit status 0, exactly one JSON line on stdout
with ``title``, ``machine`` and ``results``, and the keys each script's
rows are documented to carry. Never the numbers: timing depends on the
machine (and this one is shared), so no speed is asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# script -> keys every result row has (rows of another kind are filtered by ``where``)
EXPECTED: dict[str, tuple[set[str], tuple[str, str] | None]] = {
    "baseline.py": ({"baseline", "tasks", "workers", "tasks_per_s", "us_per_task"}, None),
    "transitions.py": ({"what", "tasks_per_s", "ratio", "durable"}, None),
    "cpu_scaling.py": ({"what", "workers", "steps", "seconds", "ms_per_step", "speedup",
                        "efficiency"}, None),
    "replay.py": ({"journal", "what", "seconds"}, None),
    "cancel_latency.py": ({"path", "n", "target", "p50_ms", "p99_ms", "max_ms",
                           "after_return_p99_ms", "call_p99_ms", "not_cancelled"}, None),
    "submit_latency.py": ({"path", "n", "target", "p50_ms", "p99_ms", "max_ms", "call_p50_ms",
                           "call_p99_ms"}, None),
    "payload_sweep.py": ({"payload_bytes", "steps", "journaled_steps_per_s", "journaled_mb_per_s",
                          "pool_steps_per_s", "pool_mb_per_s", "ratio"}, None),
    "dask_executor.py": ({"executor", "noop_steps_per_s", "noop_vs_raw", "cpu_speedup",
                          "cpu_vs_raw", "cpu_efficiency"}, None),
    "submit_paths.py": ({"shape", "path", "runs", "vs_pool", "target"}, None),
    "peers.py": ({"shape", "system", "runs", "seconds", "runs_per_s", "not_succeeded"}, None),
    "scale.py": ({"what", "unit", "small", "big", "ratio", "target", "met"}, None),
    "compaction_pause.py": ({"state", "turns", "compactions", "longest_compacting_turn_ms",
                             "compacting_turn_max_cpu_ms", "longest_compact_call_ms",
                             "longest_turn_ms", "p99_turn_ms"}, None),
    "metrics_cost.py": ({"what", "records", "ns_per_record", "vs_fold"}, None),
    "thread_cap.py": ({"config", "workers", "blas_threads_per_worker", "runs", "seconds",
                       "runs_per_s", "speedup"}, None),
    "harness.py": ({"what", "runs", "done", "simulated_s", "seconds", "steps_per_s",
                    "vs_runtime"}, None),
    "fanout.py": ({"what", "runs", "seconds", "runs_per_s", "ratio", "journal_bytes_per_run",
                   "state_bytes_per_run"}, None),
    "soak.py": ({"kind", "runs", "seconds", "rss_mb", "worker_rss_mb", "journal_mb",
                 "runs_in_memory", "compactions"}, ("kind", "sample")),
}

# script -> counts below --quick's, where the shape stays the same and the run gets
# shorter (each row is still measured); the suite's wall time is what they cost.
SMALLER: dict[str, list[str]] = {
    "transitions.py": ["--runs", "1000"],
    "compaction_pause.py": ["--finished", "5000", "--live", "50", "--runs", "500",
                            "--batch", "100"],
    "cpu_scaling.py": ["--steps", "8", "--ms", "10"],
    "soak.py": ["--runs", "8000"],
    "replay.py": ["--records", "20000"],
}

# script -> the optional extra it needs (skipped with the reason when missing)
NEEDS = {"dask_executor.py": ("distributed", "dask"), "thread_cap.py": ("numpy", "arrays")}


def run_quick(script: str) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick",
                           *SMALLER.get(script, [])],
                          cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"{script} printed {len(lines)} lines on stdout, expected 1 JSON line"
    doc = json.loads(lines[0])
    assert proc.stderr.strip(), f"{script} printed no table on stderr"
    return doc


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_quick_mode_prints_json(script: str) -> None:
    if script in NEEDS:
        module, extra = NEEDS[script]
        pytest.importorskip(module, reason=f"{script} needs the '{extra}' extra")
    doc = run_quick(script)
    assert {"title", "machine", "results"} <= doc.keys()
    assert {"nproc", "python"} <= doc["machine"].keys()
    keys, where = EXPECTED[script]
    rows = doc["results"]
    if where is not None:
        rows = [r for r in rows if r.get(where[0]) == where[1]]
    assert rows, f"{script} reported no result rows"
    for r in rows:
        missing = keys - r.keys()
        assert not missing, f"{script}: row {r} lacks {sorted(missing)}"
    if script == "soak.py":
        kinds = {r["kind"] for r in doc["results"]}
        assert any(k.startswith("flat") for k in kinds), kinds
        assert any(k.startswith("growth") for k in kinds), kinds
    elif script == "replay.py":
        journals = {r["journal"] for r in doc["results"]}
        assert {"raw", "compacted, keep all", "compacted, drop finished"} <= journals
        assert all(r["records"] > 0 for r in doc["results"] if r["journal"] == "raw")
