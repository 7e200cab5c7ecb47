"""Issue #19 on real data: the curated AI launch list and its GitHub mapping, the ai_disruption shock rule
(detected / ignored / no look-ahead / LZ short refused by capability / dip buys after the slowdown), the
cross-asset graph (past-only), its modifier in `explain`, and the risk-off TLT rule."""
from __future__ import annotations

import copy
import dataclasses
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
import requests
import responses

from hydra_engine.data.ai_launch_list import (CURATED_LAUNCHES_FILE, COLUMNS, append_launch, launch_list_path,
                                              read_launch_list, read_launch_rows, validate_launch_rows)
from hydra_engine.data.event_feeds import build_event_feeds
from hydra_engine.data.replay import ReplayMarketData
from hydra_engine.domain import Regime, RegimeReading, Signal
from hydra_engine.plugin_kinds import SignalContext
from hydra_engine.strategy import DataNeed, StrategyContext
from signals.cross_asset import (CrossAssetModifier, GraphCache, GraphParams, aligned_closes, risk_off)
from strategies.ai_disruption import AiDisruption, AiDisruptionParams, find_shock, watch

from .conftest import SHIPPED_DATA, make_settings
from .test_engine_loop import perturbed_copy

UTC = timezone.utc
SAAS = ["IGV", "CRM", "SHOP", "ADBE", "MSFT", "WDAY", "LZ"]


def launches():
    return {e.subject: e for e in read_launch_list(launch_list_path(SHIPPED_DATA))}


# --------------------------------------------------------------------------- the curated list
def test_shipped_launch_list_is_valid_and_reaches_plugins_through_the_events_channel():
    rows = read_launch_rows(SHIPPED_DATA / CURATED_LAUNCHES_FILE)
    assert len(rows) >= 30 and not validate_launch_rows(rows)
    assert all(r["source"] and r["first_us_session"] for r in rows)
    [feed] = build_event_feeds([DataNeed("events", "ai_model_launch")], SHIPPED_DATA)
    now = datetime(2024, 3, 5, 12, tzinfo=UTC)
    got = feed.events(now)
    assert got and all(e.known_at <= now and e.kind == "ai_model_launch" for e in got)
    assert "claude-3" in {e.subject for e in got} and "gpt-4o" not in {e.subject for e in got}


def test_validator_names_line_and_field_and_append_refuses_bad_rows(tmp_path):
    rows = read_launch_rows(SHIPPED_DATA / CURATED_LAUNCHES_FILE)
    bad = dict(rows[0], launch_id="Bad Id", first_us_session="2022-11-29")   # a session before the launch
    problems = validate_launch_rows([*rows, bad])
    assert any(p.startswith(f"line {len(rows) + 2}, field 'launch_id'") for p in problems)
    assert any("'first_us_session': closes before the launch was public" in p for p in problems)
    path = tmp_path / "list.csv"
    path.write_text((SHIPPED_DATA / CURATED_LAUNCHES_FILE).read_text())
    assert append_launch(path, rows[0])[0].endswith(f"duplicate of line 2 (value '{rows[0]['launch_id']}')")
    new = {c: "" for c in COLUMNS} | {"launch_id": "test-model", "model": "Test", "organization": "Lab",
                                      "announced_date": "2025-03-03", "first_us_session": "2025-03-04",
                                      "source": "manual", "source_ref": "press release"}
    assert append_launch(path, new) == []
    assert "test-model" in {e.subject for e in read_launch_list(path)}


# --------------------------------------------------------------------------- GitHub releases -> launches
def test_github_release_with_a_model_line_becomes_a_launch_and_others_do_not():
    from hydra_engine.adapters.github_launches import GitHubLaunchFeed, launch_lines
    from hydra_engine.adapters.github_releases import GitHubReleasesClient
    from .test_github_client import REPO, URL, Clock, example, real_headers
    T0 = datetime(2024, 6, 21, 12, tzinfo=UTC)   # the first poll after the release
    real = example("release.by_tag.pygithub_replay_2020.json")
    launch = {**copy.deepcopy(real), "id": 11, "tag_name": "v0.29.0", "published_at": "2024-06-20T13:56:00Z",
              "body": "## 0.29.0\n### Features\n* **api:** add new claude-3-5-sonnet-20240620 model\n"}
    chore = {**copy.deepcopy(real), "id": 12, "tag_name": "v0.19.0", "published_at": "2024-03-06T18:47:00Z",
             "body": "### Features\n* **api:** add enum to model param for message\n"}
    clock = Clock(T0)
    with responses.RequestsMock() as rsps:
        rsps.get(URL, json=[launch, chore, real], headers=real_headers())
        feed = GitHubLaunchFeed(GitHubReleasesClient(requests.Session(), None, clock=clock, sleep=lambda s: None),
                                repos=(REPO,), clock=clock, poll_interval_s=600)
        events = feed.events(T0)
        assert [(e.kind, e.subject) for e in events] == [("ai_model_launch", f"{REPO}:claude-3-5-sonnet-20240620")]
        e = events[0]
        assert e.happened_at == datetime(2024, 6, 20, 13, 56, tzinfo=UTC) and e.known_at == T0   # first poll saw it
        rsps.replace(responses.GET, URL, status=304, headers={"ETag": real_headers()["ETag"]})
        clock.t = T0 + timedelta(minutes=11)
        assert feed.events(clock.t) == events and feed.not_modified == 1   # ETag: 304, nothing new
        assert rsps.calls[1].request.headers["If-None-Match"] == real_headers()["ETag"]
    assert launch_lines("* add o3-mini") and not launch_lines("* **models:** add to_dict & to_json helper methods")


# --------------------------------------------------------------------------- strategy 4 on real data
def test_shock_detected_when_igv_answered_and_not_when_it_ignored(shared_data):
    igv = ReplayMarketData(shared_data, ["IGV"]).history("IGV")
    p, ls = AiDisruptionParams(), launches()
    shock = find_shock(igv, ls["claude-3"], p)
    assert shock is not None and date.fromtimestamp(shock.confirm_ts) == date(2024, 3, 5)
    assert shock.z <= -p.shock_z and shock.move_pct < -1.5
    _, z, confirm = watch(igv, ls["gpt-4o"], p)      # GPT-4o: IGV rose over the window
    assert confirm is None and z > 0
    assert find_shock(igv, ls["claude-3.5-sonnet"], p) is None


def _signals_at(folder: Path, now: datetime):
    m = ReplayMarketData(folder, SAAS, event_feeds=build_event_feeds([DataNeed("events", "ai_model_launch")], folder))
    snap = m.snapshot(now)
    plugin = AiDisruption()
    ctx = StrategyContext(now, snap, RegimeReading(Regime.HIGH_VOL, 0.9, "test", now))
    live = plugin.live_shock(snap)
    shock = None if live is None else (live[0].launch.subject, live[0].first, live[0].confirm, live[0].z,
                                       live[0].move_pct, live[0].confirm_ts, live[1])
    return [dataclasses.astuple(s) for s in plugin.generate_signals(ctx)], shock


def test_detection_never_uses_a_session_after_the_cycle(tmp_path):
    cut = pd.Timestamp("2024-03-06T00:00:00Z")
    perturbed_copy(SHIPPED_DATA, tmp_path / "scrambled", cut)
    for now in (datetime(2024, 3, 5, 22, tzinfo=UTC), datetime(2024, 3, 6, 0, tzinfo=UTC)):
        real, live = _signals_at(SHIPPED_DATA, now)
        assert _signals_at(tmp_path / "scrambled", now) == (real, live)
    assert live is not None and live[0] == "claude-3" and live[-1] == 1   # day 1
    assert any(s[0] == "LZ" and "ai_shock_impaired" in s for s in real)


class FixedRegime:
    name = "fixed"

    def __init__(self, regime):
        self.regime = regime

    def detect(self, market):
        return RegimeReading(self.regime, 0.9, self.name, market.now)


@pytest.fixture(scope="module")
def shock_session(tmp_path_factory):
    """The engine over the Claude 3 shock (2024-03-05), regime held at HIGH_VOL (one of the plugin's)."""
    from hydra_engine.app import build_sim_session, run_session
    from hydra_engine.tradelog import load_session
    settings = make_settings(tmp_path_factory.mktemp("shock"), start="2024-03-01", end="2024-03-26",
                             symbols=SAAS, data_only=(), observation_cycles=0,
                             strategies={"enabled": ["ai_disruption"]})
    session = build_sim_session(settings)
    session.engine.regime_detector = FixedRegime(Regime.HIGH_VOL)
    summary = run_session(session, progress=False)
    return load_session(summary["log"])


def test_day1_short_of_lz_is_refused_by_capability_with_the_reason(shock_session):
    refused = [(c["ts"], d) for c in shock_session["cycle_details"] for d in c["decisions"]
               if d["symbol"] == "LZ" and d["strategy"] == "ai_disruption"]
    assert refused, "no LZ short was proposed on day 1-2"
    for ts, d in refused:
        assert not d["approved"] and d["rule"] == "not_shortable" and "LZ cannot be sold short" in d["reason"]
        assert "2024-03-05T21" <= ts < "2024-03-08"          # days 1-2 after the 2024-03-05 confirmation
    assert not [f for f in shock_session["fills"] if f["symbol"] == "LZ"]


def test_dip_buys_come_after_the_slowdown_rule(shock_session):
    buys = [(c["ts"], d, c) for c in shock_session["cycle_details"] for d in c["decisions"]
            if d["approved"] and d["symbol"] in ("CRM", "SHOP", "ADBE", "MSFT", "WDAY")]
    assert buys, "no dip was bought on days 3-10"
    import re
    days = set()
    for ts, d, c in buys:
        sig = [s for s in c["signals"] if s["symbol"] == d["symbol"] and s["source"] == "ai_shock_dip"]
        assert sig and "selling slowed: IGV up" in sig[0]["thesis"]
        day, launch = re.match(r"day (\d+) of the (\S+) shock", sig[0]["thesis"]).groups()
        assert 3 <= int(day) <= 10, sig[0]["thesis"]           # days 3-10 of the shock only
        days.add((launch, int(day)))
    assert any(launch == "claude-3" for launch, _ in days)   # the 2024-03-05 shock's dips (from 2024-03-08)
    exits = [t for t in shock_session["trades"] if t["strategy"] == "ai_disruption"]
    assert all(t["exit_time"] <= "2024-03-26" for t in exits)


# --------------------------------------------------------------------------- strategy 5
def test_risk_off_rule_fires_on_a_known_risk_off_day_and_not_on_a_calm_one(shared_data):
    m = ReplayMarketData(shared_data, ["SPY", "HYG"], data_only=["VIX"])
    def reading(day):
        snap = m.snapshot(datetime.fromisoformat(day + "T23:00:00+00:00"))
        return risk_off(aligned_closes(snap, ["HYG", "SPY", "VIX"], 64))
    on = reading("2022-06-14")          # after the 2022-06-13 sell-off (CPI shock, SPY -3.9 %)
    assert on.on and on.z["SPY"] < -2 and on.z["HYG"] < -2, on.reason
    calm = reading("2024-05-20")
    assert not calm.on and "no risk-off" in calm.reason


def test_graph_up_to_a_date_is_unchanged_when_later_data_is_scrambled(tmp_path):
    cut = pd.Timestamp("2024-04-01T00:00:00Z")
    perturbed_copy(SHIPPED_DATA, tmp_path / "scrambled", cut)
    out = []
    for folder in (SHIPPED_DATA, tmp_path / "scrambled"):
        m = ReplayMarketData(folder, ["SPY", "TLT", "GLD", "BTC/USD", "HYG"], data_only=["VIX"])
        cache = GraphCache(GraphParams())
        for now in pd.date_range(pd.Timestamp("2024-02-01", tz="UTC"), cut, freq="7D"):
            cache.refresh(m.snapshot(now.to_pydatetime()))
        g = cache.graph
        out.append((sorted(g.edges(data=True)), g.graph["tests"], cache.rets.tobytes()))
    assert len(out[0][1]) >= 25   # every pair x lag test (edges or not) is compared
    assert out[0] == out[1], "the graph changed with data after the cut"


def test_modifier_scaling_is_in_the_trace_and_in_explain(shared_data):
    from hydra_engine.commands.explain import explain_cycle
    from hydra_engine.plugin_kinds import apply_modifiers
    now = datetime(2021, 12, 31, 22, tzinfo=UTC)
    m = ReplayMarketData(shared_data, ["SPY", "TLT", "GLD", "BTC/USD", "HYG"], data_only=["VIX"])
    mod = CrossAssetModifier({"method": "granger", "min_effect": 0.0})   # 2021: SPY->HYG, TLT->HYG (1 day)
    sig = Signal(symbol="HYG", score=0.5, confidence=0.5, source="probe", created_at=now,
                 half_life=timedelta(days=1), thesis="probe")
    errors = []
    out, trace = apply_modifiers([mod], [sig], SignalContext(now, m.snapshot(now), RegimeReading(
        Regime.UNKNOWN, 0.0, "t", now)), errors)
    assert not errors and len(trace) == 1 and trace[0]["symbol"] == "HYG"
    assert "->HYG lag 1d" in trace[0]["reason"] and out[0].confidence == pytest.approx(0.5 * trace[0]["factor"], abs=1e-4) != 0.5
    text = explain_cycle({"cycle": 1, "ts": now.isoformat(), "modifiers": trace, "signals": [], "aggregated": {},
                          "proposals": [], "decisions": [], "orders": [], "fills": [], "exits": [],
                          "regime": {"regime": "UNKNOWN", "confidence": 0}}, symbol="HYG")
    assert "MODIFIERS" in text and "cross_asset: HYG probe x" in text and "->HYG lag 1d" in text
