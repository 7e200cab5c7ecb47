"""Issue #17: stops, targets and trails trigger inside the bar, on real bars of the shared data.

Each case is a real bar: SPY 2022-09-13 (CPI day) opened below the previous day's low; BTC 2022-01-22 10:00
dipped through 34,000 and closed 35,462; BTC 2022-02-24 20:00 spanned 37,253..40,376 (its 5-minute bars
say the low came first); BTC 2022-02-28 22:00 ran to 44,341 and closed 43,021.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import pytest

from hydra_engine.brokers.sim import SimulatedBroker
from hydra_engine.data.replay import ReplayMarketData
from hydra_engine.domain import Order, OrderType, Position, Side, TimeInForce
from hydra_engine.ports import AssetSpec, BrokerPosition
from hydra_engine.domain import AssetClass
from hydra_engine.positions import PositionManager, bar_step

UTC = timezone.utc


@pytest.fixture(scope="module")
def replay(shared_data):
    return ReplayMarketData(shared_data, ["BTC/USD", "SPY"], start=date(2022, 1, 1), end=date(2023, 1, 1))


@pytest.fixture(scope="module")
def coarse_only(shared_data):
    return ReplayMarketData(shared_data, ["BTC/USD", "SPY"], start=date(2022, 1, 1), end=date(2023, 1, 1),
                            fine_bars=False)


def position(symbol, opened, entry, stop, target, qty=1, **kw) -> Position:
    return Position(symbol=symbol, qty=Decimal(qty), avg_entry_price=Decimal(str(entry)), strategy="t",
                    opened_at=opened, stop_price=stop, target_price=target, initial_stop_price=stop,
                    high_water_mark=entry, **kw)


def manage_at(market, pos, now):
    return PositionManager().manage({pos.symbol: pos}, market.snapshot(now), now)


def test_a_gapped_stop_exits_at_the_open(replay):
    # long SPY from the 2022-09-12 open (392.86; low that day 392.60), stop 390: 09-13 opened at 386.16
    opened = datetime(2022, 9, 12, 13, 30, tzinfo=UTC)
    pos = position("SPY", opened, 392.86, 390.0, 420.0)
    assert manage_at(replay, pos, datetime(2022, 9, 12, 20, tzinfo=UTC)) == []
    (ex,) = manage_at(replay, pos, datetime(2022, 9, 13, 20, tzinfo=UTC))
    assert (ex.reason, ex.fill_price, ex.fill_kind) == ("stop", 386.16, "stop")   # not 390, not the 377.73 close
    assert "opened at 386.16" in ex.detail


def test_a_touched_stop_exits_at_the_stop_though_the_bar_closed_above(replay):
    # long BTC from the 2022-01-22 10:00 open (34,802.19), stop 34,000: the low 33,950 touched it, close 35,461.77
    opened = datetime(2022, 1, 22, 10, tzinfo=UTC)
    pos = position("BTC/USD", opened, 34802.19, 34000.0, 40000.0)
    (ex,) = manage_at(replay, pos, opened + timedelta(hours=1))
    assert (ex.reason, ex.fill_price) == ("stop", 34000.0)
    assert "finer bars" in ex.detail        # its 5-minute bars crossed 34,000 inside a bar, not by a jump
    # the close rule it replaces saw 35,461.77 > 34,000 and kept the position
    assert replay.snapshot(opened + timedelta(hours=1)).price("BTC/USD") > 34000


def test_stop_and_target_in_one_bar_pessimistic_unless_finer_bars_say_otherwise(replay, coarse_only):
    # short BTC from the 2022-02-24 20:00 open (37,272.3), stop 40,000, target 37,260: the hour touched both
    opened = datetime(2022, 2, 24, 20, tzinfo=UTC)
    now = opened + timedelta(hours=1)
    (ex,) = manage_at(coarse_only, position("BTC/USD", opened, 37272.3, 40000.0, 37260.0, qty=-1), now)
    assert (ex.reason, ex.fill_price) == ("stop", 40000.0) and "pessimistically" in ex.detail
    # its first 5-minute bar reached 37,252.8 before the second one reached 40,376.1: the target came first
    (ex,) = manage_at(replay, position("BTC/USD", opened, 37272.3, 40000.0, 37260.0, qty=-1), now)
    assert (ex.reason, ex.fill_price, ex.fill_kind) == ("target", 37260.0, "limit")
    assert "resolved on 12 finer bars" in ex.detail


def test_a_trailing_stop_ratcheted_by_the_intrabar_high(replay, coarse_only):
    # long BTC from the 2022-02-28 22:00 open (41,633.1), 2 % trail: the high 44,341 lifts the stop to 43,454.18
    # and the hour closed at 43,020.6, below it -- the close came after the high, so the trail was crossed
    opened = datetime(2022, 2, 28, 22, tzinfo=UTC)
    for market in (coarse_only, replay):
        pos = position("BTC/USD", opened, 41633.1, 40000.0, 50000.0, trailing_stop_pct=2.0)
        (ex,) = manage_at(market, pos, opened + timedelta(hours=1))
        assert ex.reason == "trailing_stop" and ex.fill_price == pytest.approx(44341.0 * 0.98)
        assert pos.high_water_mark == 44341.0 and pos.stop_price == pytest.approx(44341.0 * 0.98)
    # on closes alone the mark would be 43,020.6 and the stop 42,160.2: no exit
    assert 43020.6 * 0.98 < 43020.6


def test_bar_step_rules():
    # a low beyond a stop the same bar's high ratcheted, close back above: undecidable, no exit
    step = bar_step(True, 100, 110, 104, 109, 95.0, 200.0, 100.0, 5.0, None, None)
    assert step.event is None and step.ambiguous and step.stop == pytest.approx(104.5)
    # a close-only bar (open = high = low = close) is close-to-close: exits at that close
    step = bar_step(True, 94, 94, 94, 94, 95.0, 200.0, 100.0, None, None, None)
    assert (step.event, step.fill, step.gapped) == ("stop", 94, True)


def test_the_simulated_broker_fills_the_intrabar_exit_in_its_bar(replay):
    """The executor's exit order (market, carrying the level) fills at the level, with slippage, at the close
    of the bar it triggered in; a level the bar never traded falls back to the next open."""
    spec = AssetSpec("BTC/USD", AssetClass.CRYPTO, qty_increment=Decimal("0.0001"), price_increment=Decimal("0.01"))
    broker = SimulatedBroker(replay, {"BTC/USD": spec}, starting_cash_usd=Decimal(100000), slippage_bps=5.0)
    broker.load_state({"cash": "60000", "positions": {"BTC/USD": ["1", "34802.19"]}})
    opened = datetime(2022, 1, 22, 10, tzinfo=UTC)
    sent = opened + timedelta(hours=1)
    broker.update_marks(replay.snapshot(sent).prices())
    broker.submit(Order("x1", "BTC/USD", Side.SELL, Decimal("0.5"), OrderType.MARKET, TimeInForce.GTC, sent, "t",
                        purpose="exit", stop_price=Decimal("34000")))
    (fill,) = broker.poll_fills(sent + timedelta(hours=1))
    assert fill.price == (Decimal("34000") * (1 - Decimal("0.0005"))).quantize(Decimal("0.01"), ROUND_FLOOR)
    assert fill.ts == sent                                   # in the bar that closed when it was sent
    broker.submit(Order("x2", "BTC/USD", Side.SELL, Decimal("0.5"), OrderType.MARKET, TimeInForce.GTC, sent, "t",
                        purpose="exit", stop_price=Decimal("30000")))   # never traded in that hour
    (fill,) = broker.poll_fills(sent + timedelta(hours=1))
    nxt = replay.next_bar_open("BTC/USD", sent, sent + timedelta(hours=1))
    assert fill.ts == nxt[0] and fill.price == (Decimal(str(nxt[1])) * (1 - Decimal("0.0005"))).quantize(
        Decimal("0.01"), ROUND_FLOOR)
