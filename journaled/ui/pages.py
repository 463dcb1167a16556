"""The dashboard's pages as HTML strings: pure functions of what the server read.

Every value that came from a run (ids, headers, payloads, errors,
tracebacks) goes through ``esc`` (``html.escape``, quotes too) or
``preview`` before it reaches the page; URLs are built with
``urllib.parse.quote``. Forms post to the same origin and carry the
server's per-process CSRF token. No script, no external asset: the CSS is
inline and the charts are SVG drawn by ``svg``.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any, Iterable, Sequence
from urllib.parse import quote, urlencode

from . import svg

STATUSES = ("pending", "running", "waiting", "succeeded", "failed", "cancelled")
PREVIEW_BYTES = 4096  # of a payload, input or result shown on a run page
HEX_BYTES = 256  # of a binary value, as a hex dump
CHART_MINUTES = 60


def esc(v: Any) -> str:
    return escape("" if v is None else str(v), quote=True)


def when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def run_url(run_id: str) -> str:
    return "/runs/" + quote(run_id, safe="")


def preview(value: bytes | None, size: int | None = None, limit: int = PREVIEW_BYTES) -> str:
    """A value as HTML: text (escaped, cut at ``limit``) or a hex dump of its start."""
    if value is None:
        return '<span class="muted">none</span>'
    total = len(value) if size is None else size
    head = bytes(value[:limit])
    try:
        text = head.decode("utf-8")
        binary = any(c in text for c in "\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f\x7f")
    except UnicodeDecodeError:
        text, binary = "", True
        if len(head) == limit:  # cut inside a character? decode what is whole
            try:
                text, binary = head[:-3].decode("utf-8", "strict"), False
            except UnicodeDecodeError:
                pass
    note = f'<div class="muted">{total} bytes'
    if binary:
        head = head[:HEX_BYTES]
        rows = []
        for i in range(0, len(head), 16):
            chunk = head[i:i + 16]
            hexed = " ".join(f"{b:02x}" for b in chunk)
            shown = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
            rows.append(f"{i:08x}  {hexed:<47}  {shown}")
        cut = total > len(head)
        note += f", binary{': first ' + str(len(head)) + ' shown as hex' if cut else ''}</div>"
        return f'{note}<pre class="hex">{esc(chr(10).join(rows))}</pre>'
    cut = total > len(text.encode())
    note += f", first {len(text.encode())} shown</div>" if cut else "</div>"
    return f"{note}<pre>{esc(text)}</pre>"


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#212121;background:#fafafa}
header{background:#263238;color:#fff;padding:8px 16px;display:flex;gap:18px;align-items:center}
header a{color:#cfd8dc;text-decoration:none}header a.on{color:#fff;font-weight:600}
header .brand{font-weight:700;color:#fff;margin-right:12px}
main{padding:12px 16px;max-width:1200px}
.banner{background:#fff3e0;border:1px solid #ffb74d;padding:8px 12px;margin:8px 0}
.flash{background:#e8f5e9;border:1px solid #81c784;padding:8px 12px;margin:8px 0}
.flash.err{background:#ffebee;border-color:#e57373}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #e0e0e0;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eceff1}td.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;gap:10px;flex-wrap:wrap;margin:8px 0}
.card{background:#fff;border:1px solid #e0e0e0;padding:8px 14px;min-width:110px}
.card b{display:block;font-size:22px}.card a{color:inherit;text-decoration:none}
.st{padding:1px 6px;border-radius:3px;color:#fff;font-size:12px;background:#757575}
.st-succeeded{background:#2e7d32}.st-failed{background:#c62828}.st-running{background:#1565c0}
.st-waiting{background:#ef6c00}.st-pending{background:#6d4c41}.st-cancelled{background:#9e9e9e}
pre{background:#f5f5f5;border:1px solid #e0e0e0;padding:8px;overflow:auto;max-height:360px;
white-space:pre-wrap;word-break:break-all}
.muted{color:#757575;font-size:12px}.charts{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.chart{width:100%;height:auto;background:#fff;border:1px solid #e0e0e0}
.legend{font-size:12px;margin:2px 0 8px}.key{margin-right:12px}
.key i{display:inline-block;width:10px;height:10px;margin-right:4px}
form.inline{display:inline}button{cursor:pointer}button[disabled]{cursor:not-allowed}
.filters{margin:8px 0;display:flex;gap:8px;align-items:center}.pager{margin:8px 0}
dl{display:grid;grid-template-columns:140px 1fr;gap:2px 10px;background:#fff;padding:8px;
border:1px solid #e0e0e0}dt{color:#555}dd{margin:0}
"""

NAV = (("/", "Overview"), ("/runs", "Runs"), ("/dead", "Dead letters"))


def layout(title: str, body: str, *, active: str = "", banner: str = "",
           flash: str = "", flash_err: bool = False) -> str:
    nav = "".join(f'<a href="{href}"{" class=on" if href == active else ""}>{esc(label)}</a>'
                  for href, label in NAV)
    parts = ["<!doctype html><html lang=en><head><meta charset=utf-8>",
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{esc(title)} · journaled</title><style>{CSS}</style></head><body>",
             f'<header><span class="brand">journaled</span>{nav}</header><main>']
    if banner:
        parts.append(f'<div class="banner" id="banner">{banner}</div>')
    if flash:
        parts.append(f'<div class="flash{" err" if flash_err else ""}" id="flash">'
                     f'{esc(flash)}</div>')
    parts.append(body)
    parts.append("</main></body></html>")
    return "".join(parts)


def button(action: str, label: str, token: str, writable: bool, *,
           fields: dict[str, str] | None = None, cls: str = "") -> str:
    hidden = "".join(f'<input type=hidden name="{esc(k)}" value="{esc(v)}">'
                     for k, v in (fields or {}).items())
    dis = "" if writable else ' disabled title="read-only: no supervisor is running"'
    return (f'<form class="inline" method=post action="{esc(action)}">'
            f'<input type=hidden name=csrf value="{esc(token)}">{hidden}'
            f'<button type=submit class="{esc(cls)}"{dis}>{esc(label)}</button></form>')


def status_badge(status: str) -> str:
    return f'<span class="st st-{esc(status)}">{esc(status)}</span>'


# -------------------------------------------------------------- overview

def minute_buckets(outcomes: Iterable[Any], now: float, minutes: int = CHART_MINUTES
                   ) -> tuple[list[str], dict[str, list[float]], dict[str, list[float | None]]]:
    """Runs finished per minute by status, and run latency p50/p95/max per minute."""
    start = (now // 60 - minutes + 1) * 60
    labels = [time.strftime("%H:%M", time.localtime(start + 60 * i)) for i in range(minutes)]
    done: dict[str, list[float]] = {k: [0.0] * minutes for k in
                                    ("succeeded", "failed", "cancelled")}
    lat: list[list[float]] = [[] for _ in range(minutes)]
    for o in outcomes:
        t = o.finished_at
        if t is None or t < start:
            continue
        i = min(int((t - start) // 60), minutes - 1)
        status = o.status.value if hasattr(o.status, "value") else str(o.status)
        if status in done:
            done[status][i] += 1
        if o.submitted_at:
            lat[i].append(max(0.0, t - o.submitted_at))
    pct: dict[str, list[float | None]] = {"p50": [], "p95": [], "max": []}
    for xs in lat:
        xs.sort()
        for key, q in (("p50", 0.5), ("p95", 0.95), ("max", 1.0)):
            pct[key].append(xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None)
    return labels, done, pct


def overview(counts: dict[str, int], outcomes: Sequence[Any], now: float, health: str,
             pause: str) -> str:
    cards = "".join(f'<div class="card"><a href="/runs?status={s}">{esc(s)}'
                    f'<b id="count-{s}">{counts.get(s, 0)}</b></a></div>' for s in STATUSES)
    labels, done, pct = minute_buckets(outcomes, now)
    total = sum(sum(v) for v in done.values())
    bars = svg.stacked_bars("Runs finished per minute", labels, done)
    lat = svg.lines("Run latency (submitted to finished) per minute", labels, pct, unit="s")
    return (f'<h1>Overview</h1><p class="muted">{esc(health)}</p>'
            f'<div class="cards">{cards}</div>{pause}'
            f'<h2>Last hour</h2><p class="muted">{int(total)} runs finished in the last '
            f'{CHART_MINUTES} minutes.</p><div class="charts"><div><h3>Throughput</h3>{bars}'
            f'</div><div><h3>Latency</h3>{lat}</div></div>')


# ------------------------------------------------------------------ runs

def runs_table(rows: Sequence[Any], status: str, q: str, page: int, has_next: bool) -> str:
    opts = "".join(f'<option value="{s}"{" selected" if s == status else ""}>{s}</option>'
                   for s in ("", *STATUSES))
    form = (f'<form class="filters" method=get action="/runs">'
            f'<label>status <select name=status id=status>{opts}</select></label>'
            f'<label>id <input name=q id=q value="{esc(q)}" placeholder="id contains"></label>'
            f'<button type=submit id=filter>Filter</button></form>')
    body = []
    for o in rows:
        st = o.status.value if hasattr(o.status, "value") else str(o.status)
        body.append(f'<tr><td><a class="run" href="{run_url(o.run_id)}">{esc(o.run_id)}</a>'
                    f'</td><td>{status_badge(st)}</td><td class=num>{o.steps}</td>'
                    f'<td>{when(o.submitted_at)}</td><td>{when(o.finished_at)}</td>'
                    f'<td>{esc((o.error or "")[:120])}</td></tr>')
    if not body:
        body.append('<tr><td colspan=6 class="muted" id="empty">no runs match</td></tr>')
    base = {k: v for k, v in (("status", status), ("q", q)) if v}
    pager = []
    if page > 1:
        pager.append(f'<a id="prev" href="/runs?{esc(urlencode({**base, "page": page - 1}))}">'
                     "&larr; newer</a>")
    pager.append(f'<span class="muted"> page {page} </span>')
    if has_next:
        pager.append(f'<a id="next" href="/runs?{esc(urlencode({**base, "page": page + 1}))}">'
                     "older &rarr;</a>")
    return (f"<h1>Runs</h1>{form}<table id=runs><thead><tr><th>run</th><th>status</th>"
            "<th>steps</th><th>submitted</th><th>finished</th><th>error</th></tr></thead>"
            f'<tbody>{"".join(body)}</tbody></table><div class="pager">{"".join(pager)}</div>')


def run_page(out: Any, run: Any, attempts: Sequence[Any], values: dict[str, str],
             actions: str) -> str:
    st = out.status.value if hasattr(out.status, "value") else str(out.status)
    facts = [("status", status_badge(st)), ("steps", esc(out.steps)),
             ("submitted", esc(when(out.submitted_at))),
             ("finished", esc(when(out.finished_at)))]
    if run is not None:
        facts += [("step", esc(run.step)), ("attempt", esc(run.attempt)),
                  ("failures", esc(run.failures))]
        if run.cancel_reason:
            facts.append(("cancel reason", esc(run.cancel_reason)))
        if run.wait_key and st == "waiting":
            facts.append(("parked on", esc(run.wait_key)))
        key = getattr(run, "key", "")
        if key:
            facts.append(("key", esc(key)))
    if out.error:
        facts.append(("error", f"<code>{esc(out.error)}</code>"))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    headers = getattr(run, "headers", None) or {}
    hrows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in
                    sorted(headers.items())) or '<tr><td colspan=2 class="muted">none</td></tr>'
    arows = []
    for a in attempts:
        tb = (f'<details><summary>traceback</summary><pre class="tb">{esc(a.traceback)}</pre>'
              "</details>") if a.traceback else ""
        took = f"{a.finished_at - a.started_at:.3f} s" if a.finished_at else "-"
        arows.append(f"<tr><td class=num>{a.step}</td><td class=num>{a.attempt}</td>"
                     f"<td class=num>{a.worker}</td><td>{esc(when(a.started_at))}</td>"
                     f"<td>{esc(took)}</td><td>{esc(a.outcome)}</td>"
                     f"<td>{esc(a.error)}{tb}</td></tr>")
    if not arows:
        arows.append('<tr><td colspan=7 class="muted">no attempts yet</td></tr>')
    tb = ""
    if run is not None and run.traceback:
        tb = f'<h2>Traceback</h2><pre class="tb" id="traceback">{esc(run.traceback)}</pre>'
    vals = "".join(f"<h3>{esc(k)}</h3>{v}" for k, v in values.items())
    return (f'<h1>Run <code id="run-id">{esc(out.run_id)}</code></h1>'
            f'<div class="actions">{actions}</div><dl>{dl}</dl>'
            f"<h2>Headers</h2><table id=headers><tr><th>name</th><th>value</th></tr>{hrows}"
            f"</table><h2>Payload</h2>{vals}"
            "<h2>Attempts</h2><table id=attempts><tr><th>step</th><th>attempt</th>"
            "<th>worker</th><th>started</th><th>took</th><th>outcome</th><th>error</th></tr>"
            f'{"".join(arows)}</table>{tb}')


def dead_page(dead: Sequence[Any], token: str, writable: bool) -> str:
    rows = []
    for d in dead:
        rows.append(f'<tr><td><a href="{run_url(d.run_id)}">{esc(d.run_id)}</a></td>'
                    f"<td class=num>{d.step}</td><td class=num>{d.attempt}</td>"
                    f"<td>{esc(d.kind)}</td><td>{esc((d.error or '')[:200])}</td>"
                    f"<td>{esc(when(d.finished_at))}</td><td>"
                    + button(run_url(d.run_id) + "/retry", "retry", token, writable,
                             fields={"back": "/dead"}, cls="retry") + "</td></tr>")
    if not rows:
        rows.append('<tr><td colspan=7 class="muted" id="empty">no dead letters</td></tr>')
    return ("<h1>Dead letters</h1><p class=muted>Steps that ran out of attempts or failed "
            "permanently. Retry runs the dead step again with fresh attempts.</p>"
            "<table id=dead><tr><th>run</th><th>step</th><th>attempt</th><th>kind</th>"
            f'<th>error</th><th>finished</th><th></th></tr>{"".join(rows)}</table>')


def error_page(code: int, message: str) -> str:
    return layout(f"{code}", f"<h1>{code}</h1><p id=error>{esc(message)}</p>"
                  '<p><a href="/">back to the overview</a></p>')
