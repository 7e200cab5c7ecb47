"""AlpacaMarketData through real alpaca-py data clients against the HTTP double."""
from datetime import datetime, timedelta, timezone

import numpy as np

from hydra_engine.data.alpaca_data import AlpacaMarketData
from tests.alpaca_double import AlpacaDouble, make_bars, make_keys

UTC = timezone.utc
NOW = datetime(2025, 6, 24, 18, 30, tzinfo=UTC)            # a Tuesday, 14:30 New York


def md(**kw):
    kw.setdefault("symbols", ["BTC/USD", "SPY"])
    return AlpacaMarketData(make_keys(), **kw)


def test_snapshot_from_the_example_bodies_marks_old_data_stale():
    with AlpacaDouble() as d:
        snap = md().snapshot(NOW)
    # the examples are from 2022: bars exist, and the watchdog says why entries are blocked
    assert snap.bars["BTC/USD"].close[-1] == 29003
    assert "SPY" not in snap.bars and snap.stale["SPY"] == "no bars or quotes received yet"   # example has AAPL only
    assert "h old" in snap.stale["BTC/USD"] and not snap.tradable("BTC/USD")
    assert d.count("GET", r"/v1beta3/crypto/us/bars") == 1 and d.count("GET", r"/v2/stocks/quotes/latest") == 1
    assert "feed=iex" in next(u for m, u in d.calls if "/v2/stocks/bars" in u)


def test_closed_bars_only_bounded_buffers_and_fresh_symbols_tradable():
    with AlpacaDouble() as d:
        start = NOW.replace(minute=0) - timedelta(hours=600)
        d.bars["BTC/USD"] = make_bars(start, timedelta(hours=1), [60000 + i for i in range(601)])
        days = [NOW.replace(hour=4, minute=0) - timedelta(days=k) for k in range(5, -1, -1)]
        d.bars["SPY"] = make_bars(days[0], timedelta(days=1), [500.0 + k for k in range(6)],
                                  stamp=lambda k: days[k])
        d.quotes["BTC/USD"] = {"ap": 60601, "as": 1, "bp": 60599, "bs": 1, "t": NOW.strftime("%Y-%m-%dT%H:%M:%SZ")}
        data = md(history_bars=500)
        snap = data.snapshot(NOW)
        btc, spy = snap.bars["BTC/USD"], snap.bars["SPY"]
        assert len(btc) == 500                                  # bounded buffer
        assert btc.last_close_time <= NOW                        # the 18:00 bar still forming is excluded
        assert btc.ts[-1] == int((NOW.replace(minute=0) - timedelta(hours=1)).timestamp())
        # today's daily bar closes 16:00 New York (20:00 UTC): not visible at 14:30 New York
        assert spy.close[-1] == 504.0 and spy.ts[-1] == int(datetime(2025, 6, 23, 13, 30, tzinfo=UTC).timestamp())
        assert snap.tradable("BTC/USD") and snap.tradable("SPY"), snap.stale
        assert snap.point_series("quote_mid", "BTC/USD").last == 60600.0
        assert 0 < snap.point_series("quote_spread_bps", "BTC/USD").last < 1
        later = data.snapshot(NOW + timedelta(hours=2))
        assert later.bars["BTC/USD"].close[-1] == 60600 and later.bars["SPY"].close[-1] == 505.0
        assert np.all(np.diff(later.bars["BTC/USD"].ts) > 0)    # no duplicates after the overlap refetch
        assert snap.bars["BTC/USD"].close[-1] == 60599          # an earlier snapshot is not mutated


def test_request_failure_marks_symbols_stale_without_crashing():
    with AlpacaDouble() as d:
        d.fail("GET", r"/v1beta3/crypto/us/bars", times=10, status=500, body="Internal Server Error")
        snap = md(symbols=["BTC/USD"]).snapshot(NOW)
    assert "crypto bars failed" in snap.stale["BTC/USD"]


def test_data_only_symbols_and_next_bar_open():
    with AlpacaDouble():
        data = md(symbols=["BTC/USD"], data_only=["VIX"])
        assert "no Alpaca feed" in data.snapshot(NOW).stale["VIX"]
        assert data.next_bar_open("BTC/USD", NOW, NOW) is None


def test_the_regime_detectors_btc_history_is_kept_beside_the_strategies_500_bars():
    """BTC's 20-day regime features need more than 500 hours: the buffer keeps 90 days (fetched from the
    start), strategies still see the newest 500 bars, and the detector reads all of them."""
    with AlpacaDouble() as d:
        start = NOW.replace(minute=0) - timedelta(hours=3000)
        d.bars["BTC/USD"] = make_bars(start, timedelta(hours=1), [60000 + i for i in range(3001)])
        snap = md(symbols=["BTC/USD"], history_bars=500, regime_history_days={"BTC/USD": 90}).snapshot(NOW)
        btc, longer = snap.bars["BTC/USD"], snap.regime_bars["BTC/USD"]
        assert len(btc) == 500 and len(longer) == 90 * 24
        assert btc.ts[-1] == longer.ts[-1] and np.array_equal(longer.close[-500:], btc.close)
        plain = md(symbols=["BTC/USD"], history_bars=500).snapshot(NOW)
        assert len(plain.bars["BTC/USD"]) == 500 and not plain.regime_bars


def test_a_malformed_body_marks_the_symbols_stale_instead_of_raising():
    """alpaca-py raises AttributeError/TypeError on a body of the wrong shape ("bars": null): the whole
    snapshot (every symbol, the feeds) was lost for that cycle."""
    with AlpacaDouble() as d:
        start = NOW.replace(minute=0) - timedelta(hours=10)
        d.bars["BTC/USD"] = make_bars(start, timedelta(hours=1), [60000 + i for i in range(11)])
        d.fail("GET", r"/v2/stocks/bars", times=5, status=200, body='{"bars": null, "next_page_token": null}')
        snap = md().snapshot(NOW)
    assert "stock bars failed: AttributeError" in snap.stale["SPY"] and snap.bars["BTC/USD"].close[-1] == 60009


def test_a_fresh_quote_does_not_make_stopped_bars_look_fresh():
    with AlpacaDouble() as d:
        start = NOW.replace(minute=0) - timedelta(hours=40)
        d.bars["BTC/USD"] = make_bars(start, timedelta(hours=1), [60000 + i for i in range(30)])   # stop 11 h ago
        d.quotes["BTC/USD"] = {"ap": 60031, "as": 1, "bp": 60029, "bs": 1, "t": NOW.strftime("%Y-%m-%dT%H:%M:%SZ")}
        snap = md(symbols=["BTC/USD"]).snapshot(NOW)
    assert "quotes do not replace bars" in snap.stale["BTC/USD"] and not snap.tradable("BTC/USD")
