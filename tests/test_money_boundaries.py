"""Boundaries of the money path that mutation testing found unpinned (sizing, order rounding, limits).

Each test names the realistic bug it guards against. Offline, deterministic, no shared data."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hydra_engine.brokers.capabilities import DEFAULT_ASSET_SPECS, crypto_spec, validate_and_round
from hydra_engine.brokers.sim import SimulatedBroker
from hydra_engine.config import RiskConfig
from hydra_engine.domain import (AssetClass, ClosedTrade, Order, OrderStatus, OrderType, Position, Side, TimeInForce,
                                 TradeProposal)
from hydra_engine.ports import AssetSpec, InsufficientBuyingPower, InvalidOrder
from hydra_engine.risk import PortfolioView, RiskManager
from hydra_engine.sizing import SizingInputs, aligned_returns, kelly_f, size_notional, vol_multiplier

from .test_sim_broker import HOUR, FakeMarket, fill_now, mk_order
from .test_sim_broker import T0 as SIM_T0

D = Decimal
NOW = datetime(2025, 6, 24, 18, 0, tzinfo=timezone.utc)
SPY = DEFAULT_ASSET_SPECS["SPY"]


def _alternating(n: int, size: float) -> np.ndarray:
    """n log returns of +size, -size, ... (a deterministic series whose rolling std is exactly ~size)."""
    return size * np.where(np.arange(n) % 2 == 0, 1.0, -1.0)


def _close(rets: np.ndarray) -> np.ndarray:
    return 100.0 * np.exp(np.concatenate([[0.0], np.cumsum(rets)]))


# --------------------------------------------------------------------------- sizing
def test_kelly_clamps_the_win_probability_to_one():
    """A confidence above 1 must not give more than certainty's Kelly fraction (f* = 1)."""
    assert kelly_f(1.0, 2.0) == 1.0
    assert kelly_f(1.5, 2.0) == 1.0


def test_a_kelly_risk_cap_tie_is_named_kelly():
    """Docstring: ties go to the earlier rule. Kelly $20,000 (0.6, b=2, half) == risk cap 1 %/5 % × $100k."""
    x = SizingInputs(D(100_000), D(1_000_000), 0.6, 2.0, 0.05, max_position_pct=50.0, max_asset_pct=50.0,
                     max_total_exposure_pct=50.0)
    r = size_notional(x)
    assert r.candidates["kelly"] == r.candidates["risk_per_trade"] == D(20_000)
    assert (r.rule, r.notional_usd) == ("kelly", D("20000.00"))


def test_vol_scaling_starts_at_exactly_two_lookbacks_of_returns():
    """2·lookback returns are enough for a reference (the guard is ``< 2·lookback``): with 40 returns whose
    last 20 are twice as volatile, the size shrinks; with 39 there is no scaling."""
    rets = np.concatenate([_alternating(20, 0.01), _alternating(20, 0.02)])
    mult, info = vol_multiplier(_close(rets), lookback=20)
    assert "vol_note" not in info and mult < 0.9, info
    mult39, info39 = vol_multiplier(_close(rets[1:]), lookback=20)
    assert mult39 == 1.0 and "vol_note" in info39


def test_vol_multiplier_never_exceeds_its_ceiling_in_calm_markets():
    """Volatility halving must not double the size: the default ceiling 1 only ever shrinks."""
    rets = np.concatenate([_alternating(200, 0.02), _alternating(20, 0.01)])
    mult, info = vol_multiplier(_close(rets), lookback=20)
    assert mult == 1.0, info
    assert info["vol_median"] > 1.5 * info["vol_current"]      # the ceiling, not the data, holds it at 1
    loose, _ = vol_multiplier(_close(rets), lookback=20, ceiling=3.0)
    assert 1.8 < loose <= 2.2


def test_vol_multiplier_reads_the_window_ending_at_the_latest_bar():
    """A shock on the very last bar is the current volatility (not the window one bar earlier)."""
    rets = np.concatenate([_alternating(200, 0.01), [0.2]])
    mult, info = vol_multiplier(_close(rets), lookback=20)
    assert mult < 0.5, info


def test_aligned_returns_sample_the_other_series_as_of_each_grid_time_without_look_ahead():
    """Daily grid at 00:00; the hourly series closes at hh:30, so no hourly close falls on a grid time.
    Each grid time must take the last hourly close at or before it, never the next one."""
    rng = np.random.default_rng(11)
    day, hour = 86_400.0, 3_600.0
    daily_ts = day * np.arange(1, 41)
    daily_close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 40)))
    hourly_ts = 1_800.0 + hour * np.arange(24 * 42)
    hourly_close = 50 * np.exp(np.cumsum(rng.normal(0, 0.005, len(hourly_ts))))
    ra, rb = aligned_returns(daily_ts, daily_close, hourly_ts, hourly_close, 100)
    asof = np.array([hourly_close[np.flatnonzero(hourly_ts <= t)[-1]] for t in daily_ts])
    np.testing.assert_allclose(ra, np.diff(np.log(daily_close)))
    np.testing.assert_allclose(rb, np.diff(np.log(asof)))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(eq=st.integers(1_000, 10_000_000), bp=st.integers(0, 10_000_000), buffer=st.floats(0, 50),
       p=st.floats(0, 1), b=st.floats(0.1, 10), stop=st.floats(0.001, 0.5))
def test_size_keeps_the_buying_power_buffer(eq, bp, buffer, p, b, stop):
    """The existing property only checks ``<= buying power``; the buffer must hold as well."""
    x = SizingInputs(D(eq), D(bp), p, b, stop, buying_power_buffer_pct=buffer)
    r = size_notional(x)
    assert r.notional_usd <= D(bp) * (1 - D(repr(buffer)) / 100)


# --------------------------------------------------------------------------- order rounding / refusal
def _order(symbol="SPY", side=Side.BUY, qty="10", otype=OrderType.MARKET, tif=TimeInForce.DAY, purpose="entry", **kw):
    return Order(f"S1-t-{symbol.replace('/', '')}-000001", symbol, side, D(qty), otype, tif, NOW, "t",
                 purpose=purpose, **kw)


def test_a_notional_order_of_exactly_one_dollar_is_accepted():
    """Alpaca's minimum notional is $1: $1 itself is fine, $0.99 is not."""
    btc = DEFAULT_ASSET_SPECS["BTC/USD"]
    o = _order("BTC/USD", qty="0", tif=TimeInForce.GTC)
    assert validate_and_round(o, btc, notional_usd=D("1")).qty == 0
    with pytest.raises(InvalidOrder, match="at least \\$1"):
        validate_and_round(o, btc, notional_usd=D("0.99"))


def test_a_notional_order_is_not_held_to_a_minimum_quantity_it_does_not_state():
    """A notional order's quantity is the broker's to work out; it stood in as 1 unit and so was refused for
    any coin whose minimum order is above one unit (SHIB/USD: 100,000)."""
    shib = crypto_spec("SHIB/USD", min_order_size=D("100000"), qty_increment=D("1"), price_increment=D("0.00000001"))
    o = _order("SHIB/USD", qty="0", tif=TimeInForce.GTC)
    assert validate_and_round(o, shib, notional_usd=D("100")).qty == 0


def test_a_qty_above_the_increment_but_below_the_minimum_order_size_is_refused():
    """Real crypto rows have min_order_size far above min_trade_increment (e.g. min 0.001, increment
    0.000001): 0.0005 survives rounding but is below the minimum and must be refused locally."""
    spec = crypto_spec("SOL/USD", min_order_size=D("0.001"), qty_increment=D("0.000001"), price_increment=D("0.01"))
    with pytest.raises(InvalidOrder, match="below the minimum order size"):
        validate_and_round(_order("SOL/USD", qty="0.0005", tif=TimeInForce.GTC), spec)
    assert validate_and_round(_order("SOL/USD", qty="0.001", tif=TimeInForce.GTC), spec).qty == D("0.001")


def test_a_bracket_whose_take_profit_equals_its_stop_is_refused():
    with pytest.raises(InvalidOrder, match="wrong sides"):
        validate_and_round(_order(take_profit_price=D(300), stop_loss_price=D(300)), SPY)
    with pytest.raises(InvalidOrder, match="wrong sides"):
        validate_and_round(_order(side=Side.SELL, take_profit_price=D(300), stop_loss_price=D(300)), SPY)


def test_a_trailing_stop_of_100_percent_is_refused():
    o = _order(side=Side.SELL, qty="5", otype=OrderType.TRAILING_STOP, purpose="exit", trail_percent=D(100))
    with pytest.raises(InvalidOrder, match="must be in \\(0, 100\\)"):
        validate_and_round(o, SPY)
    ok = _order(side=Side.SELL, qty="5", otype=OrderType.TRAILING_STOP, purpose="exit", trail_percent=D("99.9"))
    assert validate_and_round(ok, SPY).trail_percent == D("99.9")


def test_a_non_fractionable_equity_rounds_to_whole_shares_whatever_its_increment():
    spec = AssetSpec("XYZ", AssetClass.EQUITY, fractionable=False, qty_increment=D("0.01"))
    assert spec.round_qty(D("2.75")) == 2


# --------------------------------------------------------------------------- risk brain


T0 = datetime(2024, 3, 4, 9, 0, tzinfo=timezone.utc)
RSPY = AssetSpec("SPY", AssetClass.EQUITY, shortable=True)
RBTC = AssetSpec("BTC/USD", AssetClass.CRYPTO, fractionable=True, qty_increment=D("0.0001"), min_order_size=D("0.0001"))


def _prop(symbol="SPY", entry=100.0, stop=98.0, target=104.0, side=Side.BUY, **kw) -> TradeProposal:
    return TradeProposal("test", symbol, side, entry, stop, target, 0.6, timedelta(hours=4), **kw)


def _view(equity=100_000, bp=None, positions=None, marks=None) -> PortfolioView:
    return PortfolioView(T0, D(equity), D(equity if bp is None else bp), positions or {}, marks or {})


def _pos(symbol: str, qty: str, price: float) -> Position:
    return Position(symbol, D(qty), D(repr(price)), "test", T0, price * 0.98, price * 1.04, initial_stop_price=price * 0.98)


def test_an_entry_exactly_at_the_plugins_min_notional_is_approved():
    """min_notional_usd is a floor ("below this the trade is not worth taking"): $3,000 at a $3,000 floor passes."""
    d = RiskManager(RiskConfig()).evaluate(_prop(min_notional_usd=3000.0), RSPY, _view())
    assert d.approved and d.notional_usd == D("3000.00")


def test_the_approved_notional_is_rounded_down_to_the_cent():
    """0.0489 BTC × $61,234.50 = $2,994.36705: reported as $2,994.36 (down, never above the real cost)."""
    d = RiskManager(RiskConfig()).evaluate(_prop("BTC/USD", entry=61234.5, stop=60009.81, target=63683.88), RBTC, _view())
    assert d.approved and d.qty == D("0.0489")
    assert d.qty * D("61234.5") == D("2994.36705")
    assert d.notional_usd == D("2994.36")


def test_a_short_position_counts_as_exposure_at_its_mark():
    """Gross exposure: -40 SPY marked at $110 uses $4,400 of the 5 % ($5,000) asset cap, so a new entry
    gets $600 -- not more because the position is short, and at the mark, not the $100 entry price."""
    v = _view(positions={"SPY": _pos("SPY", "-40", 100.0)}, marks={"SPY": 110.0})
    assert v.exposure_usd("SPY") == D(4400) and v.exposure_usd() == D(4400)
    d = RiskManager(RiskConfig()).evaluate(_prop(), RSPY, v)
    assert d.approved and d.rule == "max_asset_pct" and d.notional_usd == D("600.00")


def test_an_approval_reserves_buying_power_for_the_next_proposal_in_the_cycle():
    """$4,000 of buying power less the 5 % buffer: the first entry takes $3,000, the second sees $1,000 left
    ($950 after the buffer) -- not the whole $4,000 again."""
    v = _view(bp=4000)
    first = RiskManager(RiskConfig()).evaluate(_prop(), RSPY, v)
    assert first.approved and first.notional_usd == D("3000.00") and v.buying_power_usd == D(1000)
    second = RiskManager(RiskConfig()).evaluate(_prop("TLT"), replace_symbol(RSPY, "TLT"), v)
    assert second.approved and second.rule == "buying_power" and second.notional_usd == D("900.00")


def replace_symbol(spec: AssetSpec, symbol: str) -> AssetSpec:
    import dataclasses
    return dataclasses.replace(spec, symbol=symbol)


def test_a_breakeven_trade_does_not_extend_the_loss_streak():
    """Only pnl < 0 is a loss: three scratch trades (pnl exactly 0) start no cooldown."""
    rm = RiskManager(RiskConfig())
    for pnl in ("-5", "-5", "0", "-5"):
        rm.on_trade_closed(ClosedTrade("test", "SPY", "buy", "1", T0.isoformat(), "100", T0.isoformat(), "100",
                                       pnl, "0", 0.0, "UNKNOWN", "stop"), T0)
    assert rm.entries_blocked(T0) is None


def test_a_later_reported_streak_never_shortens_a_running_cooldown():
    """Three losses known at 10:00 cool down until 14:00; three more whose fills are stamped 09:00 (reported
    late) must not pull the end back to 13:00."""
    rm = RiskManager(RiskConfig())
    loss = ClosedTrade("test", "SPY", "buy", "1", T0.isoformat(), "100", T0.isoformat(), "99", "-1", "0", -1.0,
                       "UNKNOWN", "stop")
    for when in [T0 + timedelta(hours=1)] * 3 + [T0] * 3:
        rm.on_trade_closed(loss, when)
    assert rm.state.cooldown_until == T0 + timedelta(hours=5)
    assert "cooldown" in rm.entries_blocked(T0 + timedelta(hours=4, minutes=30))


# --------------------------------------------------------------------------- simulated broker


def test_the_sim_brokers_average_entry_is_volume_weighted_and_kept_when_reducing():
    """Alpaca reports avg_entry_price as the cost basis: buying 4 @ 100 then 6 @ 110 is 106 (not the
    105 of a plain mean); selling part keeps 106; flipping through zero starts afresh at the fill."""
    market = FakeMarket()
    b = SimulatedBroker(market, DEFAULT_ASSET_SPECS, starting_cash_usd=D(100_000), fee_bps=0, slippage_bps=0)
    b.update_marks({"SPY": 100.0})
    fill_now(b, market, mk_order("SPY", Side.BUY, "4", at=SIM_T0 + HOUR / 2), 100.0)
    fill_now(b, market, mk_order("SPY", Side.BUY, "6", at=SIM_T0 + 3 * HOUR), 110.0)
    assert (b.positions()["SPY"].qty, b.positions()["SPY"].avg_entry_price) == (10, D(106))
    fill_now(b, market, mk_order("SPY", Side.SELL, "5", at=SIM_T0 + 5 * HOUR), 120.0)
    assert (b.positions()["SPY"].qty, b.positions()["SPY"].avg_entry_price) == (5, D(106))
    assert b.cash == D(100_000) - 400 - 660 + 600
    fill_now(b, market, mk_order("SPY", Side.SELL, "5", at=SIM_T0 + 7 * HOUR), 120.0)    # flat
    fill_now(b, market, mk_order("SPY", Side.SELL, "10", at=SIM_T0 + 9 * HOUR), 100.0)   # short 10 @ 100
    fill_now(b, market, mk_order("SPY", Side.BUY, "15", at=SIM_T0 + 11 * HOUR), 95.0)    # short 10 -> long 5
    assert (b.positions()["SPY"].qty, b.positions()["SPY"].avg_entry_price) == (5, D(95))


def test_submit_checks_buying_power_including_slippage_and_fee_and_accepts_an_exact_fit():
    market = FakeMarket()
    b = SimulatedBroker(market, DEFAULT_ASSET_SPECS, starting_cash_usd=D(10_000), fee_bps=10, slippage_bps=5)
    b.update_marks({"SPY": 100.0})
    with pytest.raises(InsufficientBuyingPower):     # $10,000 notional + 15 bps = $10,015 > $10,000
        b.submit(mk_order("SPY", Side.BUY, "100"))
    free = SimulatedBroker(FakeMarket(), DEFAULT_ASSET_SPECS, starting_cash_usd=D(10_000), fee_bps=0, slippage_bps=0)
    free.update_marks({"SPY": 100.0})
    assert free.submit(mk_order("SPY", Side.BUY, "100")).qty == 100   # exactly the buying power: accepted


def test_a_fill_whose_fee_would_overdraw_the_account_is_rejected_at_fill():
    """Accepted at a $99 mark ($9,909.90 with the fee); the open is $99.95: $9,995 + $9.995 fee > $10,000."""
    market = FakeMarket()
    b = SimulatedBroker(market, DEFAULT_ASSET_SPECS, starting_cash_usd=D(10_000), fee_bps=10, slippage_bps=0)
    b.update_marks({"SPY": 99.0})
    o = b.submit(mk_order("SPY", Side.BUY, "100", at=SIM_T0 + HOUR / 2))
    market.set_open("SPY", SIM_T0 + HOUR, 99.95)
    assert b.poll_fills(SIM_T0 + 2 * HOUR) == []
    assert b.get_order(o.client_order_id).status is OrderStatus.REJECTED
    assert b.cash == D(10_000) and b.positions() == {} and b.fees_paid == 0


def test_a_buy_that_covers_a_short_and_goes_long_is_checked_again_at_fill():
    """Short 10 SPY @ 100 with $10,000; a buy of 60 (cover 10, long 50) fits at the $100 mark ($6,000 of
    $9,000 buying power) but the next open gaps to $200: $12,000 would overdraw the account. A flip opens a
    position, so the fill-time check applies to it as to any opening order."""
    market = FakeMarket()
    b = SimulatedBroker(market, DEFAULT_ASSET_SPECS, starting_cash_usd=D(10_000), fee_bps=0, slippage_bps=0)
    b.update_marks({"SPY": 100.0})
    fill_now(b, market, mk_order("SPY", Side.SELL, "10", at=SIM_T0 + HOUR / 2), 100.0)
    assert b.positions()["SPY"].qty == -10 and b.cash == D(11_000)
    flip = b.submit(mk_order("SPY", Side.BUY, "60", at=SIM_T0 + 2 * HOUR + HOUR / 2))
    market.set_open("SPY", SIM_T0 + 3 * HOUR, 200.0)
    assert b.poll_fills(SIM_T0 + 4 * HOUR) == []
    assert b.get_order(flip.client_order_id).status is OrderStatus.REJECTED
    assert b.cash == D(11_000) and b.positions()["SPY"].qty == -10
