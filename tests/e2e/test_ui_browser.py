"""The dashboard in a real headless browser (chromium through selenium).

Skipped, with the reason, where chromium, chromedriver or selenium is
missing (``.ci/run`` installs them where it can). One supervisor, one
dashboard and one browser for the module; each test clicks through what an
operator would: the overview, the status filter, a run page, retry on a dead
letter (and the run then succeeds), cancel on a running run.
"""

from __future__ import annotations

import pytest

from journaled import Client

from .helpers import wait_for
from .ui_support import Dashboard, Supervisor, browser, browser_missing

_why = browser_missing()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from selenium.webdriver.common.by import By  # noqa: F401 - selenium is there

    root = tmp_path_factory.mktemp("browser")
    state = root / "state"
    c = Client(state)
    for i in range(6):
        c.submit(f"ok {i}".encode(), run_id=f"ok-{i}")
    c.submit(b"fail", run_id="broken-1", headers={"team": "<i>billing</i>"})
    flag = root / "flag"
    c.submit(f"flaky:{flag}".encode(), run_id="flaky-1")
    sup = Supervisor(state)
    ui = Dashboard(state)
    d = None
    try:
        for rid in ("ok-5", "broken-1", "flaky-1"):
            c.wait(rid, timeout=30)
        d = browser(str(root / "profile"))
        yield {"state": state, "client": c, "ui": ui, "d": d, "flag": flag}
    finally:
        if d is not None:
            d.quit()
        ui.close()
        sup.stop()


def by():
    from selenium.webdriver.common.by import By

    return By


@pytest.mark.timeout(90)
def test_overview_shows_counts_and_two_charts(env):
    d, ui, c = env["d"], env["ui"], env["client"]
    By = by()
    want = {s: str(len(c.runs(s, limit=None))) for s in ("succeeded", "failed")}

    def loaded():
        d.get(ui.url + "/")
        return all(d.find_element(By.ID, f"count-{s}").text == n for s, n in want.items())

    wait_for(loaded, timeout=20, what=f"the overview's counts {want}")
    assert int(want["succeeded"]) >= 6 and int(want["failed"]) >= 1
    assert len(d.find_elements(By.CSS_SELECTOR, "svg.chart")) == 2
    assert d.title.startswith("Overview")


@pytest.mark.timeout(90)
def test_filter_runs_by_status_then_open_a_run_page(env):
    d, ui = env["d"], env["ui"]
    By = by()
    from selenium.webdriver.support.ui import Select

    d.get(ui.url + "/runs")
    assert len(d.find_elements(By.CSS_SELECTOR, "a.run")) >= 8
    Select(d.find_element(By.ID, "status")).select_by_value("failed")
    d.find_element(By.ID, "filter").click()
    wait_for(lambda: "status=failed" in d.current_url, what="the filtered page")
    ids = sorted(a.text for a in d.find_elements(By.CSS_SELECTOR, "a.run"))
    assert "broken-1" in ids and not any(i.startswith("ok-") for i in ids)
    assert {b.text for b in d.find_elements(By.CSS_SELECTOR, "#runs .st")} == {"failed"}
    d.find_element(By.LINK_TEXT, "broken-1").click()
    wait_for(lambda: d.find_elements(By.ID, "run-id"), what="the run page")
    assert d.find_element(By.ID, "run-id").text == "broken-1"
    # The header is shown as text, not markup; the traceback names the raising frame.
    assert "<i>billing</i>" in d.find_element(By.ID, "headers").text
    assert not d.find_elements(By.CSS_SELECTOR, "#headers i")
    assert "_explode" in d.find_element(By.ID, "traceback").get_attribute("textContent")


@pytest.mark.timeout(90)
def test_retry_a_dead_letter_and_see_it_run(env):
    d, ui, c = env["d"], env["ui"], env["client"]
    By = by()
    env["flag"].write_text("go")  # the runner succeeds from now on
    d.get(ui.url + "/dead")
    row = d.find_element(By.XPATH, "//tr[td/a[text()='flaky-1']]")
    row.find_element(By.CSS_SELECTOR, "button.retry").click()
    wait_for(lambda: d.find_elements(By.ID, "flash"), what="the retry's message")
    assert "flaky-1 redriven" in d.find_element(By.ID, "flash").text
    assert c.wait("flaky-1", timeout=30).status.value == "succeeded"
    d.get(ui.url + "/runs/flaky-1")
    assert d.find_element(By.CSS_SELECTOR, "dd .st").text == "succeeded"
    assert not d.find_elements(By.CSS_SELECTOR, "button.retry")


@pytest.mark.timeout(90)
def test_cancel_a_running_run(env):
    d, ui, c = env["d"], env["ui"], env["client"]
    By = by()
    rid = c.submit(b"sleep:60", run_id="long-1")
    wait_for(lambda: c.status(rid).status.value == "running", what="the long run to start")
    d.get(ui.url + "/runs/long-1")
    d.find_element(By.CSS_SELECTOR, "button.cancel").click()
    wait_for(lambda: d.find_elements(By.ID, "flash"), what="the cancel's message")
    assert c.wait(rid, timeout=30).status.value == "cancelled"

    def shown_cancelled():
        d.get(ui.url + "/runs/long-1")
        return d.find_element(By.CSS_SELECTOR, "dd .st").text == "cancelled"

    wait_for(shown_cancelled, timeout=20, what="the page to show cancelled")
    assert not d.find_elements(By.CSS_SELECTOR, "button.cancel")
