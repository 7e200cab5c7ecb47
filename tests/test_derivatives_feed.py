"""BinanceDerivativesFeed: series in the replay shape from real funding / open-interest history
(shared data, served as Binance would), no look-ahead, and an honest health verdict."""
from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import responses
from responses import matchers

from hydra_engine.ports import PointSeries
from signals.binance import BinanceFuturesClient
from signals.derivatives_feed import FUNDING, OPEN_INTEREST, BinanceDerivativesFeed, FeedLimits

UTC = timezone.utc
DATA = Path(os.environ.get("HYDRA_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PERP = DATA / "crypto_perp"
BASE = "https://fapi.binance.com"
FUNDING_URL, OI_URL, OI_HIST_URL = (BASE + "/fapi/v1/fundingRate", BASE + "/fapi/v1/openInterest",
                                    BASE + "/futures/data/openInterestHist")
NOW = datetime(2025, 5, 20, 12, 30, tzinfo=UTC)
SYMBOLS = {"BTC/USD": "BTCUSDT", "ETH/USD": "ETHUSDT"}


def _ms(ts: pd.Timestamp) -> int:
    return int(ts.value // 1_000_000)


@pytest.fixture(scope="module")
def history():
    """Per Binance symbol: real settled funding (Binance) and hourly open interest (Bybit, the proxy
    the shared data documents), both cut at NOW + 1 day so the bodies also contain 'future' rows."""
    out = {}
    for bsym in SYMBOLS.values():
        funding = pd.read_parquet(PERP / "binance_usdm" / "funding" / f"{bsym}_funding_8h.parquet")["funding_rate"]
        oi = pd.read_parquet(PERP / "bybit_linear" / "open_interest" / f"{bsym}_oi_1h.parquet")["open_interest"]
        horizon = pd.Timestamp(NOW + timedelta(days=1))
        out[bsym] = (funding[funding.index <= horizon], oi[oi.index <= horizon])
    return out


def funding_body(funding: pd.Series, bsym: str, upto: datetime, limit: int) -> list[dict]:
    rows = funding[funding.index <= pd.Timestamp(upto)].tail(limit)
    return [{"symbol": bsym, "fundingRate": repr(v), "fundingTime": _ms(t), "markPrice": ""} for t, v in rows.items()]


def oi_hist_body(oi: pd.Series, bsym: str, upto: datetime, limit: int) -> list[dict]:
    rows = oi[oi.index <= pd.Timestamp(upto)].tail(limit)
    return [{"symbol": bsym, "sumOpenInterest": repr(v), "sumOpenInterestValue": "0", "CMCCirculatingSupply": "0",
             "timestamp": str(_ms(t))} for t, v in rows.items()]


def serve(rsps, history, upto: datetime, funding_limit=100, oi_limit=500, live_at: datetime | None = None):
    """Register what Binance would answer at ``upto`` for every symbol (live OI stamped ``live_at``)."""
    live_at = live_at or upto
    for bsym, (funding, oi) in history.items():
        rsps.get(FUNDING_URL, json=funding_body(funding, bsym, upto, funding_limit), match=[
            matchers.query_param_matcher({"symbol": bsym, "limit": str(funding_limit)})])
        rsps.get(OI_HIST_URL, json=oi_hist_body(oi, bsym, upto, oi_limit), match=[
            matchers.query_param_matcher({"symbol": bsym, "period": "1h", "limit": str(oi_limit)})])
        live = float(oi[oi.index <= pd.Timestamp(live_at)].iloc[-1]) * 1.01
        rsps.get(OI_URL, json={"symbol": bsym, "openInterest": repr(live), "time": int(live_at.timestamp() * 1000)},
                 match=[matchers.query_param_matcher({"symbol": bsym})])


class Clock:
    def __init__(self):
        self.t, self.sleeps = NOW.timestamp(), []

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.sleeps.append(s)
        self.t += s


@pytest.fixture
def rsps():
    with responses.RequestsMock() as mock:
        yield mock


def make_feed(max_retries=0, **limits) -> BinanceDerivativesFeed:
    clock = Clock()
    client = BinanceFuturesClient(clock=clock, sleep=clock.sleep, max_retries=max_retries)
    return BinanceDerivativesFeed(client, SYMBOLS, FeedLimits(**limits))


def test_series_have_the_replay_shape_and_real_values(rsps, history):
    serve(rsps, history, NOW)
    feed = make_feed(max_points=120)
    assert feed.refresh(NOW) is True
    series = feed.series(NOW)
    assert set(series) == {(k, s) for k in (FUNDING, OPEN_INTEREST) for s in SYMBOLS}
    for (kind, sym), s in series.items():
        assert isinstance(s, PointSeries) and (s.kind, s.symbol) == (kind, sym)
        assert s.ts.dtype == np.int64 and s.values.dtype == np.float64
        assert np.all(np.diff(s.ts) > 0) and len(s) <= 120
    funding, oi = history["BTCUSDT"]
    btc_funding = series[(FUNDING, "BTC/USD")]
    expected = funding[funding.index <= pd.Timestamp(NOW)].tail(100)
    assert len(btc_funding) == 100                       # all settlements fetched, under max_points
    np.testing.assert_array_equal(btc_funding.values, expected.to_numpy())
    assert btc_funding.ts[-1] == _ms(expected.index[-1]) // 1000
    btc_oi = series[(OPEN_INTEREST, "BTC/USD")]
    assert len(btc_oi) == 120                            # 500 hourly points + live, bounded to 120
    assert btc_oi.ts[-1] == int(NOW.timestamp())         # the live snapshot closes the series
    hourly = oi[oi.index <= pd.Timestamp(NOW)]
    assert btc_oi.values[-1] == pytest.approx(hourly.iloc[-1] * 1.01)
    np.testing.assert_array_equal(btc_oi.values[:-1], hourly.tail(119).to_numpy())
    assert np.all(np.diff(btc_oi.ts[:-1]) == 3600)
    assert feed.health() == (True, "ok") and feed.stale(NOW) == {}


def test_no_point_after_now_is_served(rsps, history):
    later = NOW + timedelta(hours=20)                    # Binance answers with data up to `later`
    serve(rsps, history, later)
    feed = make_feed()
    feed.refresh(later)
    raw = feed.series(later)
    for probe in (NOW, NOW + timedelta(hours=7, minutes=59), later - timedelta(seconds=1)):
        cutoff = int(probe.timestamp())
        for key, s in feed.series(probe).items():
            assert s.ts.max() <= cutoff, key
            hidden = raw[key].ts[raw[key].ts > cutoff]
            assert len(s) + len(hidden) == len(raw[key])   # filtered, not truncated
            assert len(hidden) > 0 or probe != NOW
    assert (OPEN_INTEREST, "BTC/USD") not in feed.series(datetime(2020, 1, 1, tzinfo=UTC))


def test_broken_feed_is_unhealthy_keeps_old_data_and_never_raises(rsps, history):
    serve(rsps, history, NOW)
    feed = make_feed()
    assert feed.refresh(NOW)
    before = feed.series(NOW)
    rsps.reset()
    rsps.get(FUNDING_URL, status=503, body="Service Unavailable")
    later = NOW + timedelta(minutes=1)
    assert feed.refresh(later) is False                  # recorded, not raised
    ok, reason = feed.health()
    assert not ok and "BinanceUnavailable" in reason and "BTC/USD" in reason and "ETH/USD" in reason
    assert set(feed.stale(later)) == {"BTC/USD", "ETH/USD"}
    after = feed.series(later)
    assert after.keys() == before.keys()
    for key in before:
        np.testing.assert_array_equal(after[key].ts, before[key].ts)
        np.testing.assert_array_equal(after[key].values, before[key].values)


def test_rate_limit_stops_the_refresh_for_every_symbol(rsps, history):
    rsps.get(FUNDING_URL, status=429, headers={"Retry-After": "60"},
             json={"code": -1003, "msg": "Too many requests; current limit is 2400 requests per minute."})
    feed = make_feed()
    assert feed.refresh(NOW) is False
    assert len(rsps.calls) == 1                          # after BTC's 429 the client refused ETH locally
    stale = feed.stale(NOW)
    assert set(stale) == {"BTC/USD", "ETH/USD"} and all("BinanceRateLimited" in v for v in stale.values())
    assert feed.series(NOW) == {}


def test_half_a_refresh_is_not_merged(rsps, history):
    funding, _ = history["BTCUSDT"]
    rsps.get(FUNDING_URL, json=funding_body(funding, "BTCUSDT", NOW, 100))
    rsps.get(OI_HIST_URL, body="<html>gateway</html>")  # malformed: the symbol's refresh fails
    feed = make_feed(max_retries=0)
    feed.refresh(NOW)
    assert feed.series(NOW) == {}
    assert "BinanceDataError" in feed.stale(NOW)["BTC/USD"]


def test_stale_data_makes_the_feed_unhealthy(rsps, history):
    serve(rsps, history, NOW)
    feed = make_feed()
    feed.refresh(NOW)
    assert feed.health(NOW + timedelta(minutes=10)) == (True, "ok")
    ok, reason = feed.health(NOW + timedelta(minutes=16))
    assert not ok and "open_interest stale" in reason
    # funding stale alone: OI fresh but the newest settlement is more than 8h30 old
    rsps.reset()
    serve(rsps, history, NOW, live_at=NOW + timedelta(hours=9), funding_limit=5, oi_limit=11)
    feed.refresh(NOW + timedelta(hours=9))
    assert "funding_rate stale" in feed.stale(NOW + timedelta(hours=9))["BTC/USD"]


@pytest.mark.parametrize("live_oi", ["0", "-5.2"])
def test_open_interest_of_zero_or_below_is_kept_out_and_marks_the_symbol_stale(rsps, history, live_oi):
    funding, oi = history["BTCUSDT"]
    hist = oi_hist_body(oi, "BTCUSDT", NOW, 500)
    hist[-2]["sumOpenInterest"] = "0"                    # replay keeps such a point out of the series
    rsps.get(FUNDING_URL, json=funding_body(funding, "BTCUSDT", NOW, 100))
    rsps.get(OI_HIST_URL, json=hist)
    rsps.get(OI_URL, json={"symbol": "BTCUSDT", "openInterest": live_oi, "time": int(NOW.timestamp() * 1000)})
    clock = Clock()
    feed = BinanceDerivativesFeed(BinanceFuturesClient(clock=clock, sleep=clock.sleep, max_retries=0),
                                  {"BTC/USD": "BTCUSDT"})
    feed.refresh(NOW)
    values = feed.series(NOW)[(OPEN_INTEREST, "BTC/USD")].values
    assert len(values) == 499 and np.all(values > 0)     # neither the bad hourly point nor the live one
    ok, reason = feed.health()                           # was (True, "ok")
    assert not ok and f"BTC/USD: newest open_interest from Binance is invalid ({live_oi} at" in reason


def test_later_refreshes_pull_small_pages_and_extend_the_history(rsps, history):
    serve(rsps, history, NOW)
    feed = make_feed()
    feed.refresh(NOW)
    n_before = len(feed.series(NOW)[(FUNDING, "BTC/USD")])
    later = NOW + timedelta(hours=8)
    rsps.reset()
    # query matchers insist on small pages: the usual 5 settlements, and the 10 hours since the newest one
    serve(rsps, history, later, funding_limit=5, oi_limit=10)
    assert feed.refresh(later)
    s = feed.series(later)[(FUNDING, "BTC/USD")]
    assert len(s) == n_before + 1 and s.ts[-1] > int(NOW.timestamp())
    assert feed.health(later) == (True, "ok")


def test_a_refresh_after_an_outage_fills_the_hole(rsps, history):
    """20 hours without a refresh (e.g. an HTTP 418 ban): asking for the usual latest 3 hours of open
    interest would leave a 17-hour hole in the series while the feed reported itself healthy."""
    from urllib.parse import parse_qs, urlparse

    def answer(body_for):
        def callback(request):
            q = {k: v[0] for k, v in parse_qs(urlparse(request.url).query).items()}
            funding, oi = history[q["symbol"]]
            return 200, {}, json.dumps(body_for(funding, oi, q))
        return callback

    def install(upto):
        rsps.reset()
        rsps.add_callback(responses.GET, FUNDING_URL, callback=answer(
            lambda f, oi, q: funding_body(f, q["symbol"], upto, int(q["limit"]))))
        rsps.add_callback(responses.GET, OI_HIST_URL, callback=answer(
            lambda f, oi, q: oi_hist_body(oi, q["symbol"], upto, int(q["limit"]))))
        rsps.add_callback(responses.GET, OI_URL, callback=answer(
            lambda f, oi, q: {"symbol": q["symbol"], "openInterest": repr(float(oi[oi.index <= pd.Timestamp(upto)].iloc[-1])),
                              "time": int(upto.timestamp() * 1000)}))

    feed = make_feed()
    install(NOW)
    assert feed.refresh(NOW)
    later = NOW + timedelta(hours=20)
    install(later)
    assert feed.refresh(later) and feed.health(later) == (True, "ok")
    for kind, step in ((FUNDING, 8 * 3600), (OPEN_INTEREST, 3600)):
        ts = feed.series(later)[(kind, "BTC/USD")].ts
        recent = ts[ts >= int(NOW.timestamp()) - step]
        assert np.diff(recent).max() <= step, (kind, np.diff(recent).max() / 3600)


def test_never_refreshed_is_unhealthy_and_bad_config_is_refused():
    feed = make_feed()
    assert feed.health() == (False, "BTC/USD: Binance feed never refreshed; ETH/USD: Binance feed never refreshed")
    with pytest.raises(ValueError, match="symbol"):
        BinanceDerivativesFeed(BinanceFuturesClient(), {"BTC/USD": "btc/usdt"})
    with pytest.raises(ValueError, match="now"):
        feed.refresh(datetime(2025, 1, 1))
