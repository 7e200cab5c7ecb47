"""Strategy 3, the precious-metals margin and ratio trader (issue #18), on real data: the 2011 COMEX silver
margin hikes from the shipped margin history, and GLD/SLV/GDX daily bars from ../shared/data."""
from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from hydra_engine.data.event_files import CME_MARGINS_FILE, read_cme_margins
from hydra_engine.domain import UTC, Regime, RegimeReading, Side, TradeProposal
from hydra_engine.gate import GateContext, GateState
from hydra_engine.ports import BarSeries, MarketSnapshot
from hydra_engine.strategy import ExitRequest, StrategyContext
from strategies.metals_margin import MarginHikeLongBlock, MetalsMarginTrader, ounces_per_share

from .conftest import SHIPPED_DATA


def _daily(shared: "Path", symbol: str) -> pd.DataFrame:
    raw = pd.read_csv(shared / f"equities/daily/alphavantage_backtester/{symbol}.csv.gz").sort_values("timestamp")
    day = pd.to_datetime(raw["timestamp"])
    raw["close_ts"] = (day + pd.Timedelta(hours=16)).dt.tz_localize("America/New_York").dt.tz_convert("UTC")
    raw["open_ts"] = (day + pd.Timedelta(hours=9, minutes=30)).dt.tz_localize("America/New_York").dt.tz_convert("UTC")
    return raw


class Replay:
    """Snapshots of daily GLD/SLV/GDX and the CME margin events, by hand (the engine's replay data start in 2020)."""

    def __init__(self, shared):
        self.frames = {s: _daily(shared, s) for s in ("GLD", "SLV", "GDX")}
        self.events = read_cme_margins(SHIPPED_DATA / CME_MARGINS_FILE)

    def snapshot(self, now: datetime, history: int = 300) -> MarketSnapshot:
        bars, closes = {}, {}
        for s, f in self.frames.items():
            f = f[f["close_ts"] <= now].tail(history)
            ts = np.array([int(t.timestamp()) for t in f["open_ts"]], dtype=np.int64)
            bars[s] = BarSeries(s, 86400, ts, *(f[c].to_numpy(float) for c in ("open", "high", "low", "close", "volume")))
            closes[s] = float(f["close"].iloc[-1])
        known = tuple(sorted((e for e in self.events if e.known_at <= now), key=lambda e: e.happened_at))
        return MarketSnapshot(now, bars, closes=closes, events=known)


def _cycle(plugin, snap, held=None):
    ctx = StrategyContext(snap.now, snap, RegimeReading(Regime.HIGH_VOL, 0.8, "test", snap.now), held or {})
    from hydra_engine.aggregator import SignalAggregator
    signals = plugin.generate_signals(ctx)
    return signals, plugin.propose(ctx, SignalAggregator().combine(signals, snap.now))


def test_2011_silver_margin_hikes_give_the_short_bias_within_the_window(shared_data):
    data, plugin = Replay(shared_data), MetalsMarginTrader()
    hikes = [e for e in data.events if e.subject == "SI" and e.happened_at.year == 2011 and e.happened_at.month in (4, 5)
             and e.payload["direction"] == "hike"]
    assert [e.happened_at.date() for e in hikes] == [date(2011, 4, 26), date(2011, 4, 29), date(2011, 5, 3),
                                                      date(2011, 5, 5), date(2011, 5, 9)]
    for e in hikes:
        # the first daily close after the change took effect (17:00 New York): within 24-48 h
        now = e.happened_at + timedelta(hours=23)
        snap = data.snapshot(now)
        signals, proposals = _cycle(plugin, snap)
        margin = [s for s in signals if s.source == "cme_margin"]
        assert {s.symbol for s in margin} == {"SLV", "GDX"} and all(s.score < 0 for s in margin)
        shorts = {p.symbol: p for p in proposals if isinstance(p, TradeProposal) and p.side is Side.SELL}
        assert "SLV" in shorts and shorts["SLV"].stop_price > shorts["SLV"].entry_price
        assert timedelta(hours=24) >= now - e.happened_at >= timedelta(0)
        # the window closes 48 h after the change: no margin signal then
        late, _ = _cycle(MetalsMarginTrader(), data.snapshot(e.happened_at + timedelta(hours=49)))
        assert not [s for s in late if s.source == "cme_margin" and s.created_at == max(e.happened_at, e.known_at)]
    # a bigger hike gives more confidence (16.7 % on 2011-05-05 vs 9.2 % on 2011-04-26)
    conf = {e.happened_at.date(): next(s.confidence for s in _cycle(MetalsMarginTrader(), data.snapshot(
        e.happened_at + timedelta(hours=23)))[0] if s.source == "cme_margin") for e in hikes}
    assert conf[date(2011, 5, 5)] > conf[date(2011, 4, 26)]


def test_hike_window_blocks_longs_through_the_gate(shared_data):
    data = Replay(shared_data)
    rule = MetalsMarginTrader().gate_rules()[0]
    assert isinstance(rule, MarginHikeLongBlock)
    now = datetime(2011, 4, 27, 20, 0, tzinfo=UTC)
    ctx = GateContext(now, data.snapshot(now), None)
    assert rule.check(ctx, "SLV", Side.BUY).state is GateState.RESTRICT
    assert rule.check(ctx, "SLV", Side.SELL) is None           # a short is what the rule wants
    assert rule.check(ctx, "GLD", Side.BUY) is None            # a silver hike does not touch gold
    later = datetime(2011, 6, 1, 20, 0, tzinfo=UTC)
    assert rule.check(GateContext(later, data.snapshot(later), None), "SLV", Side.BUY) is None


def test_ratio_beyond_one_and_a_half_sigma_gives_the_pair(shared_data):
    data, plugin = Replay(shared_data), MetalsMarginTrader()
    # scan 2019-2020 daily closes for the first day whose ratio z is beyond +-1.5 (no margin event near)
    days = data.frames["GLD"]["close_ts"]
    days = days[(days >= pd.Timestamp("2019-01-01", tz="UTC")) & (days < pd.Timestamp("2020-12-01", tz="UTC"))]
    for ts in days:
        now = ts.to_pydatetime()
        snap = data.snapshot(now)
        z = plugin.ratio_z(snap)
        if z is not None and abs(z) > 1.5:
            break
    else:
        pytest.fail("no ratio beyond 1.5 sigma in 2019-2020")
    signals, proposals = _cycle(plugin, snap)
    ratio = {s.symbol: s.score for s in signals if s.source == "gs_ratio"}
    cheap, rich = ("SLV", "GLD") if z > 0 else ("GLD", "SLV")
    assert ratio[cheap] > 0 > ratio[rich]
    sides = {p.symbol: p.side for p in proposals if isinstance(p, TradeProposal)}
    assert sides == {cheap: Side.BUY, rich: Side.SELL}
    # held legs are closed once |z| is back inside z_exit
    plugin.params = plugin.Params(z_exit=10.0)
    _, exits = _cycle(plugin, snap, held={cheap: 10.0, rich: -10.0})
    assert {e.symbol for e in exits if isinstance(e, ExitRequest)} == {cheap, rich}


def test_ounces_per_share_follow_the_trusts():
    assert ounces_per_share("GLD", date(2004, 11, 18)) == pytest.approx(0.1)
    assert 0.092 < ounces_per_share("GLD", date(2024, 1, 2)) < 0.094     # GLD's published NAV oz ~0.0929 (2024)
    assert ounces_per_share("SLV", date(2008, 7, 23)) > 9 and 0.9 < ounces_per_share("SLV", date(2008, 7, 25)) < 1


def test_premium_rule_is_inactive_without_the_series(shared_data):
    data, plugin = Replay(shared_data), MetalsMarginTrader()
    _cycle(plugin, data.snapshot(datetime(2011, 4, 27, 20, 0, tzinfo=UTC)))
    assert any("physical-premium rule inactive" in n for n in plugin.report_notes())
