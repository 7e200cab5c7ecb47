"""The liquidation-cascade hunter on real Binance funding and Bybit open interest."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from hydra_engine.aggregator import SignalAggregator
from hydra_engine.data.replay import ReplayMarketData
from hydra_engine.domain import Regime, RegimeReading, Side
from hydra_engine.strategy import ExitRequest, StrategyContext
from strategies.liquidation_cascade import LiquidationCascadeHunter

UTC = timezone.utc


@pytest.fixture(scope="module")
def crypto(shared_data):
    return ReplayMarketData(shared_data, ["BTC/USD", "ETH/USD"])


def hourly(start: datetime, end: datetime):
    t = start
    while t < end:
        yield t
        t += timedelta(hours=1)


def signals_between(market, start, end, held=None):
    hunter = LiquidationCascadeHunter()
    regime = RegimeReading(Regime.TRENDING_UP, 1.0, "test", start)
    out = []
    for now in hourly(start, end):
        out += hunter.generate_signals(StrategyContext(now, market.snapshot(now), regime, held or {}))
    return out


def test_fires_on_the_march_2024_funding_spike(crypto):
    # Binance BTCUSDT funding settled at 0.0830 % on 2024-03-05 08:00 and 0.0881 % at 16:00 UTC,
    # well above the 0.05 % per 8 h threshold: an over-levered long crowd.
    sigs = signals_between(crypto, datetime(2024, 3, 5, 8, tzinfo=UTC), datetime(2024, 3, 6, tzinfo=UTC))
    funding = [s for s in sigs if s.source == "funding_rate" and s.symbol == "BTC/USD"]
    assert funding, "the hunter must fire on the 2024-03-05 funding spike"
    assert all(s.score < 0 for s in funding)                      # downside bias
    assert max(s.confidence for s in funding) == pytest.approx(min(0.8, 0.000881 * 500), rel=1e-2)
    assert any("0.0881" in s.thesis for s in funding)


def test_rides_a_real_short_squeeze_cascade(crypto):
    # 2023-01-14, the January short squeeze: Bybit BTC open interest fell 22.3 % in the hour to 01:00
    # while price rose 4.9 % in that same hour (bar 00:00-01:00): shorts being liquidated -- ride it up.
    # The snapshot stamped 01:00 is the open interest at 01:00, visible at 01:00 with that bar.
    sigs = signals_between(crypto, datetime(2023, 1, 13, 23, tzinfo=UTC), datetime(2023, 1, 14, 3, tzinfo=UTC))
    cascade = [s for s in sigs if s.source == "oi_cascade" and s.symbol == "BTC/USD"]
    assert [s.created_at for s in cascade] == [datetime(2023, 1, 14, 1, tzinfo=UTC)]
    assert cascade[0].score > 0 and "-22.3% in 1h while price moved +4.91%" in cascade[0].thesis


def test_a_long_liquidation_is_not_read_as_a_squeeze(crypto):
    # 2024-03-05, the crash from the all-time high: open interest fell 7.4 % in the hour to 20:00 while
    # price fell 4.0 % in that hour; the next hour rebounded 0.7 %. Set against that next hour (as when
    # the open interest was made visible an hour late) it read as shorts being squeezed: a buy.
    sigs = signals_between(crypto, datetime(2024, 3, 5, 18, tzinfo=UTC), datetime(2024, 3, 5, 23, tzinfo=UTC))
    cascade = [s for s in sigs if s.source == "oi_cascade" and s.symbol == "BTC/USD"]
    assert [s.created_at for s in cascade] == [datetime(2024, 3, 5, 20, tzinfo=UTC)]
    assert cascade[0].score < 0 and "price moved -4.00%" in cascade[0].thesis


def test_quiet_in_a_calm_stretch(crypto):
    # July 2023: BTC and ETH funding stayed near 0.01 % and no hourly open-interest drop exceeded 5 %.
    sigs = signals_between(crypto, datetime(2023, 7, 1, tzinfo=UTC), datetime(2023, 8, 1, tzinfo=UTC))
    assert sigs == []


def test_downside_view_closes_longs_and_never_shorts(crypto):
    now = datetime(2024, 3, 5, 17, tzinfo=UTC)
    hunter = LiquidationCascadeHunter()
    snap = crypto.snapshot(now)
    regime = RegimeReading(Regime.TRENDING_UP, 1.0, "test", now)
    for held, expect_exit in (({"BTC/USD": 0.03}, True), ({}, False)):
        ctx = StrategyContext(now, snap, regime, held)
        combined = SignalAggregator().combine(hunter.generate_signals(ctx), now)
        assert combined["BTC/USD"].score < 0
        out = hunter.propose(ctx, combined)
        exits = [o for o in out if isinstance(o, ExitRequest) and o.symbol == "BTC/USD"]
        assert bool(exits) is expect_exit
        assert not any(getattr(o, "side", None) is Side.SELL for o in out)  # spot crypto: no shorts


def test_upside_cascade_proposes_a_bounded_long(crypto):
    now = datetime(2023, 1, 14, 1, tzinfo=UTC)
    hunter = LiquidationCascadeHunter()
    ctx = StrategyContext(now, crypto.snapshot(now), RegimeReading(Regime.TRENDING_UP, 1.0, "t", now), {})
    combined = SignalAggregator().combine(hunter.generate_signals(ctx), now)
    assert combined["BTC/USD"].score >= hunter.params.entry_score
    proposals = [p for p in hunter.propose(ctx, combined) if not isinstance(p, ExitRequest)]
    [btc] = [p for p in proposals if p.symbol == "BTC/USD"]
    assert btc.side is Side.BUY and btc.max_notional_usd == 2000 and btc.min_notional_usd == 200
    assert btc.reward_risk == pytest.approx(2.0)


def test_declares_regimes_assets_and_data_needs():
    h = LiquidationCascadeHunter
    assert h.regimes == {Regime.HIGH_VOL, Regime.CRASH, Regime.TRENDING_UP, Regime.TRENDING_DOWN}
    assert h.assets == ("BTC/USD", "ETH/USD")
    assert {(d.kind, d.symbol) for d in h.data_needs} >= {("funding_rate", "BTC/USD"), ("open_interest", "ETH/USD")}


def test_no_opinion_when_the_bars_around_the_open_interest_drop_are_missing():
    """The price move must span the hour of the open-interest change: with the bars before it missing,
    the close 'at' the earlier snapshot would be hours older and the move would span other hours."""
    import numpy as np
    from hydra_engine.ports import BarSeries, MarketSnapshot, PointSeries
    now = datetime(2023, 10, 23, 23, tzinfo=UTC)
    t = lambda h: datetime(2023, 10, 23, h, tzinfo=UTC).timestamp()  # noqa: E731
    oi = PointSeries("open_interest", "BTC/USD", np.array([t(22), t(23)]), np.array([100.0, 80.0]))

    def market(opens):
        ts = np.array([t(h) for h in opens])
        c = np.linspace(30_000, 31_000, len(ts))
        bars = BarSeries("BTC/USD", 3600, ts, c, c, c, c, np.ones_like(c))
        return MarketSnapshot(now, {"BTC/USD": bars}, {("open_interest", "BTC/USD"): oi})

    hunter = LiquidationCascadeHunter()
    assert hunter._cascade_signal(market([18, 19, 20, 21, 22]), "BTC/USD").score > 0   # bars close 19..23
    assert hunter._cascade_signal(market([17, 18, 22]), "BTC/USD") is None             # 19:00..22:00 missing
