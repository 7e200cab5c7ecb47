"""AlpacaBroker through real alpaca-py code against the HTTP double (tests/alpaca_double.py)."""
import json
import logging
from datetime import timedelta
from decimal import Decimal

import pytest
import requests

from hydra_engine.brokers.alpaca import AlpacaBroker, BrokerUnavailable, build_alpaca, redact, resolve_urls
from hydra_engine.config import ConfigError, Settings
from hydra_engine.domain import Order, OrderStatus, OrderType, Side, TimeInForce, make_client_order_id
from hydra_engine.ports import (AuthError, Broker, HeldQuantity, InsufficientBuyingPower, InvalidOrder,
                                InvalidTimeInForce, MarketClosed, RateLimited, ShortNotAllowed, UnknownOrderOutcome,
                                WashTradeRejected)
from tests.alpaca_double import API_KEY, SECRET_KEY, AlpacaDouble, FakeTime, example, make_broker, make_keys

SEQ = iter(range(1, 10_000))


@pytest.fixture
def fake():
    return FakeTime()


@pytest.fixture
def double():
    with AlpacaDouble() as d:
        yield d


def mk(fake, symbol="SPY", side=Side.BUY, qty="10", otype=OrderType.MARKET, tif=TimeInForce.DAY, purpose="entry",
       strategy="trend", **kw) -> Order:
    return Order(make_client_order_id("S1", strategy, symbol, next(SEQ)), symbol, side, Decimal(qty), otype, tif,
                 fake.now(), strategy, purpose=purpose, **kw)


def sent(double) -> dict:
    """The last order body, checked against the spec (after the documented number->string coercion)."""
    assert double.body_errors[-1] == []
    return double.order_bodies[-1]


def test_is_a_broker(fake, double):
    assert isinstance(make_broker(fake), Broker)


# --------------------------------------------------------------------------- order types per asset class
@pytest.mark.parametrize("kw, expected", [
    (dict(), {"type": "market", "qty": "10.0", "time_in_force": "day"}),
    (dict(otype=OrderType.LIMIT, limit_price=Decimal("150.004")), {"type": "limit", "limit_price": "150.0"}),
    (dict(side=Side.SELL, otype=OrderType.STOP, tif=TimeInForce.GTC, stop_price=Decimal("499.5"), purpose="exit"),
     {"type": "stop", "stop_price": "499.5", "time_in_force": "gtc"}),
    (dict(side=Side.SELL, otype=OrderType.TRAILING_STOP, tif=TimeInForce.GTC, trail_percent=Decimal("1.5"),
          purpose="exit"), {"type": "trailing_stop", "trail_percent": "1.5"}),
    (dict(take_profit_price=Decimal("301"), stop_loss_price=Decimal("299")),
     {"order_class": "bracket", "take_profit": {"limit_price": "301.0"}, "stop_loss": {"stop_price": "299.0"}}),
    (dict(otype=OrderType.STOP_LIMIT, stop_price=Decimal("151"), limit_price=Decimal("151.5")),
     {"type": "stop_limit", "stop_price": "151.0", "limit_price": "151.5"}),
])
def test_equity_orders_reach_alpaca_as_the_spec_describes(fake, double, kw, expected):
    if kw.get("purpose") == "exit":
        double.add_position("SPY", "10", "300")
    order = make_broker(fake).submit(mk(fake, **kw))
    body = sent(double)
    assert {k: body[k] for k in expected} == expected
    assert body["client_order_id"] == order.client_order_id and body["symbol"] == "SPY"
    assert order.status is OrderStatus.ACCEPTED and order.broker_order_id


def test_crypto_orders_qty_limit_stop_limit_and_notional(fake, double):
    broker = make_broker(fake)
    broker.submit(mk(fake, "BTC/USD", qty="0.00015", tif=TimeInForce.GTC))
    assert sent(double)["qty"] == "0.0001"                              # rounded down to the increment
    broker.submit(mk(fake, "ETH/USD", qty="0.02", otype=OrderType.LIMIT, tif=TimeInForce.GTC,
                     limit_price=Decimal("2100.04")))
    assert {k: sent(double)[k] for k in ("qty", "limit_price")} == {"qty": "0.02", "limit_price": "2100.0"}
    broker.submit(mk(fake, "BTC/USD", qty="0.01", otype=OrderType.STOP_LIMIT, tif=TimeInForce.IOC,
                     stop_price=Decimal("66000.4"), limit_price=Decimal("65900")))
    assert sent(double)["stop_price"] == "66000.0"                       # BTC/USD price increment is 1
    notional = broker.submit(mk(fake, "BTC/USD", qty="0", tif=TimeInForce.GTC), notional_usd=Decimal("100"))
    assert sent(double) == {"symbol": "BTC/USD", "notional": "100.0", "side": "buy", "type": "market",
                            "time_in_force": "gtc", "client_order_id": notional.client_order_id}
    assert double.count("GET", r"/v2/clock") == 0                        # crypto trades 24/7


def test_validator_is_live_raw_alpaca_py_numbers_violate_the_string_schema(fake, double):
    make_broker(fake).submit(mk(fake))
    raw = double.raw_order_bodies[-1]
    assert isinstance(raw["qty"], float)                                 # what alpaca-py really sends
    assert any("qty" in e for e in double.validator.errors(raw))          # and why we coerce before validating
    assert double.validator.errors({**double.order_bodies[-1], "tif": "day"})  # unknown keys are refused too


@pytest.mark.parametrize("kw, error", [
    (dict(symbol="BTC/USD", side=Side.SELL, qty="0.01", tif=TimeInForce.GTC), ShortNotAllowed),
    (dict(symbol="BTC/USD", side=Side.SELL, qty="0.01", otype=OrderType.TRAILING_STOP, tif=TimeInForce.GTC,
          trail_percent=Decimal(2), purpose="exit"), InvalidOrder),
    (dict(symbol="BTC/USD", qty="0.01", tif=TimeInForce.DAY), InvalidTimeInForce),
    (dict(symbol="LZ", side=Side.SELL, qty="5"), ShortNotAllowed),
])
def test_refused_combinations_never_reach_the_wire(fake, double, kw, error):
    with pytest.raises(error):
        make_broker(fake).submit(mk(fake, **kw))
    assert double.count("POST", r"/v2/orders$") == 0


def test_market_closed_refuses_equities_but_not_crypto(fake, double):
    double.market_open = False
    broker = make_broker(fake)
    with pytest.raises(MarketClosed):
        broker.submit(mk(fake))
    assert broker.is_market_open("BTC/USD", fake.now())
    broker.submit(mk(fake, "BTC/USD", qty="0.001", tif=TimeInForce.GTC))
    assert double.count("POST", r"/v2/orders$") == 1
    clock_calls = double.count("GET", r"/v2/clock")
    broker.is_market_open("SPY", fake.now() + timedelta(seconds=5))     # cached briefly
    assert double.count("GET", r"/v2/clock") == clock_calls
    broker.is_market_open("SPY", fake.now() + timedelta(seconds=60))
    assert double.count("GET", r"/v2/clock") == clock_calls + 1


# --------------------------------------------------------------------------- exits and wash trades
def test_exit_cancels_bracket_legs_waits_then_sells(fake, double):
    double.cancel_delay_polls = 2                                        # cancels take a while to confirm
    broker = make_broker(fake)
    entry = broker.submit(mk(fake, take_profit_price=Decimal(320), stop_loss_price=Decimal(290)))
    double.fill(entry.client_order_id, "300.10")
    exit_order = broker.submit(mk(fake, side=Side.SELL, purpose="exit"))
    legs = double.order(entry.client_order_id)["legs"]
    assert [l["status"] for l in legs] == ["canceled", "canceled"]
    assert exit_order.status is OrderStatus.ACCEPTED and sent(double)["side"] == "sell"
    assert fake.sleeps.count(broker.cancel_poll_s) >= 2                  # it waited for the confirmations


def test_exit_without_cancel_confirmation_is_bounded_and_typed(fake, double):
    broker = make_broker(fake, cancel_wait_s=2.0)
    entry = broker.submit(mk(fake, take_profit_price=Decimal(320), stop_loss_price=Decimal(290)))
    double.fill(entry.client_order_id, "300")
    double.never_cancel = {f"{entry.client_order_id}-tp", f"{entry.client_order_id}-sl"}
    with pytest.raises(HeldQuantity, match="not confirmed within 2.0s"):
        broker.submit(mk(fake, side=Side.SELL, purpose="exit"))
    assert double.count("POST", r"/v2/orders$") == 1                      # no sell was sent


def test_held_quantity_answer_from_alpaca_is_typed(fake, double):
    double.add_position("SPY", "10", "300")
    broker = make_broker(fake)
    double.fail("POST", r"/v2/orders$", status=403, body=example("error.403.insufficient_qty.json"))
    with pytest.raises(HeldQuantity, match="insufficient qty"):
        broker.submit(mk(fake, side=Side.SELL, purpose="exit"))


def test_opposite_working_order_is_a_local_wash_trade_refusal(fake, double):
    broker = make_broker(fake)
    broker.submit(mk(fake, otype=OrderType.LIMIT, limit_price=Decimal(290)))
    double.add_position("SPY", "5", "300")
    with pytest.raises(WashTradeRejected, match="opposite-side"):
        broker.submit(mk(fake, side=Side.SELL, qty="5", purpose="exit"))
    assert double.count("POST", r"/v2/orders$") == 1


# --------------------------------------------------------------------------- idempotency
def test_timeout_after_acceptance_finds_the_order_and_never_duplicates(fake, double):
    double.fail("POST", r"/v2/orders$", exception=requests.ReadTimeout, after_processing=True)
    broker = make_broker(fake)
    order = broker.submit(mk(fake))
    assert order.status is OrderStatus.ACCEPTED and order.broker_order_id
    assert double.count("POST", r"/v2/orders$") == 1                      # looked up, not resent
    assert double.count("GET", r"/v2/orders:by_client_order_id") == 1
    assert len(double.orders) == 1
    assert broker.submit(order) == order                                  # a second submit is a no-op
    assert double.count("POST", r"/v2/orders$") == 1


def test_5xx_before_acceptance_is_retried_once_confirmed_absent(fake, double):
    double.fail("POST", r"/v2/orders$", status=503, body="Service Unavailable")    # non-JSON body
    order = make_broker(fake).submit(mk(fake))
    assert order.status is OrderStatus.ACCEPTED
    assert double.count("POST", r"/v2/orders$") == 2 and len(double.orders) == 1


def test_unknown_outcome_when_lookup_also_fails(fake, double):
    double.fail("POST", r"/v2/orders$", status=500, body="Internal Server Error")
    double.fail("GET", r"/v2/orders:by_client_order_id", times=10, exception=requests.ConnectionError)
    broker = make_broker(fake)
    with pytest.raises(UnknownOrderOutcome, match="look it up before resending") as info:
        broker.submit(o := mk(fake))
    assert info.value.client_order_id == o.client_order_id
    assert double.count("POST", r"/v2/orders$") == 1


def test_persistent_5xx_gives_up_without_an_order(fake, double):
    double.fail("POST", r"/v2/orders$", times=10, status=502, body="<html>Bad Gateway</html>")
    broker = make_broker(fake)
    with pytest.raises(BrokerUnavailable, match="not placed after 3 attempts"):
        broker.submit(mk(fake))
    assert double.count("POST", r"/v2/orders$") == 3 and not double.orders


# --------------------------------------------------------------------------- rate limits and errors
def test_429_storm_backs_off_with_bounded_calls(fake, double):
    double.fail("GET", r"/v2/account", times=100, status=429, body=example("error.429.rate_limit.json"),
                headers={"X-RateLimit-Remaining": "0"})
    broker = make_broker(fake)
    with pytest.raises(RateLimited):
        broker.account()
    assert double.count("GET", r"/v2/account") == broker.limiter.max_attempts == 5
    assert fake.sleeps and broker.limiter.slept_s > 0                     # backed off (fake time)


def test_429_then_success_on_submit_is_safe_to_retry(fake, double):
    double.fail("POST", r"/v2/orders$", times=2, status=429, body=example("error.429.rate_limit.json"))
    order = make_broker(fake).submit(mk(fake))
    assert order.status is OrderStatus.ACCEPTED and len(double.orders) == 1
    assert double.count("POST", r"/v2/orders$") == 3


@pytest.mark.parametrize("status, body, error", [
    (403, "error.403.insufficient_buying_power.json", InsufficientBuyingPower),
    (403, "error.403.insufficient_balance_crypto.json", InsufficientBuyingPower),
    (422, "error.422.subpenny.json", InvalidOrder),
    (422, "error.422.invalid_crypto_order_type.json", InvalidOrder),
    (403, {"code": 40310000, "message": "asset SPY cannot be sold short"}, ShortNotAllowed),
    (422, {"code": 42210000, "message": "invalid time_in_force for this order"}, InvalidTimeInForce),
    (403, {"code": 40310000, "message": "potential wash trade detected. use complex orders"}, WashTradeRejected),
    (401, "error.401.unauthorized.json", AuthError),
    (403, "<html>403 Forbidden</html>", AuthError),
])
def test_4xx_bodies_become_typed_errors_without_retry(fake, double, status, body, error):
    payload = example(body) if isinstance(body, str) and body.endswith(".json") else body
    double.fail("POST", r"/v2/orders$", status=status, body=payload)
    with pytest.raises(error) as info:
        make_broker(fake).submit(mk(fake))
    assert double.count("POST", r"/v2/orders$") == 1
    assert f"HTTP {status}" in str(info.value)


def test_a_notional_order_goes_out_in_cents(fake, double):
    """Spec, Order.notional: up to 9 decimals; a third of $100 as a float has 14."""
    broker = make_broker(fake)
    broker.submit(mk(fake, symbol="BTC/USD", qty="0", tif=TimeInForce.GTC), notional_usd=Decimal(100) / 3)
    body = json.loads(next(c.request.body for c in double.mock.calls if c.request.method == "POST"))
    assert body["notional"] == 33.33 and "qty" not in body


def test_secrets_never_leave_the_adapter(fake, double, caplog):
    caplog.set_level(logging.DEBUG)
    leak = f"bad key {API_KEY} / {SECRET_KEY}"
    double.fail("GET", r"/v2/account", status=401, body={"code": 40110000, "message": leak})
    broker = make_broker(fake)
    with pytest.raises(AuthError) as info:
        broker.account()
    text = str(info.value) + repr(broker) + caplog.text
    assert "***" in str(info.value)
    assert API_KEY not in text and SECRET_KEY not in text
    assert redact("x PKDOUBLEKEY0001 y", [API_KEY, None]) == "x *** y"


# --------------------------------------------------------------------------- fills, positions, flatten
def test_a_failing_page_of_the_fill_poll_loses_no_fill(fake, double):
    """More than one page (500 orders) to read, and the second page fails after every retry: the fills
    of the first page must not be marked reported, or they are never booked."""
    broker = make_broker(fake)
    for i in range(501):
        o = double._new_order({"symbol": "AAPL", "qty": "1", "side": "buy", "type": "market",
                               "time_in_force": "day"}, f"bulk-{i:03d}", False)
        o["submitted_at"] = (fake.now() + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
        double.orders[o["id"]] = o
        double.fill(o["client_order_id"], "100.00")
    real, calls = broker._client.get_orders, []

    def second_page_fails(req):
        calls.append(req)
        if len(calls) == 1:
            page = real(req)
            double.fail("GET", r"/v2/orders$", times=100, status=503, body="unavailable")
            return page
        return real(req)

    broker._client.get_orders = second_page_fails
    with pytest.raises(BrokerUnavailable):
        broker.poll_fills(fake.now())
    double.faults.clear()
    fills = broker.poll_fills(fake.now())
    assert len(fills) == 501 and len({f.fill_id for f in fills}) == 501
    assert broker.poll_fills(fake.now()) == []


def _bulk_filled_orders(fake, double, n: int, per_timestamp: int, prefix: str, start: int = 0) -> None:
    for i in range(start, start + n):
        o = double._new_order({"symbol": "AAPL", "qty": "1", "side": "buy", "type": "market",
                               "time_in_force": "day"}, f"{prefix}-{i:04d}", False)
        o["submitted_at"] = (fake.now() + timedelta(seconds=i // per_timestamp)).isoformat().replace("+00:00", "Z")
        double.orders[o["id"]] = o
        double.fill(o["client_order_id"], "100.00")


def test_the_fill_poll_pages_past_orders_sharing_the_boundary_timestamp(fake, double):
    """Alpaca's ``after`` is strict: with three orders per timestamp, the 500-order page boundary falls
    inside a group, and paging from the last order's time would skip the rest of that group."""
    broker = make_broker(fake)
    _bulk_filled_orders(fake, double, 1_203, per_timestamp=3, prefix="grp")    # 498..500 share a time
    fills = broker.poll_fills(fake.now())
    assert sorted(f.client_order_id for f in fills) == [f"grp-{i:04d}" for i in range(1_203)]
    assert broker.poll_fills(fake.now()) == []


def test_an_order_in_the_same_millisecond_as_the_watermark_is_still_read(fake, double):
    broker = make_broker(fake)
    _bulk_filled_orders(fake, double, 3, per_timestamp=3, prefix="first")
    assert len(broker.poll_fills(fake.now())) == 3
    _bulk_filled_orders(fake, double, 1, per_timestamp=3, prefix="late")     # same submitted_at as the others
    assert [f.client_order_id for f in broker.poll_fills(fake.now())] == ["late-0000"]
    watermark = broker._fills_after
    assert broker.poll_fills(fake.now()) == [] and broker._fills_after == watermark   # no drift when idle


def test_poll_fills_reports_deltas_once_with_decimal_prices(fake, double):
    broker = make_broker(fake)
    o = broker.submit(mk(fake, qty="10"))
    double.fill(o.client_order_id, "100.00", qty="4")
    first = broker.poll_fills(fake.now())
    double.fill(o.client_order_id, "101.00", qty="6")
    second = broker.poll_fills(fake.now())
    assert broker.poll_fills(fake.now()) == []
    assert [(f.qty, f.price) for f in first + second] == [(Decimal(4), Decimal("100.00")),
                                                          (Decimal(6), Decimal("101.000000"))]
    assert first[0].client_order_id == o.client_order_id and first[0].side is Side.BUY


def test_crypto_positions_are_normalised(fake, double):
    double.add_position("BTC/USD", "1.0002997", "22577.25")
    double.add_position("SPY", "-3", "500")
    positions = make_broker(fake).positions()
    assert positions["BTC/USD"].qty == Decimal("1.0002997") and positions["SPY"].qty == Decimal(-3)


def test_flatten_all_handles_207_with_a_failed_symbol(fake, double):
    double.add_position("SPY", "10", "300")
    double.add_position("BTC/USD", "0.5", "60000")
    double.close_failures["SPY"] = example("error.403.insufficient_qty.json")
    broker = make_broker(fake)
    broker.submit(mk(fake, "ETH/USD", qty="0.02", otype=OrderType.LIMIT, tif=TimeInForce.GTC,
                     limit_price=Decimal(2000)))
    report = broker.flatten_all()
    assert not report.ok and len(report.canceled_order_ids) == 1
    assert set(report.closing_orders) == {"BTC/USD"}
    assert "insufficient qty" in report.failures["SPY"]


def test_flatten_all_reports_a_500_instead_of_raising(fake, double):
    double.fail("DELETE", r"/v2/positions$", status=500, body="Internal Server Error")
    report = make_broker(fake).flatten_all()
    assert "HTTP 500" in report.failures["*"]


# --------------------------------------------------------------------------- construction
def test_live_needs_flag_and_environment_opt_in(fake, monkeypatch):
    monkeypatch.delenv("HYDRA_ENABLE_LIVE_TRADING", raising=False)
    with pytest.raises(ConfigError, match="live trading refused"):
        make_broker(fake, paper=False, live=True)
    monkeypatch.setenv("HYDRA_ENABLE_LIVE_TRADING", "I_UNDERSTAND_REAL_MONEY")
    with pytest.raises(ConfigError, match="live trading refused"):
        make_broker(fake, paper=False)
    assert make_broker(fake, paper=False, live=True).base_url == "https://api.alpaca.markets"
    with pytest.raises(ConfigError, match="live endpoint"):
        make_broker(fake, url_override="https://api.alpaca.markets")


def test_urls_from_config_or_environment(fake, monkeypatch):
    monkeypatch.setenv("APCA_API_BASE_URL", "https://proxy.example/v2/")
    monkeypatch.setenv("APCA_API_DATA_URL", "https://data.example")
    assert resolve_urls() == ("https://proxy.example", "https://data.example")
    assert resolve_urls("https://cfg.example", None)[0] == "https://cfg.example"
    with AlpacaDouble(trading_url="https://proxy.example") as d:
        assert make_broker(fake).account().cash_usd == Decimal("122086.5")
        assert d.calls[0][1].startswith("https://proxy.example/v2/account")


def test_build_alpaca_factory(fake, monkeypatch):
    monkeypatch.delenv("APCA_API_BASE_URL", raising=False)
    monkeypatch.delenv("APCA_API_DATA_URL", raising=False)
    broker, data = build_alpaca(Settings(), make_keys(), "S1", fake.now)
    assert isinstance(broker, AlpacaBroker) and broker.paper and "BTC/USD" in data.crypto
    with pytest.raises(ConfigError, match="keys missing"):
        AlpacaBroker(make_keys("", ""), session_id="S1", clock=fake.now)


def test_extended_hours_limit_reaches_alpaca_with_the_flag_while_the_market_is_closed(fake, double):
    """Issue #18: a pre-market equity entry is a DAY limit order with extended_hours=true, and it is sent
    while the regular session is closed (a plain order is still refused then)."""
    double.market_open = False
    broker = make_broker(fake)
    order = broker.submit(mk(fake, otype=OrderType.LIMIT, limit_price=Decimal("386.24"), extended_hours=True))
    body = sent(double)
    assert {k: body[k] for k in ("type", "time_in_force", "limit_price", "extended_hours")} == {
        "type": "limit", "time_in_force": "day", "limit_price": "386.24", "extended_hours": True}
    assert order.status is OrderStatus.ACCEPTED
    with pytest.raises(MarketClosed):
        broker.submit(mk(fake, otype=OrderType.LIMIT, limit_price=Decimal("386.24")))
