"""Charts as inline SVG, drawn on the server: no script, no library, no network.

Two shapes cover the overview: stacked bars (runs finished per minute, by
status) and lines (latency percentiles per minute). Both take a list of
buckets oldest first and draw them across a fixed width; every text they
emit is escaped.
"""

from __future__ import annotations

import math
from html import escape
from typing import Mapping, Sequence

W, H = 640, 180  # the drawing; the page scales it to its column
PAD_L, PAD_R, PAD_T, PAD_B = 48, 8, 10, 22

COLORS = {"succeeded": "#2e7d32", "failed": "#c62828", "cancelled": "#9e9e9e",
          "p50": "#1565c0", "p95": "#ef6c00", "max": "#6a1b9a"}


def nice_max(v: float) -> float:
    """The axis top: 1, 2 or 5 times a power of ten, at least ``v``."""
    if v <= 0:
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 5, 10):
        if m * e >= v:
            return float(m * e)
    return float(10 * e)


def _fmt(v: float, unit: str) -> str:
    if unit == "s":
        if v >= 1:
            return f"{v:g} s"
        return f"{v * 1000:g} ms"
    return f"{v:g}"


def _frame(title: str, top: float, unit: str, labels: Sequence[str]) -> list[str]:
    out = [f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" '
           f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    inner_h = H - PAD_T - PAD_B
    for i in range(5):
        y = PAD_T + inner_h * i / 4
        v = top * (4 - i) / 4
        out.append(f'<line x1="{PAD_L}" y1="{y:.1f}" x2="{W - PAD_R}" y2="{y:.1f}" '
                   'stroke="#e0e0e0" stroke-width="1"/>')
        out.append(f'<text x="{PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end" '
                   f'font-size="10" fill="#555">{escape(_fmt(v, unit))}</text>')
    n = len(labels)
    inner_w = W - PAD_L - PAD_R
    if n:
        step = max(1, n // 6)
        for i in range(0, n, step):
            x = PAD_L + inner_w * (i + 0.5) / n
            out.append(f'<text x="{x:.1f}" y="{H - 6}" text-anchor="middle" font-size="10" '
                       f'fill="#555">{escape(labels[i])}</text>')
    return out


def _legend(keys: Sequence[str]) -> str:
    items = "".join(f'<span class="key"><i style="background:{COLORS.get(k, "#777")}"></i>'
                    f'{escape(k)}</span>' for k in keys)
    return f'<div class="legend">{items}</div>'


def stacked_bars(title: str, labels: Sequence[str], series: Mapping[str, Sequence[float]],
                 unit: str = "") -> str:
    """Bars per bucket, the series stacked in the order given."""
    n = len(labels)
    totals = [sum(s[i] for s in series.values()) for i in range(n)]
    top = nice_max(max(totals, default=0.0))
    out = _frame(title, top, unit, labels)
    inner_w = W - PAD_L - PAD_R
    inner_h = H - PAD_T - PAD_B
    bw = inner_w / n if n else 0
    for i in range(n):
        base = 0.0
        for key, vals in series.items():
            v = vals[i]
            if v <= 0:
                continue
            h = inner_h * v / top
            y = PAD_T + inner_h * (1 - (base + v) / top)
            out.append(f'<rect x="{PAD_L + i * bw + 0.5:.1f}" y="{y:.1f}" '
                       f'width="{max(bw - 1, 0.5):.1f}" height="{h:.1f}" '
                       f'fill="{COLORS.get(key, "#777")}"><title>{escape(labels[i])} '
                       f'{escape(key)}: {v:g}</title></rect>')
            base += v
    out.append("</svg>")
    return "".join(out) + _legend(list(series))


def lines(title: str, labels: Sequence[str], series: Mapping[str, Sequence[float | None]],
          unit: str = "") -> str:
    """One polyline per series; ``None`` leaves a gap (no data in that bucket)."""
    n = len(labels)
    vals = [v for s in series.values() for v in s if v is not None]
    top = nice_max(max(vals, default=0.0))
    out = _frame(title, top, unit, labels)
    inner_w = W - PAD_L - PAD_R
    inner_h = H - PAD_T - PAD_B
    for key, data in series.items():
        color = COLORS.get(key, "#777")
        run: list[str] = []
        for i, v in enumerate(list(data) + [None]):
            if v is None:
                if len(run) > 1:
                    out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" '
                               f'points="{" ".join(run)}"/>')
                elif run:
                    x, y = run[0].split(",")
                    out.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{color}"/>')
                run = []
                continue
            px = PAD_L + inner_w * (i + 0.5) / max(n, 1)
            py = PAD_T + inner_h * (1 - min(v, top) / top)
            run.append(f"{px:.1f},{py:.1f}")
    out.append("</svg>")
    return "".join(out) + _legend(list(series))
