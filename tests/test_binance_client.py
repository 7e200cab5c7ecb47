"""BinanceFuturesClient against the documented response bodies in shared/contracts (replayed with
``responses``): parsing, the weight budget, back-off on 429, refusal after 418, and typed errors."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import requests
import responses
from responses import matchers

from signals.binance import (BinanceAPIError, BinanceBanned, BinanceBudgetExceeded, BinanceDataError,
                             BinanceError, BinanceFuturesClient, BinanceLimits, BinanceRateLimited,
                             BinanceUnavailable)

UTC = timezone.utc
EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "contracts" / "binance" / "examples"
BASE = "https://fapi.binance.com"
PREMIUM, FUNDING = BASE + "/fapi/v1/premiumIndex", BASE + "/fapi/v1/fundingRate"
OI, OI_HIST = BASE + "/fapi/v1/openInterest", BASE + "/futures/data/openInterestHist"


def example(name: str):
    return json.loads((EXAMPLES / name).read_text())


class FakeClock:
    """Time that only moves when the client sleeps (or the test says so)."""

    def __init__(self, t: float = 1_700_000_020.0):   # 40 s into a UTC minute
        self.t, self.sleeps = t, []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def client(clock):
    return BinanceFuturesClient(clock=clock, sleep=clock.sleep)


@pytest.fixture
def rsps():
    with responses.RequestsMock() as mock:
        yield mock


# --------------------------------------------------------------------------- parsing
def test_premium_index_parses_decimals_and_utc_times(client, rsps):
    rsps.get(PREMIUM, json=example("premiumIndex.symbol.json"),
             match=[matchers.query_param_matcher({"symbol": "BTCUSDT"})])
    p = client.premium_index("BTCUSDT")
    assert p.symbol == "BTCUSDT"
    assert p.mark_price == Decimal("11793.63104562") and isinstance(p.mark_price, Decimal)
    assert p.index_price == Decimal("11781.80495970")
    assert p.last_funding_rate == Decimal("0.00038246")
    assert p.next_funding_time == datetime(2020, 8, 14, 8, 0, tzinfo=UTC)
    assert p.time == datetime(2020, 8, 14, 2, 1, 35, 2000, tzinfo=UTC)   # ms kept exactly


def test_premium_index_array_body_is_a_data_error(client, rsps):
    rsps.get(PREMIUM, json=example("premiumIndex.all.json"))   # the no-symbol shape, not what we asked
    with pytest.raises(BinanceDataError, match="expected a JSON object"):
        client.premium_index("BTCUSDT")


def test_funding_history_parses_sorts_and_sends_range(client, rsps):
    start, end = datetime(2019, 10, 9, tzinfo=UTC), datetime(2019, 10, 10, tzinfo=UTC)
    rows = list(reversed(example("fundingRate.json")))
    rows[0] = {**rows[0], "markPrice": ""}   # old records carry an empty mark price
    rsps.get(FUNDING, json=rows, match=[matchers.query_param_matcher(
        {"symbol": "BTCUSDT", "limit": "2", "startTime": "1570579200000", "endTime": "1570665600000"})])
    out = client.funding_rate_history("BTCUSDT", start=start, end=end, limit=2)
    assert [f.funding_time for f in out] == [datetime(2019, 10, 9, 8, tzinfo=UTC),
                                             datetime(2019, 10, 9, 16, tzinfo=UTC)]
    assert [f.rate for f in out] == [Decimal("-0.03750000"), Decimal("0.00010000")]
    assert out[0].mark_price == Decimal("34287.54619963") and out[1].mark_price is None


def test_open_interest_parses_base_units(client, rsps):
    rsps.get(OI, json=example("openInterest.json"), match=[matchers.query_param_matcher({"symbol": "BTCUSDT"})])
    oi = client.open_interest("BTCUSDT")
    assert (oi.symbol, oi.open_interest) == ("BTCUSDT", Decimal("10659.509"))
    assert oi.time == datetime(2020, 5, 14, 6, 25, 30, 11000, tzinfo=UTC)


@pytest.mark.parametrize("as_number", [False, True])
def test_open_interest_history_accepts_string_or_number_timestamps(client, rsps, as_number):
    rows = example("openInterestHist.json")
    assert all(isinstance(r["timestamp"], str) for r in rows)   # the documented shape
    if as_number:   # the live API sends numbers, and we feed them out of order
        rows = [{**r, "timestamp": int(r["timestamp"])} for r in reversed(rows)]
    rsps.get(OI_HIST, json=rows, match=[matchers.query_param_matcher(
        {"symbol": "BTCUSDT", "period": "5m", "limit": "2"})])
    out = client.open_interest_history("BTCUSDT", period="5m", limit=2)
    assert [p.timestamp for p in out] == [datetime(2020, 3, 2, 5, 45, tzinfo=UTC),
                                          datetime(2020, 3, 2, 5, 50, tzinfo=UTC)]
    assert out[0].sum_open_interest == Decimal("20403.63700000")
    assert out[1].sum_open_interest_value == Decimal("149940752.14464448")


@pytest.mark.parametrize("call, message", [
    (lambda c: c.premium_index("btc-usd"), "symbol"),
    (lambda c: c.funding_rate_history("BTCUSDT", limit=1001), "limit"),
    (lambda c: c.open_interest_history("BTCUSDT", period="3h"), "period"),
    (lambda c: c.funding_rate_history("BTCUSDT", start=datetime(2024, 1, 1)), "start"),
    (lambda c: c.funding_rate_history("BTCUSDT", start=datetime(2024, 1, 2, tzinfo=UTC),
                                      end=datetime(2024, 1, 1, tzinfo=UTC)), "after end"),
])
def test_bad_arguments_name_the_field_and_send_nothing(client, rsps, call, message):
    with pytest.raises(ValueError, match=message):
        call(client)
    assert len(rsps.calls) == 0


# --------------------------------------------------------------------------- budget
def test_weight_header_is_tracked_and_budget_waits_then_refuses(clock, rsps):
    client = BinanceFuturesClient(clock=clock, sleep=clock.sleep, limits=BinanceLimits(weight_per_min=1200))
    rsps.get(OI, json=example("openInterest.json"), headers={"X-MBX-USED-WEIGHT-1M": "1199"})
    client.open_interest("BTCUSDT")
    assert client.server_used_weight_1m == 1199 and client.used_weight_1m == 1199
    client.open_interest("BTCUSDT")            # 1199 + 1 fits the 1200 budget
    assert len(rsps.calls) == 2 and clock.sleeps == []
    # budget spent, 20 s to the next minute > max_wait_s: refused locally, nothing sent
    with pytest.raises(BinanceBudgetExceeded) as info:
        client.open_interest("BTCUSDT")
    assert len(rsps.calls) == 2 and info.value.retry_after_s == pytest.approx(20.0)
    assert isinstance(info.value, BinanceRateLimited)
    # 3 s before the minute rolls the client waits instead, then sends in the new minute
    clock.t += 17
    client.open_interest("BTCUSDT")
    assert clock.sleeps == [pytest.approx(3.0)] and len(rsps.calls) == 3


def test_new_minute_resets_the_local_weight(client, clock, rsps):
    rsps.get(OI, json=example("openInterest.json"))   # no header: the local count alone
    client.open_interest("BTCUSDT")
    client.open_interest("BTCUSDT")
    assert client.used_weight_1m == 2
    clock.t += 60
    assert client.used_weight_1m == 0


def test_funding_endpoint_has_its_own_request_window(clock, rsps):
    client = BinanceFuturesClient(clock=clock, sleep=clock.sleep, limits=BinanceLimits(funding_req_per_5min=3))
    rsps.get(FUNDING, json=example("fundingRate.json"))
    for _ in range(3):
        client.funding_rate_history("BTCUSDT", limit=2)
    with pytest.raises(BinanceBudgetExceeded, match="funding"):
        client.funding_rate_history("BTCUSDT", limit=2)
    rsps.get(OI, json=example("openInterest.json"))
    client.open_interest("BTCUSDT")            # other endpoints are not in that window
    assert len(rsps.calls) == 4
    clock.t += 300
    client.funding_rate_history("BTCUSDT", limit=2)
    assert len(rsps.calls) == 5


# --------------------------------------------------------------------------- rate limits and bans
def test_429_backs_off_without_hammering_and_honours_retry_after(client, clock, rsps):
    rsps.get(OI, json=example("error.too_many_requests.json"), status=429, headers={"Retry-After": "30"})
    with pytest.raises(BinanceRateLimited, match="-1003") as info:
        client.open_interest("BTCUSDT")
    assert info.value.retry_after_s == 30 and not isinstance(info.value, BinanceBudgetExceeded)
    for call in (lambda: client.open_interest("BTCUSDT"), lambda: client.premium_index("BTCUSDT")):
        with pytest.raises(BinanceRateLimited, match="backing off"):
            call()
    assert len(rsps.calls) == 1 and clock.sleeps == []     # one request, no retry, no sleeping
    clock.t += 31
    rsps.replace(responses.GET, OI, json=example("openInterest.json"))
    assert client.open_interest("BTCUSDT").open_interest == Decimal("10659.509")
    assert len(rsps.calls) == 2


def test_418_ban_refuses_every_call_until_the_ban_ends(client, clock, rsps):
    until_ms = int((clock.t + 600) * 1000)
    rsps.get(PREMIUM, status=418, json={"code": -1003, "msg": f"Way too many requests; IP banned until {until_ms}."})
    with pytest.raises(BinanceBanned) as info:
        client.premium_index("BTCUSDT")
    assert info.value.until == datetime.fromtimestamp(until_ms / 1000, UTC)
    clock.t += 590
    for call in (lambda: client.premium_index("BTCUSDT"), lambda: client.open_interest("BTCUSDT"),
                 lambda: client.open_interest_history("BTCUSDT")):
        with pytest.raises(BinanceBanned, match="refused"):
            call()
    assert len(rsps.calls) == 1
    clock.t += 11
    rsps.get(OI, json=example("openInterest.json"))
    client.open_interest("BTCUSDT")
    assert len(rsps.calls) == 2


def test_418_without_a_stated_time_uses_retry_after(client, clock, rsps):
    rsps.get(OI, status=418, body="banned", headers={"Retry-After": "120"})
    with pytest.raises(BinanceBanned) as info:
        client.open_interest("BTCUSDT")
    assert info.value.until == datetime.fromtimestamp(clock.t + 120, UTC)


# --------------------------------------------------------------------------- unavailable
def test_451_is_unavailable_and_not_retried(client, clock, rsps):
    rsps.get(OI, status=451, json={"code": 0, "msg": "Service unavailable from a restricted location"})
    with pytest.raises(BinanceUnavailable, match="451"):
        client.open_interest("BTCUSDT")
    assert len(rsps.calls) == 1 and clock.sleeps == []


def test_5xx_is_retried_a_bounded_number_of_times_with_backoff(client, clock, rsps):
    rsps.get(OI, status=503, body="Service Unavailable")
    with pytest.raises(BinanceUnavailable, match="after 3 attempts: HTTP 503"):
        client.open_interest("BTCUSDT")
    assert len(rsps.calls) == 3 and clock.sleeps == [0.5, 1.0]


def test_5xx_then_success_returns_the_data(client, rsps):
    rsps.get(OI, status=502, body="Bad Gateway")
    rsps.get(OI, json=example("openInterest.json"))
    assert client.open_interest("BTCUSDT").symbol == "BTCUSDT"
    assert len(rsps.calls) == 2


def test_timeout_is_retried_then_unavailable(client, clock, rsps):
    rsps.get(OI, body=requests.exceptions.ConnectTimeout("connect timed out"))
    with pytest.raises(BinanceUnavailable, match="ConnectTimeout"):
        client.open_interest("BTCUSDT")
    assert len(rsps.calls) == 3 and len(clock.sleeps) == 2
    assert client.timeout == (3.05, 10.0)


def test_connection_error_is_unavailable(clock, rsps):
    client = BinanceFuturesClient(clock=clock, sleep=clock.sleep, max_retries=0)
    rsps.get(OI, body=requests.exceptions.ConnectionError("connection refused"))
    with pytest.raises(BinanceUnavailable, match="ConnectionError"):
        client.open_interest("BTCUSDT")
    assert len(rsps.calls) == 1


# --------------------------------------------------------------------------- bad answers
def test_error_body_becomes_api_error_without_retry(client, rsps):
    rsps.get(OI, status=400, json=example("error.invalid_symbol.json"))
    with pytest.raises(BinanceAPIError) as info:
        client.open_interest("NOPEUSDT")
    assert (info.value.code, info.value.msg, info.value.status) == (-1121, "Invalid symbol.", 400)
    assert len(rsps.calls) == 1


def test_malformed_json_is_a_data_error(client, rsps):
    rsps.get(FUNDING, body='[{"symbol": "BTCUSDT", "fundingRate": ', content_type="application/json")
    with pytest.raises(BinanceDataError, match="not JSON") as info:
        client.funding_rate_history("BTCUSDT")
    assert info.value.field == "body"


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r.pop("markPrice"), "markPrice"),
    (lambda r: r.update(lastFundingRate="abc"), "lastFundingRate"),
    (lambda r: r.update(time="yesterday"), "time"),
    (lambda r: r.update(time=1e20), "time"),                # was a raw OverflowError (timedelta)
    (lambda r: r.update(time=300_000_000_000_000), "time"),  # year ~11476: past datetime's year 9999
    (lambda r: r.update(indexPrice="NaN"), "indexPrice"),
    (lambda r: r.update(indexPrice="1e400"), "indexPrice"),     # a finite Decimal, an infinite float
    (lambda r: r.update(symbol=None), "symbol"),
])
def test_missing_or_bad_field_is_named(client, rsps, mutate, field):
    row = example("premiumIndex.symbol.json")
    mutate(row)
    rsps.get(PREMIUM, json=row)
    with pytest.raises(BinanceDataError, match=f"'{field}'") as info:
        client.premium_index("BTCUSDT")
    assert info.value.field == field


# a JSON null or an empty string in a required number is named too (Decimal('None') and Decimal('') raise);
# only a funding record's mark price may be empty (old records)
@pytest.mark.parametrize("url, name, call, field, value", [
    (PREMIUM, "premiumIndex.symbol.json", "premium_index", "markPrice", None),
    (PREMIUM, "premiumIndex.symbol.json", "premium_index", "indexPrice", ""),
    (PREMIUM, "premiumIndex.symbol.json", "premium_index", "lastFundingRate", None),
    (OI, "openInterest.json", "open_interest", "openInterest", None),
    (FUNDING, "fundingRate.json", "funding_rate_history", "fundingRate", None),
    (FUNDING, "fundingRate.json", "funding_rate_history", "fundingRate", ""),
    (OI_HIST, "openInterestHist.json", "open_interest_history", "sumOpenInterest", None),
    (OI_HIST, "openInterestHist.json", "open_interest_history", "sumOpenInterestValue", ""),
])
def test_a_null_or_empty_required_decimal_is_a_named_data_error(client, rsps, url, name, call, field, value):
    body = example(name)
    (body[0] if isinstance(body, list) else body)[field] = value
    rsps.get(url, json=body)
    with pytest.raises(BinanceDataError, match=f"'{field}'") as info:
        getattr(client, call)("BTCUSDT")
    assert info.value.field == field


def test_only_the_funding_mark_price_may_be_empty(client, rsps):
    body = example("fundingRate.json")
    body[0]["markPrice"], body[1]["markPrice"] = "", None
    rsps.get(FUNDING, json=body)
    assert [f.mark_price for f in client.funding_rate_history("BTCUSDT")] == [None, None]


def test_bad_row_in_history_is_named_with_its_index(client, rsps):
    rows = example("openInterestHist.json")
    del rows[1]["sumOpenInterest"]
    rsps.get(OI_HIST, json=rows)
    with pytest.raises(BinanceDataError, match=r"openInterestHist\[1\]: missing field 'sumOpenInterest'"):
        client.open_interest_history("BTCUSDT")


def test_every_error_is_a_binance_error():
    for cls in (BinanceAPIError, BinanceBanned, BinanceBudgetExceeded, BinanceDataError,
                BinanceRateLimited, BinanceUnavailable):
        assert issubclass(cls, BinanceError)
