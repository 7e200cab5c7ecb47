"""Capability matrix and local order checks (no HTTP)."""
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from hydra_engine.brokers.capabilities import (DEFAULT_ASSET_SPECS, load_capabilities, normalise_symbol,
                                               spec_from_asset, validate_and_round)
from hydra_engine.config import UNIVERSE
from hydra_engine.domain import AssetClass, Order, OrderType, Side, TimeInForce
from hydra_engine.ports import InvalidOrder, InvalidTimeInForce, ShortNotAllowed
from tests.alpaca_double import example

NOW = datetime(2025, 6, 24, 18, 0, tzinfo=timezone.utc)
BTC, SPY, LZ = DEFAULT_ASSET_SPECS["BTC/USD"], DEFAULT_ASSET_SPECS["SPY"], DEFAULT_ASSET_SPECS["LZ"]


def order(symbol="SPY", side=Side.BUY, qty="10", otype=OrderType.MARKET, tif=TimeInForce.DAY, purpose="entry", **kw):
    return Order(f"S1-t-{symbol.replace('/', '')}-000001", symbol, side, Decimal(qty), otype, tif, NOW, "t",
                 purpose=purpose, **kw)


def test_default_specs_cover_universe_and_follow_the_examples():
    assert set(DEFAULT_ASSET_SPECS) == set(UNIVERSE)
    assert spec_from_asset(example("asset.BTCUSD.get.json")) == BTC     # the table is the Assets API row
    assert (BTC.min_order_size, BTC.qty_increment, BTC.price_increment) == (Decimal("0.0001"),) * 2 + (Decimal(1),)
    assert not BTC.shortable and OrderType.TRAILING_STOP not in BTC.order_types
    assert BTC.time_in_force == {TimeInForce.GTC, TimeInForce.IOC}
    assert SPY.shortable and SPY.fractionable and not LZ.shortable
    aapl = spec_from_asset(example("asset.AAPL.get.json"))
    assert aapl.asset_class is AssetClass.EQUITY and aapl.shortable and OrderType.TRAILING_STOP in aapl.order_types


@pytest.mark.parametrize("o, error, words", [
    (order("BTC/USD", Side.SELL, "0.01", tif=TimeInForce.GTC), ShortNotAllowed, "crypto cannot be sold short"),
    (order("BTC/USD", Side.SELL, "0.01", OrderType.TRAILING_STOP, TimeInForce.GTC, purpose="exit",
           trail_percent=Decimal(1)), InvalidOrder, "engine-managed"),
    (order("BTC/USD", qty="0.01", tif=TimeInForce.DAY), InvalidTimeInForce, "day is not accepted for crypto"),
    (order("BTC/USD", qty="0.01", otype=OrderType.STOP, tif=TimeInForce.GTC, stop_price=Decimal(60000)),
     InvalidOrder, "stop is not accepted for crypto"),
    (order("BTC/USD", qty="0.01", tif=TimeInForce.GTC, take_profit_price=Decimal(70000),
           stop_loss_price=Decimal(60000)), InvalidOrder, "simple orders only"),
    (order("SPY", Side.SELL, "2.5"), ShortNotAllowed, "fractional short"),
    (order("LZ", Side.SELL, "3"), ShortNotAllowed, "not shortable"),
    (order("SPY", qty="2.5", tif=TimeInForce.GTC), InvalidOrder, "time_in_force day"),
    (order("SPY", qty="0.0000000001"), InvalidOrder, "below the minimum"),
    (order("BTC/USD", qty="0.00009", tif=TimeInForce.GTC), InvalidOrder, "below the minimum"),
    (order("SPY", Side.SELL, "5", OrderType.TRAILING_STOP, TimeInForce.IOC, purpose="exit",
           trail_percent=Decimal(1)), InvalidTimeInForce, "day or gtc"),
    (order("SPY", otype=OrderType.LIMIT), InvalidOrder, "needs limit_price"),
    (order("SPY", take_profit_price=Decimal(290), stop_loss_price=Decimal(300)), InvalidOrder, "wrong sides"),
    (order("SPY", otype=OrderType.LIMIT, limit_price=Decimal("0.00004")), InvalidOrder, "smallest tick"),
    # spec, POST /v2/orders qty: "fractionable for only market and day order types"
    (order("SPY", qty="2.5", otype=OrderType.LIMIT, limit_price=Decimal(300)), InvalidOrder, "simple market order"),
    (order("SPY", qty="2.5", otype=OrderType.STOP, stop_price=Decimal(310)), InvalidOrder, "simple market order"),
    # spec, TimeInForce: opg/cls "with a market/limit order type"
    (order("SPY", otype=OrderType.STOP, tif=TimeInForce.OPG, stop_price=Decimal(310)), InvalidTimeInForce, "auction"),
    (order("SPY", otype=OrderType.STOP_LIMIT, tif=TimeInForce.CLS, stop_price=Decimal(310), limit_price=Decimal(311)),
     InvalidTimeInForce, "auction"),
    # NOTES §1.6 Bracket: the stop at least $0.01 below the base price (the entry limit)
    (order("SPY", otype=OrderType.LIMIT, limit_price=Decimal(300), take_profit_price=Decimal(320),
           stop_loss_price=Decimal(300)), InvalidOrder, "at least $0.01 below the entry limit"),
    (order("SPY", Side.SELL, otype=OrderType.LIMIT, limit_price=Decimal(300), take_profit_price=Decimal(280),
           stop_loss_price=Decimal(300)), InvalidOrder, "at least $0.01 above the entry limit"),
])
def test_refuses_what_alpaca_cannot_express(o, error, words):
    spec = DEFAULT_ASSET_SPECS[o.symbol]
    with pytest.raises(error) as info:
        validate_and_round(o, spec)
    assert words in str(info.value) and info.value.symbol == o.symbol


def test_rounds_qty_down_and_prices_to_tick():
    btc = validate_and_round(order("BTC/USD", qty="0.123456", otype=OrderType.LIMIT, tif=TimeInForce.GTC,
                                   limit_price=Decimal("67419.55")), BTC)
    assert btc.qty == Decimal("0.1234") and btc.limit_price == Decimal("67420")
    spy = validate_and_round(order("SPY", qty="7", otype=OrderType.LIMIT, limit_price=Decimal("290.123")), SPY)
    assert spy.limit_price == Decimal("290.12")                    # the 422 sub-penny example, fixed locally
    penny = validate_and_round(order("SPY", qty="7", otype=OrderType.LIMIT, limit_price=Decimal("0.51237")), SPY)
    assert penny.limit_price == Decimal("0.5124")                   # below $1: 4 decimals allowed
    frac = validate_and_round(order("LZ", qty="3.1234567899"), DEFAULT_ASSET_SPECS["LZ"])
    assert frac.qty == Decimal("3.123456789")                       # fractionable: 9 decimals, rounded down
    crypto_exit = validate_and_round(order("BTC/USD", Side.SELL, "0.5", tif=TimeInForce.GTC, purpose="exit"), BTC)
    assert crypto_exit.qty == Decimal("0.5")                        # selling what is held is not a short


def test_notional_orders_checked_separately():
    o = order("BTC/USD", qty="0", tif=TimeInForce.GTC)
    assert validate_and_round(o, BTC, notional_usd=Decimal(100)).qty == 0
    with pytest.raises(InvalidOrder, match="simple market order"):
        validate_and_round(order("BTC/USD", qty="0", otype=OrderType.LIMIT, tif=TimeInForce.GTC,
                                 limit_price=Decimal(1)), BTC, notional_usd=Decimal(100))


def test_a_hard_to_borrow_stock_is_not_shortable():
    """Spec, Assets: easy_to_borrow is "the best way to check whether the name is currently available to
    short"; its successor borrow_status says hard_to_borrow."""
    row = {**example("asset.AAPL.get.json"), "symbol": "CRM", "shortable": True}
    assert spec_from_asset({**row, "easy_to_borrow": True}).shortable
    assert not spec_from_asset({**row, "easy_to_borrow": False}).shortable
    assert not spec_from_asset({**row, "easy_to_borrow": None, "borrow_status": "hard_to_borrow"}).shortable
    assert spec_from_asset({**row, "easy_to_borrow": None, "borrow_status": "easy_to_borrow"}).shortable
    with pytest.raises(ShortNotAllowed, match="hard to borrow"):
        validate_and_round(order("CRM", Side.SELL, "5"), spec_from_asset({**row, "easy_to_borrow": False}))


def test_capability_cache_roundtrip_and_expiry(tmp_path):
    path, fetched = tmp_path / "assets.json", []

    def fetch(symbol):
        fetched.append(symbol)
        return example("asset.BTCUSD.get.json") if symbol == "BTC/USD" else {**example("asset.AAPL.get.json"),
                                                                            "symbol": symbol}
    first = load_capabilities(fetch, ["BTC/USD", "SPY"], now=NOW, cache_path=path)
    again = load_capabilities(fetch, ["BTC/USD", "SPY"], now=NOW + timedelta(hours=1), cache_path=path)
    assert first == again and fetched == ["BTC/USD", "SPY"]         # second time from the JSON file
    load_capabilities(fetch, ["BTC/USD"], now=NOW + timedelta(days=2), cache_path=path)
    assert fetched[-1] == "BTC/USD" and len(fetched) == 3           # stale cache: fetched again


def test_normalise_crypto_position_symbols():
    assert normalise_symbol("BTCUSD", "crypto") == "BTC/USD"
    assert normalise_symbol("SPY", "us_equity") == "SPY"
    assert normalise_symbol("BTCUSD", None, known=["BTC/USD"]) == "BTC/USD"
    assert normalise_symbol("GUSD", None, known=["BTC/USD"]) == "GUSD"
