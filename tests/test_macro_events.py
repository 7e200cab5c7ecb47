"""Strategy 2, the macro-event scalper (issue #18), through the real engine on ../shared/data: SPY's
1-minute bars (as 15-minute candles) and the shipped US macro calendar."""
from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from hydra_engine.app import build_sim_session, run_session
from hydra_engine.brokers.capabilities import DEFAULT_ASSET_SPECS
from hydra_engine.brokers.sim import SimulatedBroker
from hydra_engine.data.event_feeds import macro_calendar_feed
from hydra_engine.data.replay import ReplayMarketData
from hydra_engine.domain import UTC, Order, OrderStatus, OrderType, Side, TimeInForce
from hydra_engine.gate import GateContext, GateState
from hydra_engine.ports import InvalidOrder
from strategies.macro_events import MacroEventScalper, MacroEventWindowRule

from .conftest import make_settings


def _run(tmp_path, shared, start, end, universe=("SPY",), **params):
    settings = make_settings(tmp_path, data_dir=shared, start=start, end=end, symbols=universe, data_only=(),
                             observation_cycles=0, engine={"regime_detector": "trend_vol_rule"},
                             strategies={"enabled": ["macro_events"], "params": {"macro_events": params}})
    session = build_sim_session(settings, persist=False)
    summary = run_session(session, progress=False)
    return session.engine, summary


@pytest.fixture(scope="module")
def november_2022(tmp_path_factory, shared_data):
    """2022-11-01 .. 11: the FOMC of 11-02 (14:00), the NFP of 11-04 and the CPI of 11-10 (08:30)."""
    return _run(tmp_path_factory.mktemp("nov22"), shared_data, "2022-11-01", "2022-11-12", ("SPY", "GLD"),
                symbols=["SPY", "GLD"])


def _orders(engine):
    return sorted(engine.broker._orders.values(), key=lambda o: o.created_at)


def test_cpi_2022_11_10_gives_a_long_through_an_extended_hours_limit_filled_pre_market(november_2022):
    engine, _ = november_2022
    cpi = [o for o in _orders(engine) if o.created_at.date().isoformat() == "2022-11-10" and o.purpose == "entry"]
    assert len(cpi) == 1
    o = cpi[0]
    # decided on the 08:30-08:45 candle (375.20 -> 385.85), sent at 08:45 New York, before the 09:30 open
    assert o.created_at == datetime(2022, 11, 10, 13, 45, tzinfo=UTC)
    assert (o.side, o.order_type, o.time_in_force, o.extended_hours) == (Side.BUY, OrderType.LIMIT, TimeInForce.DAY, True)
    assert o.qty == o.qty.to_integral_value() and o.limit_price > Decimal("385.85")
    assert o.status is OrderStatus.FILLED
    trade = next(t for t in engine.closed_trades if t["entry_time"].startswith("2022-11-10"))
    entry = datetime.fromisoformat(trade["entry_time"].replace("Z", "+00:00"))
    assert entry < datetime(2022, 11, 10, 14, 30, tzinfo=UTC)                 # filled in the pre-market
    assert Decimal(trade["entry_price"]) <= o.limit_price
    assert trade["side"] == "buy" and trade["strategy"] == "macro_events"
    # out by the session's end: 15:45 New York at the latest
    assert trade["exit_time"] <= "2022-11-10T20:45:00Z"


def test_fomc_in_regular_hours_trades_from_the_14_00_candle(november_2022):
    engine, _ = november_2022
    fomc = [o for o in _orders(engine) if o.created_at.date().isoformat() == "2022-11-02" and o.purpose == "entry"]
    assert len(fomc) == 1
    o = fomc[0]
    assert o.created_at == datetime(2022, 11, 2, 18, 15, tzinfo=UTC)           # 14:15 New York (EDT)
    assert (o.order_type, o.extended_hours) == (OrderType.MARKET, False)
    trade = next(t for t in engine.closed_trades if t["entry_time"].startswith("2022-11-02"))
    assert trade["entry_time"] == "2022-11-02T18:15:00Z"                      # the 14:15 candle's open


def test_no_release_no_trade_and_a_symbol_without_intraday_bars_stands_down(november_2022):
    engine, summary = november_2022
    days = {o.created_at.date().isoformat() for o in _orders(engine) if o.purpose == "entry"}
    assert days <= {"2022-11-02", "2022-11-10"}                            # no entry on a day without a release
    notes = summary["plugin_notes"]["macro_events"]
    assert any(n.startswith("GLD: stood down (no intraday source for GLD") for n in notes)
    assert any("2022-11-04 08:30 NFP SPY" in n and "no trade" in n for n in notes)   # small NFP candle
    assert not [o for o in _orders(engine) if o.symbol == "GLD"]


def test_a_day_before_any_release_produces_no_cycle_of_the_plugin_and_no_order(tmp_path, shared_data):
    engine, summary = _run(tmp_path, shared_data, "2022-11-07", "2022-11-10")
    assert not _orders(engine) and summary["proposals"] == 0
    assert not [n for n in summary["plugin_notes"]["macro_events"] if "proposed" in n]


def test_pre_event_window_restricts_other_entries_on_the_assets(shared_data):
    feed = macro_calendar_feed(shared_data)
    rule = MacroEventScalper().gate_rules()[0]
    assert isinstance(rule, MacroEventWindowRule)

    def verdict(now, symbol="SPY"):
        from hydra_engine.ports import MarketSnapshot
        return rule.check(GateContext(now, MarketSnapshot(now, events=feed.events(now)), None), symbol, Side.BUY)

    release = datetime(2022, 11, 10, 13, 30, tzinfo=UTC)
    assert verdict(release - timedelta(hours=2, minutes=1)) is None
    assert verdict(release - timedelta(hours=2)).state is GateState.RESTRICT
    v = verdict(release + timedelta(minutes=14))
    assert v.state is GateState.RESTRICT and "CPI" in v.reason
    assert verdict(release + timedelta(minutes=15)) is None                 # the first candle has closed
    assert verdict(release, "MSFT") is None                                 # not one of the event's assets


def test_sim_fills_extended_hours_limits_only_against_pre_market_bars(shared_data):
    market = ReplayMarketData(shared_data, ["SPY"], intraday=["SPY"])
    broker = SimulatedBroker(market, DEFAULT_ASSET_SPECS, starting_cash_usd=100_000)
    broker.update_marks({"SPY": 385.0})
    sent = datetime(2022, 11, 10, 13, 45, tzinfo=UTC)
    low = Order("c1", "SPY", Side.BUY, Decimal(5), OrderType.LIMIT, TimeInForce.DAY, sent, "t",
                limit_price=Decimal("370.00"), extended_hours=True)    # below every pre-market print after 08:45
    broker.submit(low)
    assert broker.poll_fills(datetime(2022, 11, 10, 14, 15, tzinfo=UTC)) == []
    assert broker.get_order("c1").status is OrderStatus.ACCEPTED
    assert broker.poll_fills(datetime(2022, 11, 10, 14, 30, tzinfo=UTC)) == []   # 09:30: the pre-market is over
    assert broker.get_order("c1").status is OrderStatus.EXPIRED
    assert "pre-market" in broker.get_order("c1").reject_reason
    ok = Order("c2", "SPY", Side.BUY, Decimal(5), OrderType.LIMIT, TimeInForce.DAY, sent, "t",
               limit_price=Decimal("390.00"), extended_hours=True)
    broker.submit(ok)
    (fill,) = broker.poll_fills(datetime(2022, 11, 10, 14, 0, tzinfo=UTC))
    assert fill.ts == sent and fill.price <= Decimal("390.00")
    with pytest.raises(InvalidOrder):   # extended hours only as an equity DAY limit order
        broker.submit(Order("c3", "SPY", Side.BUY, Decimal(1), OrderType.MARKET, TimeInForce.DAY, sent, "t",
                            extended_hours=True))
