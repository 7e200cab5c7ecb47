"""Reconciliation: the broker is the truth."""
from datetime import datetime, timezone
from decimal import Decimal

from hydra_engine.domain import Order, OrderStatus, OrderType, Position, Side, TimeInForce
from hydra_engine.ports import BrokerPosition
from hydra_engine.reconcile import adopt_broker_state, reconcile
from tests.alpaca_double import AlpacaDouble, FakeTime, make_broker

NOW = datetime(2025, 6, 24, 18, 0, tzinfo=timezone.utc)


def pos(symbol, qty, price="100"):
    return Position(symbol, Decimal(qty), Decimal(price), "trend", NOW, stop_price=90.0, target_price=120.0)


def order(coid, symbol="SPY"):
    return Order(coid, symbol, Side.BUY, Decimal(1), OrderType.LIMIT, TimeInForce.DAY, NOW, "trend",
                 limit_price=Decimal(99), status=OrderStatus.ACCEPTED)


def test_extra_position_at_broker_is_reported_and_adopted():
    fake = FakeTime()
    with AlpacaDouble() as d:
        d.add_position("BTC/USD", "1.0002997", "22577.25")      # Alpaca reports it as BTCUSD
        d.add_position("SPY", "10", "300")
        broker = make_broker(fake)
        report = reconcile(broker.positions(), broker.open_orders(), {"SPY": pos("SPY", "10", "300")}, [], now=NOW)
    assert not report.ok and list(report.extra_positions) == ["BTC/USD"]
    assert "extra position at broker: BTC/USD qty 1.0002997" in report.mismatches[0]
    fill = report.adoptable_fills[0]
    assert (fill.symbol, fill.side, fill.qty, fill.price) == ("BTC/USD", Side.BUY, Decimal("1.0002997"),
                                                              Decimal("22577.25"))
    positions, _ = adopt_broker_state(report, {"SPY": pos("SPY", "10", "300")}, [], NOW)
    assert positions["BTC/USD"].qty == Decimal("1.0002997") and positions["BTC/USD"].strategy == "adopted"
    assert positions["BTC/USD"].stop_price < 22577.25 < positions["BTC/USD"].target_price
    assert positions["SPY"].strategy == "trend"
    assert reconcile({s: BrokerPosition(s, p.qty, p.avg_entry_price) for s, p in positions.items()}, [],
                     positions, []).ok


def test_missing_positions_qty_differences_and_orders():
    broker = {"SPY": BrokerPosition("SPY", Decimal(5), Decimal(300)), "TLT": BrokerPosition("TLT", Decimal(0), Decimal(0))}
    local = [pos("SPY", "8"), pos("GLD", "-2")]
    report = reconcile(broker, [order("b-1"), order("both")], local, [order("both"), order("gone")], now=NOW)
    assert report.qty_differences == {"SPY": (Decimal(8), Decimal(5))}
    assert list(report.missing_positions) == ["GLD"] and not report.extra_positions
    assert [o.client_order_id for o in report.unknown_orders] == ["b-1"]
    assert [o.client_order_id for o in report.vanished_orders] == ["gone"]
    assert len(report.mismatches) == 4
    assert {(f.symbol, f.side, f.qty) for f in report.adoptable_fills} == {("SPY", Side.SELL, Decimal(3)),
                                                                          ("GLD", Side.BUY, Decimal(2))}
    positions, orders = adopt_broker_state(report, local, [order("both"), order("gone")], NOW)
    assert set(positions) == {"SPY"} and positions["SPY"].qty == 5 and positions["SPY"].stop_price == 90.0
    assert [o.client_order_id for o in orders] == ["both", "b-1"]
