"""One output format for every benchmark: JSON on stdout, an aligned table on stderr.

stdout carries exactly one JSON object (one line), so ``python benchmarks/x.py
> out.json`` or ``| jq`` always parses; the human-readable table goes to
stderr, so it shows in a terminal without polluting the data. Benchmarks
report numbers and never assert on them: timing depends on the machine.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any


def machine() -> dict[str, Any]:
    """What the numbers depend on, recorded beside them so runs can be compared."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


def format_table(results: Sequence[dict[str, Any]], columns: Sequence[str], title: str) -> str:
    """Render ``results`` as a plain aligned table; numbers right-aligned, text left."""
    rows = [[_cell(r.get(c)) for c in columns] for r in results]
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(columns)]
    numeric = [
        all(isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool)
            for r in results if r.get(c) is not None)
        for c in columns
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if num else cell.ljust(w)
            for cell, w, num in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    out = [title, line(list(columns)), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    return "\n".join(out)


def emit(results: list[dict[str, Any]], columns: list[str], title: str) -> dict[str, Any]:
    """Print the JSON document to stdout and the table to stderr; return the document."""
    doc = {"title": title, "machine": machine(), "results": results}
    print(format_table(results, columns, title), file=sys.stderr, flush=True)
    print(json.dumps(doc, sort_keys=False), flush=True)
    return doc
