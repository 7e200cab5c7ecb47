"""Issue #17: the replay splices every daily equity source per symbol, continuously, on one price basis."""
from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from hydra_engine.data.catalog import EQUITY_SYMBOLS
from hydra_engine.data.equity_sources import EQUITY_SOURCES, VIX_SOURCES, read_daily, splice
from hydra_engine.data.replay import ReplayMarketData


@pytest.mark.parametrize("symbol", EQUITY_SYMBOLS)
def test_the_splice_is_continuous(shared_data, symbol):
    """At every junction the merged day-on-day return equals the return the extending source itself shows
    for those two days (to 0.2 %): the scale removes the basis difference and adds no jump."""
    sp = splice(symbol, shared_data, EQUITY_SOURCES)
    f = sp.frame
    assert f.index.is_monotonic_increasing and not f.index.duplicated().any()
    src = f["source"].to_numpy()
    junctions = np.flatnonzero(src[1:] != src[:-1])
    by_name = {s.name: s for s in EQUITY_SOURCES}
    for k in junctions:
        d0, d1 = f.index[k], f.index[k + 1]
        merged = f["close"].iloc[k + 1] / f["close"].iloc[k] - 1
        # the source on the far side of the reference holds both days (that is where the scale came from)
        own = None
        for name in (src[k], src[k + 1]):
            raw = read_daily(shared_data / by_name[name].path.format(symbol=symbol), by_name[name].fmt)
            if d0 in raw.index and d1 in raw.index:
                own = raw.loc[d1, "close"] / raw.loc[d0, "close"] - 1
                break
        assert own is not None, f"{symbol}: no source holds both {d0:%Y-%m-%d} and {d1:%Y-%m-%d}"
        assert abs(merged - own) < 0.002, f"{symbol} {d1:%Y-%m-%d}: merged {merged:+.4f} vs source {own:+.4f}"
    if symbol == "SPY":   # from listing (yfinance) to the end of the iex files, no 2018-2020 hole
        assert f.index[0].date() == date(1993, 1, 29) and f.index[-1].date() == date(2024, 12, 31)
        assert (np.diff(f.index.to_numpy()) <= np.timedelta64(7, "D")).all()   # 2001-09-10 -> 09-17 the longest


def test_close_only_rows_are_marked_and_flat(shared_data):
    sp = splice("MSFT", shared_data, EQUITY_SOURCES)
    co = sp.frame[sp.frame["close_only"]]
    assert len(co) and co.index[-1].date() < date(1999, 11, 1)   # before the first OHLCV source
    assert (co["open"] == co["close"]).all() and (co["high"] == co["low"]).all()
    assert "close-only" in sp.describe()
    assert not sp.frame.loc["2000":, "close_only"].any()


def test_vix_from_both_sources(shared_data):
    sp = splice("VIX", shared_data, VIX_SOURCES)
    assert sp.frame.index[0].date() == date(2010, 1, 4) and sp.used[0]["source"] == "vix_ohlc_yfinance"
    assert (sp.frame["high"] >= sp.frame["low"]).all()


def test_the_replay_reads_each_equity_from_its_earliest_data(shared_data):
    m = ReplayMarketData(shared_data, ["SPY", "MSFT", "BTC/USD"], data_only=["VIX"])
    first = {s: m._bars[s].open_ts[0] for s in ("SPY", "MSFT")}
    assert first["SPY"] < 760_000_000 and first["MSFT"] < 530_000_000      # 1993, 1986
    assert "yfinance_taa_dashboard" in m.bar_source_notes["SPY"] and "iex_like_spooky_course" in m.bar_source_notes["SPY"]
    snap = m.snapshot(__import__("datetime").datetime(2020, 3, 10, 21, tzinfo=__import__("datetime").timezone.utc))
    assert "SPY" not in snap.stale                                        # March 2020: SPY now has data
