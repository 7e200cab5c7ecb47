"""Issue #18, the paper session's intraday candles: Alpaca 1-minute bars (through real alpaca-py clients
against the loopback Alpaca double) aggregated to the 15-minute candles the replay serves. The reference
is the replay itself, on the real SPY minutes of October-November 2022 from ../shared/data."""
from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from hydra_engine.data.alpaca_data import AlpacaMarketData
from hydra_engine.data.alpaca_intraday import aggregate_minutes
from hydra_engine.data.catalog import INTRADAY_SOURCES, read_intraday
from hydra_engine.domain import UTC, Regime, RegimeReading
from hydra_engine.data.event_feeds import macro_calendar_feed
from hydra_engine.strategy import StrategyContext
from strategies.macro_events import MacroEventScalper
from tests.alpaca_double import AlpacaDouble, make_keys

CPI = datetime(2022, 11, 10, 13, 30, tzinfo=UTC)        # 08:30 New York


def _minutes(shared, first="2022-10", last="2022-11", until=None) -> pd.DataFrame:
    """The shared data's real SPY 1-minute bars (New York wall clock, bar start) with UTC open times."""
    folder = shared / INTRADAY_SOURCES["SPY"].path
    raw = pd.concat([pd.read_csv(folder / f"{m.replace('-', '_')}_SPY_1M.csv.gz") for m in (first, last)])
    raw["t"] = pd.to_datetime(raw["timestamp"]).dt.tz_localize("America/New_York").dt.tz_convert("UTC")
    raw = raw.sort_values("t")
    return raw[raw["t"] < until] if until is not None else raw


def _bodies(frame: pd.DataFrame) -> list[dict]:
    return [{"t": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "o": o, "h": h, "l": l, "c": c, "v": v, "n": 1, "vw": c}
            for t, o, h, l, c, v in zip(frame["t"], frame["open"], frame["high"], frame["low"], frame["close"],
                                        frame["volume"])]


def _epoch(col: pd.Series) -> np.ndarray:
    return np.array([int(t.timestamp()) for t in col], dtype=np.int64)


def _replay_candles(shared):
    """The replay's SPY candles of October-November 2022 (it also reads September for the look-back)."""
    ref = read_intraday(shared, INTRADAY_SOURCES["SPY"], date(2022, 11, 1), date(2022, 11, 30))
    local = ref["open_time"].dt.tz_convert("America/New_York")
    return ref[(local >= pd.Timestamp("2022-10-01", tz="America/New_York"))].reset_index(drop=True)


def test_aggregation_equals_the_replays_candles_on_real_minutes(shared_data):
    m = _minutes(shared_data)
    rows = [(int(t.timestamp()), o, h, l, c, v) for t, o, h, l, c, v in
            zip(m["t"], m["open"], m["high"], m["low"], m["close"], m["volume"])]
    got = np.array(aggregate_minutes(rows, 15))
    ref = _replay_candles(shared_data)
    ref_ts = _epoch(ref["open_time"])
    assert len(got) == len(ref) > 2000
    assert np.array_equal(got[:, 0].astype(np.int64), ref_ts)
    for i, col in enumerate(("open", "high", "low", "close", "volume"), start=1):
        assert np.allclose(got[:, i], ref[col].to_numpy(), rtol=0, atol=1e-9), col


def test_example_body_one_premarket_minute_becomes_its_15_minute_candle():
    now = datetime(2022, 1, 3, 10, 0, tzinfo=UTC)
    with AlpacaDouble() as d:
        data = AlpacaMarketData(make_keys(), symbols=["BTC/USD"])
        data.set_intraday(["AAPL"])
        snap = data.snapshot(now)
    url = next(u for m, u in d.calls if "/v2/stocks/bars" in u)
    assert "timeframe=1Min" in url and "feed=iex" in url
    aapl = snap.intraday["AAPL"]
    # the 09:00Z (04:00 New York, pre-market) minute of stocks.bars.lastpage.get.json
    assert aapl.ts.tolist() == [int(datetime(2022, 1, 3, 9, 0, tzinfo=UTC).timestamp())] and aapl.interval_s == 900
    assert (aapl.open[0], aapl.high[0], aapl.low[0], aapl.close[0], aapl.volume[0]) == (178.26, 178.26, 178.21, 178.21, 1118)
    assert not snap.intraday_missing
    # the daily price layer is untouched: AAPL is not a universe symbol
    assert "AAPL" not in snap.bars


def test_live_candles_match_the_replay_seal_late_minutes_and_let_the_scalper_judge_the_cpi(shared_data):
    minutes = _minutes(shared_data)
    with AlpacaDouble() as d:
        d.bars["SPY"] = _bodies(minutes)
        data = AlpacaMarketData(make_keys(), symbols=["BTC/USD"])
        data.set_intraday(["SPY"], backfill_days=35, settle_s=60)
        # 08:45:30 New York: the 08:30 candle ended 30 s ago, inside the settle time: not served yet
        early = data.snapshot(CPI + timedelta(minutes=15, seconds=30))
        assert early.intraday["SPY"].ts[-1] == int((CPI - timedelta(minutes=15)).timestamp())
        snap = data.snapshot(CPI + timedelta(minutes=16))
        urls = [u for m, u in d.calls if "/v2/stocks/bars" in u]
    spy = snap.intraday["SPY"]
    assert spy.ts[-1] == int(CPI.timestamp()) and not snap.intraday_missing
    # the second request asked only from the bucket the first left unsealed (08:30 New York), not 35 days again
    assert "start=2022-11-10T13%3A30%3A00" in urls[-1] and "start=2022-10-06" in urls[0]
    # candle for candle what the replay serves over the same span
    ref = _replay_candles(shared_data)
    ref = ref[(ref["close_time"] <= CPI + timedelta(minutes=15)) & (_epoch(ref["open_time"]) >= spy.ts[0])]
    assert len(ref) == len(spy) > 1000
    assert np.array_equal(spy.ts, _epoch(ref["open_time"]))
    assert np.allclose(spy.close, ref["close"].to_numpy()) and np.allclose(spy.high, ref["high"].to_numpy())
    # the scalper judges the real CPI candle from the live candles: 375.20 -> 385.85, a long
    snap.events = macro_calendar_feed(shared_data).events(snap.now)
    plugin = MacroEventScalper({"symbols": ["SPY"]})
    ctx = StrategyContext(snap.now, snap, RegimeReading(Regime.HIGH_VOL, 0.8, "test", snap.now), {})
    signals = plugin.generate_signals(ctx)
    assert [s.symbol for s in signals] == ["SPY"] and signals[0].score > 0, plugin.notes
    assert "375.20 -> 385.85" in signals[0].thesis


def test_a_failed_minute_request_stands_the_symbol_down_without_making_its_price_stale():
    now = datetime(2022, 1, 3, 10, 0, tzinfo=UTC)
    with AlpacaDouble() as d:
        data = AlpacaMarketData(make_keys(), symbols=["BTC/USD"])
        data.set_intraday(["AAPL"])
        d.fail("GET", r"/v2/stocks/bars", times=10, status=500, body="Internal Server Error")
        snap = data.snapshot(now)
    assert "stock 1-minute bars failed" in snap.intraday_missing["AAPL"] and "AAPL" not in snap.intraday
    assert not any("1-minute" in why for why in snap.stale.values())


def test_old_candles_are_named_missing():
    with AlpacaDouble():
        data = AlpacaMarketData(make_keys(), symbols=["BTC/USD"])
        data.set_intraday(["AAPL"])
        snap = data.snapshot(datetime(2022, 1, 20, tzinfo=UTC))
    assert "over 5 days ago" in snap.intraday_missing["AAPL"] and len(snap.intraday["AAPL"]) == 1


def test_a_paper_session_serves_the_candles_its_plugins_ask_for(tmp_path, monkeypatch, shared_data):
    """The composition: `build_paper_session` hands the enabled plugins' DataNeed("intraday", ...) symbols to
    the Alpaca data adapter (the scalper no longer stands down on paper for want of a feed)."""
    from hydra_engine.paper import build_paper_session
    from tests.alpaca_double import API_KEY, SECRET_KEY
    from tests.conftest import make_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("APCA_API_KEY_ID", API_KEY)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET_KEY)
    for var in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "APCA_API_BASE_URL", "APCA_API_DATA_URL"):
        monkeypatch.delenv(var, raising=False)
    settings = make_settings(tmp_path, data_dir=shared_data, symbols=("SPY", "GLD"), data_only=(),
                             engine={"regime_detector": "trend_vol_rule"}, broker={"kind": "alpaca"},
                             data={"kind": "alpaca"},
                             strategies={"enabled": ["macro_events"],
                                         "params": {"macro_events": {"symbols": ["SPY", "GLD"]}}})
    with AlpacaDouble():
        session = build_paper_session(settings)
        try:
            data = session.engine.market.base
            assert isinstance(data, AlpacaMarketData) and data.intraday.symbols == ["SPY", "GLD"]
        finally:
            if getattr(session, "session_log", None):
                session.session_log.close(datetime.now(UTC), {})
