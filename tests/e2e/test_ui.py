"""The dashboard over HTTP: escaping, error pages, forms that act through the Client.

A real supervisor process and a real dashboard server; requests with
urllib (the browser tests in test_ui_browser.py drive the same pages in
chromium). No page may ever show a traceback, and nothing from a run may
reach the page unescaped.
"""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import pytest

from journaled import Client
from journaled.inbox import inbox_dir
from journaled.records import CancelRequested

from .helpers import cli_env, journal_records, wait_for
from .ui_support import Dashboard, Supervisor

XSS = "<script>alert('x')</script>"


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        return None


def post(url: str, fields: dict[str, str]) -> tuple[int, str, str]:
    """``(status, location, body)``; redirects are not followed."""
    opener = urllib.request.build_opener(_NoRedirect)
    req = urllib.request.Request(url, data=urlencode(fields).encode(), method="POST")
    try:
        with opener.open(req, timeout=20) as r:
            return r.status, r.headers.get("Location", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Location", ""), e.read().decode()


def token(html: str) -> str:
    m = re.search(r'name=csrf value="([^"]+)"', html)
    assert m, "no form token on the page"
    return m.group(1)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    state = tmp_path_factory.mktemp("ui") / "state"
    c = Client(state)
    c.submit(b"<b>bold</b>", headers={"note": XSS}, run_id="escape-me")
    for i in range(55):
        c.submit(f"job {i}".encode(), run_id=f"job-{i:03d}")
    c.submit(b"fail", run_id="dead-one")
    sup = Supervisor(state)
    ui = Dashboard(state)
    try:
        for rid in ("escape-me", "dead-one", "job-054"):
            c.wait(rid, timeout=30)
        yield state, ui, c
    finally:
        ui.close()
        sup.stop()


@pytest.mark.timeout(60)
def test_nothing_from_a_run_reaches_the_page_unescaped(live):
    _state, ui, _c = live
    code, html = get(ui.url + "/runs/escape-me")
    assert code == 200
    assert "<script" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html  # the input and the result
    code, html = get(ui.url + "/runs?" + urlencode({"q": XSS}))
    assert code == 200 and "<script" not in html and "&lt;script&gt;" in html
    code, html = get(ui.url + "/runs/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert code == 404 and "<script" not in html and "&lt;script&gt;" in html
    code, html = get(ui.url + "/%3Cscript%3E")
    assert code == 404 and "<script" not in html


@pytest.mark.timeout(60)
def test_bad_urls_and_forms_get_error_pages_never_a_traceback(live):
    _state, ui, _c = live
    for path, want in (("/nope", 404), ("/runs/x/y/z", 404), ("/runs?page=0", 400),
                       ("/runs?page=abc", 400), ("/runs?status=bogus", 400),
                       ("/runs/no-such-run", 404), ("/runs?page=99999999999", 400)):
        code, html = get(ui.url + path)
        assert code == want, path
        assert "Traceback" not in html and 'id=error' in html, path
    # A form without the page's token is refused; nothing is cancelled.
    code, _loc, html = post(ui.url + "/runs/job-000/cancel", {"csrf": "forged"})
    assert code == 403 and "token" in html
    good = token(get(ui.url + "/dead")[1])
    code, _loc, html = post(ui.url + "/runs/job-000/nothing", {"csrf": good})
    assert code == 404
    req = urllib.request.Request(ui.url + "/runs", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=20)
    assert e.value.code == 405


@pytest.mark.timeout(60)
def test_runs_table_filters_by_status_searches_ids_and_pages(live):
    _state, ui, _c = live
    run_ids = re.compile(r'class="run" href="/runs/([^"]+)"')
    _, html = get(ui.url + "/runs?q=job-")
    ids = run_ids.findall(html)
    assert len(ids) == 50 and 'id="next"' in html and 'id="prev"' not in html
    _, html2 = get(ui.url + "/runs?q=job-&page=2")
    ids2 = run_ids.findall(html2)
    assert len(ids2) == 5 and not set(ids) & set(ids2)  # 55 job runs in all
    assert sorted(ids + ids2) == [f"job-{i:03d}" for i in range(55)]
    assert 'id="prev"' in html2 and 'id="next"' not in html2
    _, html = get(ui.url + "/runs?status=failed&q=dead-")
    assert run_ids.findall(html) == ["dead-one"]
    _, html = get(ui.url + "/runs?status=succeeded&q=dead-")
    assert 'id="empty"' in html
    _, html = get(ui.url + "/runs?q=job-01")
    assert sorted(run_ids.findall(html)) == [f"job-01{i}" for i in range(10)]
    _, html = get(ui.url + "/runs")
    assert len(run_ids.findall(html)) == 50  # no filter: the newest 50


@pytest.mark.timeout(60)
def test_overview_counts_runs_and_draws_the_last_hour(live):
    _state, ui, c = live
    want = {s: len(c.runs(s, limit=None)) for s in ("succeeded", "failed")}

    def counted():
        _, html = get(ui.url + "/")
        return html if all(f'id="count-{s}">{n}<' in html for s, n in want.items()) else None

    html = wait_for(counted, timeout=20, what=f"the overview's counts {want}")
    assert html.count("<svg") == 2
    assert f"{sum(want.values())} runs finished" in html or "runs finished" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")  # no assets


@pytest.mark.timeout(60)
def test_cancel_and_retry_buttons_act_like_the_cli(live, tmp_path):
    state, ui, c = live
    rid = c.submit(b"sleep:60", run_id="to-cancel")
    wait_for(lambda: c.status(rid).status.value == "running", what="the long run")
    _, html = get(ui.url + "/runs/to-cancel")
    assert 'class="cancel">' in html and 'class="cancel" disabled' not in html
    code, loc, _ = post(ui.url + "/runs/to-cancel/cancel", {"csrf": token(html)})
    assert code == 303 and loc.startswith("/runs/to-cancel?msg=")
    assert c.wait(rid, timeout=30).status.value == "cancelled"
    assert any(type(r) is CancelRequested and r.run_id == rid
               and r.reason == "cancelled from the dashboard" for r in journal_records(state))
    _, html = get(ui.url + loc)
    assert 'id="flash"' in html and "cancel of to-cancel requested" in html
    flag = tmp_path / "flag"
    flaky = c.submit(f"flaky:{flag}".encode(), run_id="flaky-one")
    assert c.wait(flaky, timeout=30).status.value == "failed"
    _, html = get(ui.url + "/dead")
    assert "flaky-one" in html
    flag.write_text("go")
    code, loc, _ = post(ui.url + "/runs/flaky-one/retry", {"csrf": token(html), "back": "/dead"})
    assert code == 303 and loc.startswith("/dead?msg=")
    assert c.wait(flaky, timeout=30).status.value == "succeeded"
    # Retrying a run that is not dead says so, as the CLI would.
    code, loc, _ = post(ui.url + "/runs/job-001/retry", {"csrf": token(html)})
    assert code == 303 and "err=1" in loc


@pytest.mark.timeout(60)
def test_with_no_supervisor_the_pages_are_read_only(tmp_path):
    state = tmp_path / "state"
    c = Client(state)
    c.submit(b"x", run_id="waits-in-inbox")
    ui = Dashboard(state)
    try:
        code, html = get(ui.url + "/runs/waits-in-inbox")
        assert code == 200 and 'id="banner"' in html and "Read-only" in html
        assert 'class="cancel" disabled' in html
        before = sorted(p.name for p in inbox_dir(state).iterdir())
        code, _loc, html = post(ui.url + "/runs/waits-in-inbox/cancel", {"csrf": token(html)})
        assert code == 409 and "read-only" in html
        assert sorted(p.name for p in inbox_dir(state).iterdir()) == before  # nothing posted
        code, html = get(ui.url + "/")
        assert code == 200 and 'id="count-pending">1<' in html
    finally:
        ui.close()


@pytest.mark.timeout(60)
def test_ui_command_refuses_a_missing_state_dir_and_a_taken_port(tmp_path):
    out = subprocess.run([sys.executable, "-m", "journaled.cli", "ui", "--state",
                          str(tmp_path / "missing")], env=cli_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    Path(tmp_path / "s").mkdir()
    ui = Dashboard(tmp_path / "s")
    try:
        port = ui.url.rsplit(":", 1)[1]
        out = subprocess.run([sys.executable, "-m", "journaled.cli", "ui", "--port", port,
                              "--state", str(tmp_path / "s")], env=cli_env(),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and "cannot serve the dashboard" in out.stderr
    finally:
        ui.close()


@pytest.mark.timeout(60)
def test_payload_previews_cut_big_text_and_show_binary_as_hex(live):
    _state, ui, c = live
    c.submit(b"<" + b"a" * 200_000, run_id="big-text")  # a blob: only its start is read
    c.submit(bytes(range(256)) * 8, run_id="binary")
    c.wait("big-text", timeout=30)
    c.wait("binary", timeout=30)
    _, html = get(ui.url + "/runs/big-text")
    assert "200001 bytes, first 4096 shown" in html
    assert "&lt;" + "a" * 4095 + "</pre>" in html and "a" * 4097 not in html
    _, html = get(ui.url + "/runs/binary")
    assert "2048 bytes, binary: first 256 shown as hex" in html
    assert "00000000  00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f  ................" in html
    assert "00000030  30 31 32 33 34 35 36 37 38 39 3a 3b 3c 3d 3e 3f  0123456789:;&lt;=&gt;?" \
        in html
