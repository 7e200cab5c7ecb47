"""The Binance USD-M demo adapter at the HTTP boundary (``responses``), against the contract examples.

Every signed request's HMAC and timestamp are checked by the double (``tests/binance_usdm_double.py``);
a bad signature is answered with the verbatim -1022 body and counted, and the tests assert none occurred.
"""
from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timezone
from decimal import Decimal
from urllib.parse import urlsplit

import pytest
import responses

from hydra_engine.adapters.binance_usdm import (CLIENT_ID, DEMO_URL, BinanceKeys, BinanceUsdmBroker, binance_client_id,
                                                sign)
from hydra_engine.config import ConfigError
from hydra_engine.domain import Order, OrderStatus, OrderType, Side, TimeInForce, make_client_order_id
from hydra_engine.perp.records import ReduceOnlyRejected
from hydra_engine.ports import InsufficientBuyingPower, RateLimited, UnknownOrderOutcome

from .binance_usdm_double import KEY, SECRET, UsdmDouble, example

UTC = timezone.utc
SESSION = "paper-20250301T120000123Z"


@pytest.fixture()
def keys(monkeypatch):
    monkeypatch.setenv("BINANCE_API_KEY", KEY)
    monkeypatch.setenv("BINANCE_API_SECRET", SECRET)
    monkeypatch.delenv("HYDRA_BINANCE_TRADE_URL", raising=False)
    monkeypatch.delenv("HYDRA_ENABLE_LIVE_TRADING", raising=False)
    return BinanceKeys()


@pytest.fixture()
def exchange():
    double = UsdmDouble()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        double.install(mock, DEMO_URL)
        yield double, mock


def broker(keys, tmp_path, **kw) -> BinanceUsdmBroker:
    return BinanceUsdmBroker(keys, ["BTCUSDT", "ETHUSDT"], state_path=tmp_path / "binance_ids.json",
                             sleep=lambda s: None, **kw)


def order(seq: int, side=Side.BUY, qty="0.010", *, purpose="entry", reduce_only=False, otype=OrderType.MARKET,
          stop=None, symbol="BTCUSDT") -> Order:
    return Order(make_client_order_id(SESSION, "perp_funding_carry", symbol, seq), symbol, side, Decimal(qty), otype,
                 TimeInForce.GTC, datetime.now(UTC), "perp_funding_carry", purpose=purpose, reduce_only=reduce_only,
                 stop_price=stop)


def test_signature_matches_the_documented_test_vector():
    # NOTES-2 §4.4 (the Binance docs' example): this payload and secret give this signature
    secret = "2b5eb11e18796d12d88f13dc27dbbd02c2cc51ff7059765ed9821957d82bb4d9"
    payload = "symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=9000&timeInForce=GTC&recvWindow=5000&timestamp=1591702613943"
    assert sign(secret, payload) == "3c661234138461fcc7a7d8746c6558c9842d4e10870d2ecbedf7777cad694af9"


def test_client_ids_fit_binances_pattern_and_are_deterministic():
    coid = make_client_order_id(SESSION, "a_very_long_strategy_name_for_perps", "BTCUSDT", 7)
    assert len(coid) > 36
    bid = binance_client_id(coid)
    assert CLIENT_ID.match(bid) and len(bid) == 36
    assert bid == binance_client_id(coid) and bid != binance_client_id(coid[:-1] + "8")


def test_a_recorded_session_orders_leverage_and_a_restart_without_a_duplicate(keys, exchange, tmp_path):
    double, mock = exchange
    b = broker(keys, tmp_path)
    rec = b.start({"BTCUSDT": 5, "ETHUSDT": 3})
    # leverage and margin type were set at start, for every symbol
    assert double.leverage == {"BTCUSDT": 5, "ETHUSDT": 3}
    assert double.margin_type == {"BTCUSDT": "ISOLATED", "ETHUSDT": "ISOLATED"}
    assert rec.positions == {} and rec.open_orders == [] and not rec.problems
    # an entry: a signed POST with the form body, the hashed id, no reduceOnly
    entry = order(1)
    sent = b.submit(entry)
    post = double.calls("POST", "/fapi/v1/order")[-1]
    assert post["newClientOrderId"] == binance_client_id(entry.client_order_id) and "reduceOnly" not in post
    assert post["type"] == "MARKET" and post["quantity"] == "0.01" and post["side"] == "BUY"
    assert sent.status is OrderStatus.FILLED and sent.filled_qty == Decimal("0.010")
    fills = b.poll_fills(datetime.now(UTC))
    assert [(f.client_order_id, f.side, f.qty, f.price) for f in fills] == \
        [(entry.client_order_id, Side.BUY, Decimal("0.010"), Decimal("30000.0"))]
    assert fills[0].fee_usd == Decimal("0.15000000")                 # 5 bps taker on 300 USDT, from userTrades
    assert b.positions()["BTCUSDT"].qty == Decimal("0.010")
    # a conditional stop goes to the algo endpoint, reduce-only, at the mark price trigger
    stop = order(2, Side.SELL, purpose="stop", otype=OrderType.STOP, stop=Decimal("28500.0"))
    b.submit(stop)
    algo = double.calls("POST", "/fapi/v1/algoOrder")[-1]
    assert algo["algoType"] == "CONDITIONAL" and algo["type"] == "STOP_MARKET" and algo["triggerPrice"] == "28500"
    assert algo["reduceOnly"] == "true" and algo["clientAlgoId"] == binance_client_id(stop.client_order_id)
    assert not double.calls("POST", "/fapi/v1/order")[1:]            # nothing conditional on /fapi/v1/order
    assert [o.client_order_id for o in b.open_orders()] == [stop.client_order_id]

    # --- the process dies; a new one starts on the same state file
    posts_before = len(double.calls("POST", "/fapi/v1/order")) + len(double.calls("POST", "/fapi/v1/algoOrder"))
    b2 = broker(keys, tmp_path)
    rec2 = b2.start({"BTCUSDT": 5, "ETHUSDT": 3})
    assert rec2.positions["BTCUSDT"].qty == Decimal("0.010")
    assert [o.client_order_id for o in rec2.open_orders] == [stop.client_order_id]   # HYDRA's id, not Binance's
    assert rec2.foreign_orders == [] and not rec2.problems
    # the restarted engine re-sends what it had (a retry, resolve_submitting): found at Binance, not placed again
    again = b2.submit(entry)
    again_stop = b2.submit(stop)
    assert again.status is OrderStatus.FILLED and again_stop.status is OrderStatus.ACCEPTED
    posts_after = len(double.calls("POST", "/fapi/v1/order")) + len(double.calls("POST", "/fapi/v1/algoOrder"))
    assert posts_after == posts_before
    assert len(double.orders) == 1 and len(double.algo) == 1
    # its fills are not reported twice after the restart (the cursor was persisted by the next poll) ...
    b.poll_fills(datetime.now(UTC))   # the first process's next poll persisted its cursor
    b3 = broker(keys, tmp_path)
    assert b3.poll_fills(datetime.now(UTC)) == []
    # a reduce-only exit: cancel the stop, close the position
    b3.cancel(stop.client_order_id)
    assert double.algo[2146760]["algoStatus"] == "CANCELED"
    exit_ = order(3, Side.SELL, purpose="exit", reduce_only=True)
    b3.submit(exit_)
    assert double.calls("POST", "/fapi/v1/order")[-1]["reduceOnly"] == "true"
    assert b3.positions() == {}
    assert [f.client_order_id for f in b3.poll_fills(datetime.now(UTC))] == [exit_.client_order_id]
    assert double.bad_signatures == 0


def test_a_503_on_submit_is_resolved_by_query_never_resent(keys, exchange, tmp_path):
    double, _ = exchange
    b = broker(keys, tmp_path)
    b.start()
    # the exchange places the order, then answers 503 "unknown"
    double.fail("POST", "/fapi/v1/order", 503, {"code": -1000, "msg": "Unknown error, please check your request or try again later."},
                after=True)
    o = order(1)
    sent = b.submit(o)
    assert sent.status is OrderStatus.FILLED and sent.broker_order_id == str(next(iter(double.orders)))
    assert len(double.calls("POST", "/fapi/v1/order")) == 1
    assert double.calls("GET", "/fapi/v1/order")[-1]["origClientOrderId"] == binance_client_id(o.client_order_id)
    # a 503 before anything was placed: the query finds nothing -> unknown, not re-sent, resolved next cycle
    double.fail("POST", "/fapi/v1/order", 503, {"code": -1000, "msg": "Unknown error"})
    o2 = order(2)
    with pytest.raises(UnknownOrderOutcome):
        b.submit(o2)
    assert len(double.calls("POST", "/fapi/v1/order")) == 2 and len(double.orders) == 1
    rec = b.reconcile()
    assert rec.resolved == {o2.client_order_id: "rejected"}
    assert b.get_order(o2.client_order_id) is None
    assert double.bad_signatures == 0


def test_clock_skew_is_resynced_and_the_request_sent_once_more(keys, exchange, tmp_path):
    double, _ = exchange
    b = broker(keys, tmp_path)
    b.start()
    double.skew_ms = -20_000          # Binance's clock is 20 s behind ours: our timestamp is "ahead"
    sent = b.submit(order(1))
    assert sent.status is OrderStatus.FILLED
    assert abs(b._offset_ms - (-20_000)) < 2_000
    assert len(double.orders) == 1    # the -1021 answer was a refusal: exactly one order exists
    assert len(double.calls("POST", "/fapi/v1/order")) == 2 and double.calls("GET", "/fapi/v1/time")
    assert double.bad_signatures == 0


def test_429_and_418_back_off_without_sending(keys, exchange, tmp_path):
    double, _ = exchange
    now = [datetime(2025, 3, 1, 12, tzinfo=UTC)]
    b = broker(keys, tmp_path, clock=lambda: now[0])
    double.skew_ms = int((now[0] - datetime.now(UTC)).total_seconds() * 1000)
    b.start()
    double.fail("GET", "/fapi/v2/account", 429, example("error.too_many_requests.json"), headers={"Retry-After": "30"})
    with pytest.raises(RateLimited):
        b.account()
    n = len(double.requests)
    with pytest.raises(RateLimited):
        b.positions()                 # refused locally: nothing sent while backing off
    assert len(double.requests) == n
    now[0] = now[0].replace(second=31)
    double.skew_ms = int((now[0] - datetime.now(UTC)).total_seconds() * 1000)
    assert b.positions() == {}
    ban = example("error.-1003.ip_banned.template.json")
    until_ms = int(now[0].timestamp() * 1000) + 120_000          # the template's %s: two minutes from now
    ban["msg"] = ban["msg"].replace("1700000000000", str(until_ms))
    double.fail("GET", "/fapi/v2/account", 418, ban)
    with pytest.raises(RateLimited, match="418"):
        b.account()
    assert b._blocked_until == datetime.fromtimestamp(until_ms / 1000, UTC)
    n = len(double.requests)
    with pytest.raises(RateLimited):
        b.account()
    assert len(double.requests) == n


def test_venue_refusals_are_typed(keys, exchange, tmp_path):
    double, _ = exchange
    b = broker(keys, tmp_path)
    b.start()
    with pytest.raises(ReduceOnlyRejected):            # -2022: nothing to reduce
        b.submit(order(1, Side.SELL, reduce_only=True))
    double.fail("POST", "/fapi/v1/order", 400, example("error.-2019.margin_insufficient.json"))
    with pytest.raises(InsufficientBuyingPower):
        b.submit(order(2))
    # a refused order is settled as rejected, not unknown
    assert b._ids[binance_client_id(order(2).client_order_id)]["status"] == "rejected"


def test_hedge_mode_and_live_url_are_refused(keys, exchange, tmp_path, monkeypatch):
    double, _ = exchange
    double.hedge_mode = True
    with pytest.raises(ConfigError, match="hedge mode"):
        broker(keys, tmp_path).start()
    with pytest.raises(ConfigError, match="live Binance trading refused"):
        BinanceUsdmBroker(keys, ["BTCUSDT"], live=True)
    with pytest.raises(ConfigError, match="live endpoint"):
        BinanceUsdmBroker(keys, ["BTCUSDT"], base_url="https://fapi.binance.com")
    monkeypatch.setenv("HYDRA_ENABLE_LIVE_TRADING", "I_UNDERSTAND_REAL_MONEY")
    assert BinanceUsdmBroker(keys, ["BTCUSDT"], live=True).base_url == "https://fapi.binance.com"


def test_funding_income_is_booked_once(keys, exchange, tmp_path):
    double, _ = exchange
    b = broker(keys, tmp_path)
    b.start()
    b.submit(order(1))
    b.positions()
    t = double.server_ms()
    row = {**example("income.funding_fee.constructed_from_documented_schema.json")[0], "symbol": "BTCUSDT",
           "time": t, "income": "-0.03000000", "incomeType": "FUNDING_FEE"}
    double.income.append(row)
    double.funding_rows["BTCUSDT"] = [{"symbol": "BTCUSDT", "fundingRate": "0.00010000", "fundingTime": t,
                                      "markPrice": "30000.00"}]
    pays = b.settle_funding(datetime.now(UTC))
    assert [(p.symbol, p.amount_usd, p.rate, p.position_qty) for p in pays] == \
        [("BTCUSDT", Decimal("-0.03000000"), Decimal("0.00010000"), Decimal("0.010"))]
    assert b.settle_funding(datetime.now(UTC)) == []
    assert broker(keys, tmp_path).settle_funding(datetime.now(UTC)) == []     # also after a restart


def test_keys_never_appear_in_errors(keys, exchange, tmp_path):
    double, _ = exchange
    b = broker(keys, tmp_path)
    double.fail("GET", "/fapi/v2/account", 400, {"code": -1022, "msg": f"bad key {KEY} secret {SECRET}"})
    with pytest.raises(Exception) as err:
        b.account()
    assert KEY not in str(err.value) and SECRET not in str(err.value) and "***" in str(err.value)
