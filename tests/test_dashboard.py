"""The dashboard in a real browser: headless Chromium (Debian's package) driven by Playwright for Python,
loading the pages against a recorded session and checking what a person sees. The recorded session is a
real replay of the shipped data (Jan-Feb 2024, liquidation_cascade + sma_crossover, 1,375 hourly
cycles): 18 closed trades, one vetoed proposal (one_position_per_symbol) and a BTC/USD position open at
its end.

Skips, saying what to install, where Playwright or Chromium is missing
(``apt-get install -y chromium``; Playwright's own browser download is not needed: the test points it at
the system Chromium, ``HYDRA_CHROMIUM`` overrides the path)."""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from hydra_engine.tradelog import load_session

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    explicit = os.environ.get("HYDRA_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A real replay session: its log folder, store and loaded document."""
    from hydra_engine.app import build_sim_session, run_session
    from hydra_engine.config import load_settings
    folder = tmp_path_factory.mktemp("dash")
    cfg = folder / "hydra.toml"
    cfg.write_text(f"""
[engine]
log_dir = "{folder / 'logs'}"
regime_detector = "trend_vol_rule"
[strategies]
enabled = ["liquidation_cascade", "sma_crossover"]
[storage]
url = "sqlite:///{folder / 'hydra.db'}"
[data]
replay_dir = "{ROOT / 'data'}"
start = 2024-01-01
end = 2024-03-01
""")
    settings = load_settings(cfg)
    summary = run_session(build_sim_session(settings, max_cycles=1375), max_cycles=1375, progress=False)
    doc = load_session(summary["log"])
    return {"folder": folder, "settings": settings, "doc": doc, "log": Path(summary["log"])}


@pytest.fixture(scope="module")
def served(recorded):
    from werkzeug.serving import make_server

    from hydra_engine.dashboard import create_app
    s = recorded["settings"]
    app = create_app(s.resolve_path(s.engine.log_dir), store_url=s.storage.url, root=s.resolve_path("."))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", app
    server.shutdown()


def test_the_recorded_session_has_what_the_browser_test_checks(recorded):
    doc = recorded["doc"]
    assert doc["summary"]["open_positions"] == {"BTC/USD": "0.0116"}
    assert len(doc["trades"]) == 18
    assert doc["summary"]["vetoes_by_rule"] == {"one_position_per_symbol": 1}


def test_pages_without_a_browser(served, recorded):
    """The server side alone (runs everywhere): index, session page, no path escape, plotly served locally."""
    _, app = served
    c = app.test_client()
    index = c.get("/").get_data(as_text=True)
    assert recorded["doc"]["session"]["session_id"] in index
    page = c.get(f"/session/{recorded['log'].name}").get_data(as_text=True)
    assert "id='positions'" in page and "Plotly.newPlot" in page and "http-equiv='refresh'" not in page  # ended
    assert c.get("/session/../../hydra.toml").status_code == 404
    assert c.get("/session/hydra.db").status_code == 404
    js = c.get("/plotly.min.js")
    assert js.status_code == 200 and len(js.data) > 1_000_000


def test_the_dashboard_in_headless_chromium(served, recorded):
    chromium = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed: pip install -e '.[dev]'")
    if chromium is None:
        pytest.skip("no Chromium found: install Debian's package (apt-get install -y chromium) or set HYDRA_CHROMIUM "
                    "to a Chromium/Chrome binary; `playwright install` is not needed")
    url, _ = served
    doc = recorded["doc"]
    veto = next(d for c in doc["cycle_details"] for d in c["decisions"] if not d["approved"])
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/", wait_until="load")
            page.click(f"text={doc['session']['session_id']}")
            page.wait_for_selector("#equity-chart .main-svg", timeout=20_000)
            # the equity chart renders: plotly drew its SVG with the equity and drawdown traces and the
            # regime shading
            assert page.locator("#equity-chart .scatterlayer .trace").count() >= 2
            assert page.locator("#equity-chart .shapelayer path").count() >= 1
            assert "regime TRENDING_UP" in page.locator("#equity-chart .legend").first.text_content()
            # the positions table lists the right rows: the one position left open, with its numbers
            rows = page.locator("#positions tbody tr")
            assert rows.count() == 1
            cells = rows.first.locator("td").all_inner_texts()
            assert cells[:3] == ["BTC/USD", "sma_crossover", "0.0116"]
            # the veto: its rule counted, its reason shown as a person reads it
            vetoes = page.locator("#vetoes").inner_text()
            assert "one_position_per_symbol" in vetoes and veto["reason"] in vetoes
            veto_row = page.locator("#decisions tbody tr", has_text="VETO")
            assert veto_row.count() == 1 and veto["reason"] in veto_row.inner_text()
            # the trade list and a price chart with its markers
            assert page.locator("#trades tbody tr").count() == len(doc["trades"])
            page.wait_for_selector("#price-BTC-USD .main-svg")
            assert page.locator("#price-BTC-USD .scatterlayer .trace").count() >= 3   # price, entries, exits
            assert "armed (not killed)" in page.locator("#kill").inner_text()
            assert not errors, errors
        finally:
            browser.close()


def test_a_running_sessions_page_reloads_itself_and_is_marked_running(served, recorded):
    """A session whose document has no end yet (a paper session running): its page refreshes, the index
    says running. The copy shares the recorded journal."""
    import json
    _, app = served
    doc = json.loads(recorded["log"].read_text())
    doc["session"]["ended_at"] = None
    doc["session"]["session_id"] = "paper-running-copy"
    copy = recorded["log"].with_name("session-99990101T000000Z.json")
    copy.write_text(json.dumps(doc))
    try:
        c = app.test_client()
        assert "paper-running-copy</a></td><td>sim</td>" in c.get("/").get_data(as_text=True)
        page = c.get(f"/session/{copy.name}").get_data(as_text=True)
        assert "<meta http-equiv='refresh' content='10'>" in page and "id='running'" in page
    finally:
        copy.unlink()
