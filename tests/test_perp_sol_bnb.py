"""SOLUSDT and BNBUSDT replayed on other venues' perp prices (issue #20): OKX hourly SOL bars, Hyperliquid
8-hour BNB candles, Binance funding and Bybit open interest; no taker flow, so the primitives that read it
stand down for them. Real files under the shared data folder."""
from __future__ import annotations

import tempfile
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hydra_engine.coverage import coverage_report
from hydra_engine.data.catalog import BAR_SOURCES, POINT_SOURCES, read_bars
from hydra_engine.data.perp_venues import HYPERLIQUID_FIRST_REAL
from hydra_engine.data.replay import ReplayMarketData
from hydra_engine.gate import GateContext, GateState
from hydra_engine.domain import UTC, Order, OrderType, Side, TimeInForce
from hydra_engine.perp.stats import perp_state
from hydra_engine.perp.tradability import PerpDataHealthRule
from hydra_engine.perp.wiring import build_perp_venue
from strategies.perp_primitives import (CrowdingFade, FundingCarry, FundingSqueeze, LiquidationReversal,
                                        OIDivergence)

from .conftest import make_settings

D = Decimal
PAIR = ["SOLUSDT", "BNBUSDT"]


def bars(shared_data, symbol):
    src = BAR_SOURCES[symbol]
    return read_bars(shared_data / src.path, src)


def _sane(f: pd.DataFrame, step: pd.Timedelta):
    assert not f.open_time.duplicated().any() and f.open_time.is_monotonic_increasing
    assert (f.close_time - f.open_time == step).all()
    o, h, lo, c = (f[k].to_numpy() for k in ("open", "high", "low", "close"))
    assert np.isfinite([o, h, lo, c]).all() and (lo > 0).all()
    assert (h >= np.maximum(o, c)).all() and (lo <= np.minimum(o, c)).all()


def test_sol_is_okx_hourly_from_the_first_perp_bar(shared_data):
    f = bars(shared_data, "SOLUSDT")
    assert BAR_SOURCES["SOLUSDT"].path.startswith("crypto_perp/okx/")
    assert f.open_time.iloc[0] == pd.Timestamp("2021-01-22 06:00", tz="UTC")      # spot-only rows before: dropped
    assert f.open_time.iloc[-1] == pd.Timestamp("2025-05-31 23:00", tz="UTC")
    assert len(f) == 38178 and (f.open_time.diff().dropna() == pd.Timedelta(hours=1)).all()
    _sane(f, pd.Timedelta(hours=1))
    # open-stamped: the 2024-01-01 00:00 bar is the file's row at 00:00, read straight through
    raw = pd.read_parquet(shared_data / BAR_SOURCES["SOLUSDT"].path).set_index("timestamp")
    row = f.set_index("open_time").loc[pd.Timestamp("2024-01-01 00:00", tz="UTC")]
    assert row.open == raw.loc["2024-01-01 00:00", "open_perp_okx"] and row.close == raw.loc["2024-01-01 00:00", "close_perp_okx"]


def test_bnb_is_hyperliquid_8h_candles_without_the_placeholders(shared_data):
    f = bars(shared_data, "BNBUSDT")
    assert f.open_time.iloc[0] == HYPERLIQUID_FIRST_REAL == pd.Timestamp("2023-02-26 16:00", tz="UTC")
    assert f.open_time.iloc[-1] == pd.Timestamp("2025-05-31 16:00", tz="UTC")
    assert (f.open_time.dt.hour % 8 == 0).all() and (f.open_time.diff().dropna() == pd.Timedelta(hours=8)).all()
    _sane(f, pd.Timedelta(hours=8))
    # the file repeats each candle over 8 hourly rows; one bar per candle, equal to those rows
    raw = pd.read_parquet(shared_data / BAR_SOURCES["BNBUSDT"].path)
    block = raw.loc["2024-01-01 08:00":"2024-01-01 15:00"]
    assert len(block) == 8 and block.close_perp.nunique() == 1
    bar = f.set_index("open_time").loc[pd.Timestamp("2024-01-01 08:00", tz="UTC")]
    assert bar.close == block.close_perp.iloc[0] and bar.high == block.high_perp.iloc[0]
    assert (raw.index < HYPERLIQUID_FIRST_REAL).sum() > 1000   # placeholders exist in the file, none read


def test_a_file_that_is_not_8h_candles_is_refused(tmp_path, shared_data):
    raw = pd.read_parquet(shared_data / BAR_SOURCES["BNBUSDT"].path).loc["2024-01-01":"2024-01-02"].copy()
    raw.iloc[3, raw.columns.get_loc("close_perp")] += 1.0          # one hourly row differs inside a candle
    bad = tmp_path / "hl.parquet"
    raw.to_parquet(bad)
    with pytest.raises(ValueError, match="not 8-hour candles"):
        read_bars(bad, BAR_SOURCES["BNBUSDT"])


def test_funding_and_open_interest_but_no_taker_flow(shared_data):
    kinds = {(p.kind, p.symbol) for p in POINT_SOURCES}
    for s in PAIR:
        assert ("funding_rate", s) in kinds and ("open_interest", s) in kinds and ("taker_buy_ratio", s) not in kinds
    m = ReplayMarketData(shared_data, PAIR, start=date(2024, 1, 1), end=date(2024, 1, 15))
    rep = coverage_report(m, [CrowdingFade()], datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 15, tzinfo=UTC))
    got = {(r["symbol"], r["kind"]): r["status"] for r in rep["rows"]}
    assert all(got[(s, k)] == "full" for s in PAIR for k in ("bars", "funding_rate", "open_interest"))
    lost = rep["strategy_losses"]["crowding_fade"]
    assert "taker_buy_ratio SOLUSDT: not in the data" in lost and "taker_buy_ratio BNBUSDT: not in the data" in lost


def test_a_series_the_data_has_but_the_run_did_not_load_is_not_called_missing(shared_data):
    """The shipped universe trades BTC/ETH perps; the primitives also declare SOL and BNB. The folder has
    their bars, funding and open interest, so the coverage table says the run left them out, not the data."""
    m = ReplayMarketData(shared_data, ["BTCUSDT"], start=date(2024, 1, 1), end=date(2024, 1, 3))
    rep = coverage_report(m, [CrowdingFade()], datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 3, tzinfo=UTC))
    lost = rep["strategy_losses"]["crowding_fade"]
    for kind in ("bars", "funding_rate", "open_interest"):
        assert f"{kind} SOLUSDT: not in this run's universe (the data has it)" in lost, lost
    assert "taker_buy_ratio SOLUSDT: not in the data" in lost


@pytest.mark.parametrize("when", [datetime(2024, 1, 10, 2, tzinfo=UTC), datetime(2024, 3, 5, 17, tzinfo=UTC)])
def test_the_primitives_stand_down_rather_than_crash(shared_data, when):
    m = ReplayMarketData(shared_data, PAIR, start=(when - timedelta(days=30)).date(), end=when.date() + timedelta(days=1))
    snap = m.snapshot(when)
    sol, bnb = perp_state(snap, "SOLUSDT"), perp_state(snap, "BNBUSDT")
    assert sol.taker_buy_sell_24h is None and sol.price is not None and sol.funding is not None
    assert CrowdingFade().idea(snap, "SOLUSDT") is None                # needs taker flow
    # BNB's 8-hour candles do not feed the hourly statistics: none computed, the state unhealthy and saying
    # why, so the primitives reading bar statistics give no idea and the data-health gate blocks any entry
    assert not bnb.healthy and any("8 h candles" in p for p in bnb.health_problems)
    assert bnb.price_change_24h is None and bnb.vol_regime is None and bnb.taker_buy_sell_24h is None
    for primitive in (FundingSqueeze, LiquidationReversal, OIDivergence, CrowdingFade, FundingCarry):
        primitive().idea(snap, "SOLUSDT")                              # runs (may or may not signal)
        idea = primitive().idea(snap, "BNBUSDT")
        assert idea is None or primitive in (FundingSqueeze, FundingCarry)   # funding/OI-only rules may
    for side in (Side.BUY, Side.SELL):
        v = PerpDataHealthRule(PAIR).check(GateContext(snap.now, snap, None), "BNBUSDT", side)
        assert v.state is GateState.BLOCK and "8 h candles" in v.reason


def test_held_sol_and_bnb_positions_settle_every_funding_once(shared_data):
    """Both held over the same settlements: each pays every 8-hour settlement it holds through, at the
    real Binance rate and the open of its own venue's bar starting then (before the fix the shared funding
    cursor skipped the second symbol's same-instant settlement)."""
    s = make_settings(Path(tempfile.mkdtemp()), data_dir=shared_data, start="2024-01-01", end="2024-01-15",
                      perps={"enabled": True, "symbols": PAIR})
    m = ReplayMarketData(shared_data, PAIR, start=date(2024, 1, 1), end=date(2024, 1, 15))
    venue = build_perp_venue(s, market=m, folder=shared_data, start=datetime(2024, 1, 1, tzinfo=UTC),
                             end=datetime(2024, 1, 15, tzinfo=UTC))
    qty = {"SOLUSDT": "10", "BNBUSDT": "3"}
    t0, t1 = datetime(2024, 1, 3, 1, tzinfo=UTC), datetime(2024, 1, 5, 1, tzinfo=UTC)

    def walk(a, b):
        t = a
        while t < b:
            t += timedelta(hours=1)
            venue.update_marks({k: float(m.snapshot(t).bars[k].close[-1]) for k in PAIR}, t)
            venue.poll_fills(t)

    venue.update_marks({k: float(m.snapshot(t0).bars[k].close[-1]) for k in PAIR}, t0)
    for sym in PAIR:
        venue.set_leverage(sym, 3)
        venue.submit(Order("open-" + sym, sym, Side.BUY, D(qty[sym]), OrderType.MARKET, TimeInForce.GTC, t0, "test"))
    walk(t0, t1)
    for sym in PAIR:
        venue.submit(Order("close-" + sym, sym, Side.SELL, D(qty[sym]), OrderType.MARKET, TimeInForce.GTC, t1, "test",
                           reduce_only=True))
    walk(t1, t1 + timedelta(hours=16))
    trades = {t.symbol: t for t in venue.closed_trades}
    assert set(trades) == set(PAIR)
    rates = {sym: pd.read_parquet(shared_data / f"crypto_perp/binance_usdm/funding/{sym}_funding_8h.parquet").funding_rate
             for sym in PAIR}
    for sym in PAIR:
        t = trades[sym]
        paid = [r.payment for r in venue.funding_log if r.payment.symbol == sym]
        expected_times = [x for x in pd.date_range("2024-01-03", "2024-01-06", freq="8h", tz="UTC")
                          if t.opened_at < x <= t.closed_at]   # a settlement precedes a fill at its instant
        assert [p.ts for p in paid] == [x.to_pydatetime() for x in expected_times] and len(paid) >= 5
        f = bars(shared_data, sym).set_index("open_time")
        for p in paid:
            assert p.mark_price == D(repr(float(f.loc[pd.Timestamp(p.ts)].open)))
            rate = rates[sym][rates[sym].index.floor("s") == pd.Timestamp(p.ts)]
            assert len(rate) == 1 and p.rate == D(repr(float(rate.iloc[0]))).quantize(p.rate)
            assert p.amount_usd == -D(qty[sym]) * p.mark_price * p.rate
        assert t.funding_usdt == sum(p.amount_usd for p in paid) != 0


def test_a_backtest_with_sol_and_bnb_marks_them_and_does_not_crash(tmp_path, shared_data):
    names = ["funding_squeeze", "liquidation_reversal", "oi_divergence", "crowding_fade", "funding_carry"]
    settings = make_settings(tmp_path, data_dir=shared_data, start="2024-01-01", end="2024-01-15",
                             symbols=("BTC/USD",), data_only=(), strategies={"enabled": names},
                             perps={"enabled": True, "symbols": ["BTCUSDT", "SOLUSDT", "BNBUSDT"]})
    from hydra_engine.app import build_sim_session, run_session
    session = build_sim_session(settings, persist=False)
    reports = []
    session.engine.cycle_end_hooks.append(lambda *a, **k: reports.append(session.engine.last_report))
    summary = run_session(session, progress=False)
    reports = [r for r in reports if r]        # a cycle the horizon skipped leaves no report
    assert summary["errors"] == 0 and len(reports) > 300
    sol = bars(shared_data, "SOLUSDT").set_index("close_time")
    bnb = bars(shared_data, "BNBUSDT").set_index("close_time")
    for r in reports:
        now = pd.Timestamp(r["ts"])
        assert r["prices"]["SOLUSDT"] == sol.close[sol.index <= now].iloc[-1]     # the newest closed bar
        assert r["prices"]["BNBUSDT"] == bnb.close[bnb.index <= now].iloc[-1]
        assert "SOLUSDT" not in r["stale_symbols"] and "BNBUSDT" not in r["stale_symbols"]
    venue = session.engine.broker.venues["perp"]
    # any trade on the pair books funding consistently with the venue (none may happen in two weeks)
    for t in venue.closed_trades:
        assert t.funding_usdt == sum(r.payment.amount_usd for r in venue.funding_log
                                     if r.payment.symbol == t.symbol and t.opened_at < r.payment.ts <= t.closed_at)
