"""The collector's dashboard in headless Chromium (Debian's package), driven by Playwright:
seeded with known events, its tiles and charts must show exactly the seeded totals, and a
team token must see its own team only. Keeps a screenshot in docs/dashboard.png."""
import datetime as dt
import gzip
import json
import re
import urllib.request
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from conftest import ADMIN_TOKEN, INGEST_TOKEN, RESEARCH_TOKEN, ROOT

CHROMIUM = "/usr/bin/chromium"


def event(team, model, day_offset, input_tokens, output_tokens, cost, status=200, fallback=False,
          latency=120):
    ts = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=day_offset, minutes=5)
    return {
        "v": 1, "id": str(uuid.uuid4()), "ts": ts.isoformat(), "namespace": "shop", "pod": "p1",
        "service": "web", "node": "n1", "team": team, "route": "chat", "model": model,
        "provider": "openai", "attempts": 2 if fallback else 1, "fallback": fallback,
        "status": status, "stream": False, "partial": False, "input_tokens": input_tokens,
        "output_tokens": output_tokens, "cached_tokens": 0, "reasoning_tokens": 0,
        "cost_usd": cost, "latency_ms": latency, "overhead_us": 40,
        "policy_version": {"generation": 1, "sha256": "00"}, "decision": {"strategy": "priority"},
    }


def seed(url):
    events = []
    for day in range(3):  # research: 10 calls a day on gpt-4o-mini, one of them failing
        for i in range(10):
            events.append(event("research", "gpt-4o-mini", day, 100, 50, "0.000045",
                                status=500 if i == 0 else 200, latency=100 + 10 * i))
    for day in range(2):  # ops: 5 calls a day on gpt-4o, one fallback each day
        for i in range(5):
            events.append(event("ops", "gpt-4o", day, 200, 100, "0.0015", fallback=(i == 0),
                                latency=400))
    body = gzip.compress("\n".join(json.dumps(e) for e in events).encode())
    req = urllib.request.Request(url + "/v1/events", data=body, method="POST", headers={
        "authorization": f"Bearer {INGEST_TOKEN}", "content-encoding": "gzip"})
    with urllib.request.urlopen(req) as r:
        assert json.load(r)["stored"] == len(events)


def open_dashboard(page, url, token):
    page.goto(url + "/")
    page.fill("#token", token)
    page.click("#login button[type=submit]")
    page.wait_for_selector("body[data-state=ready]", timeout=15000)


def dataset_sums(page, canvas_id):
    return page.evaluate("""(id) => {
        const c = Chart.getChart(document.getElementById(id));
        return Object.fromEntries(c.data.datasets.map(d => [d.label, d.data.reduce((a, b) => a + (b || 0), 0)]));
    }""", canvas_id)


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is required (scripts/setup.sh installs it)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


def test_dashboard_shows_the_seeded_totals(collector_stack, browser):
    s = collector_stack
    seed(s.collector_url)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    open_dashboard(page, s.collector_url, ADMIN_TOKEN)

    assert page.inner_text("#t-requests") == "40"
    assert page.inner_text("#t-input") == "5,000"        # 30×100 + 10×200
    assert page.inner_text("#t-output") == "2,500"       # 30×50 + 10×100
    assert page.inner_text("#t-cost") == "$0.01635"      # 30×0.000045 + 10×0.0015
    assert page.inner_text("#t-errors") == "7.50 %"      # 3 of 40
    assert page.inner_text("#t-fallbacks") == "2"

    spend = dataset_sums(page, "c-spend-team")
    assert Decimal(str(round(spend["research"], 9))) == Decimal("0.00135")
    assert Decimal(str(round(spend["ops"], 9))) == Decimal("0.015")
    tokens = dataset_sums(page, "c-tokens-model")
    assert tokens == {"gpt-4o": 3000, "gpt-4o-mini": 4500}
    routes = dataset_sums(page, "c-top-routes")
    assert routes == {"requests": 40}
    latency = page.evaluate("""() => {
        const c = Chart.getChart(document.getElementById('c-latency'));
        return Object.fromEntries(c.data.labels.map((l, i) => [l, c.data.datasets[0].data[i]]));
    }""")
    assert 380 <= latency["gpt-4o"] <= 420              # every ops call took 400 ms
    teams = page.eval_on_selector_all("#team option", "os => os.map(o => o.value)")
    assert teams == ["", "ops", "research"]
    page.screenshot(path=str(ROOT / "docs" / "dashboard.png"), full_page=True)

    # Filtering by team narrows every chart.
    page.select_option("#team", "ops")
    # (wait_for_function would evaluate a string, which the page's CSP rightly forbids)
    page.locator("#t-requests", has_text=re.compile(r"^10$")).wait_for(timeout=10000)
    assert dataset_sums(page, "c-tokens-model") == {"gpt-4o": 3000}
    assert not errors, errors


def test_a_team_token_sees_only_its_team(collector_stack, browser):
    s = collector_stack
    seed(s.collector_url)
    page = browser.new_page()
    open_dashboard(page, s.collector_url, RESEARCH_TOKEN)
    assert page.inner_text("#t-requests") == "30"
    assert set(dataset_sums(page, "c-spend-team")) == {"research"}
    teams = page.eval_on_selector_all("#team option", "os => os.map(o => o.value)")
    assert teams == ["", "research"]
    assert "ops" not in page.content()


def test_a_wrong_token_is_refused(collector_stack, browser):
    s = collector_stack
    page = browser.new_page()
    page.goto(s.collector_url + "/")
    page.fill("#token", "not-a-token")
    page.click("#login button[type=submit]")
    page.wait_for_selector("#login:not([hidden])")
    assert "refused" in page.inner_text("#login")
