"""Where each replayed series lives inside a data folder with the layout of ``../shared/data``.

The project ships a compact copy of exactly these files under ``data/`` (see README, "Data credits");
pointing ``data.replay_dir`` at the full shared folder replays the same series over their full span.
Each entry says how to read one file into a uniform frame, and when its values become known:
bars at their close, funding at its settlement, open interest one hour after its timestamp (the
Bybit hourly figure is treated as the end-of-hour value, so it is never used early).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

EQUITY_SYMBOLS = ("SPY", "TLT", "GLD", "SLV", "GDX", "IGV", "CRM", "SHOP", "ADBE", "MSFT", "WDAY", "LZ", "HYG")
NY = "America/New_York"


@dataclass(frozen=True)
class BarSource:
    symbol: str
    path: str
    interval: timedelta
    reader: str          # "binance_klines" | "okx_perp_1h" | "hyperliquid_perp_8h" | "daily_ohlc_ny" | ...


@dataclass(frozen=True)
class PointSource:
    kind: str
    symbol: str
    path: str
    column: str
    publish_lag: timedelta
    positive: bool = False   # open interest cannot be zero or negative; funding can be negative
    reader: str = "indexed"  # "indexed": datetime index + column | "kline_taker": taker-buy share of a kline file
    optional: bool = False   # a user-supplied series: a missing file leaves it out (the plugin says so)


BAR_SOURCES: dict[str, BarSource] = {
    "BTC/USD": BarSource("BTC/USD", "crypto_perp/binance_usdm/klines/BTCUSDT_1h.parquet", timedelta(hours=1), "binance_klines"),
    "ETH/USD": BarSource("ETH/USD", "crypto_perp/binance_usdm/klines/ETHUSDT_1h_from_1m.parquet", timedelta(hours=1), "binance_klines"),
    # issue #17: every daily source of the folder, spliced per symbol (data/equity_sources.py)
    **{s: BarSource(s, "equities/daily", timedelta(days=1), "merged_equity") for s in EQUITY_SYMBOLS},
    "VIX": BarSource("VIX", "equities/daily", timedelta(days=1), "merged_vix"),
}

# Bybit's hourly open interest stamped t is the open interest AT t (the price move of a >5 % drop sits
# in the bar closing at t: median |return| 1.64 % there against 0.60 % in the next bar, 280 BTC drops
# 2020-12..2026-02), and Bybit serves it at t -- as Binance's live feed does. Made visible an hour later,
# it was set against the next hour's price move: a long liquidation read as a short squeeze.
POINT_SOURCES: list[PointSource] = [
    PointSource("funding_rate", "BTC/USD", "crypto_perp/binance_usdm/funding/BTCUSDT_funding_8h.parquet", "funding_rate", timedelta(0)),
    PointSource("funding_rate", "ETH/USD", "crypto_perp/binance_usdm/funding/ETHUSDT_funding_8h.parquet", "funding_rate", timedelta(0)),
    PointSource("open_interest", "BTC/USD", "crypto_perp/bybit_linear/open_interest/BTCUSDT_oi_1h.parquet", "open_interest", timedelta(0), True),
    PointSource("open_interest", "ETH/USD", "crypto_perp/bybit_linear/open_interest/ETHUSDT_oi_1h.parquet", "open_interest", timedelta(0), True),
    # issue #18: the Shanghai gold premium (USD/oz over London) no source we have carries; a user may supply
    # it as CSV ``known_at`` (ISO 8601 UTC: when the value was published), ``premium_usd_oz`` (README)
    PointSource("shanghai_premium", "GLD", "metals/shanghai_premium/shanghai_premium.csv", "premium_usd_oz",
                timedelta(0), optional=True),
]

# The perpetual-futures module (issue #20) trades the perps under their Binance names. Hourly Binance perp
# klines exist in the shared data for BTCUSDT and ETHUSDT only (PROVENANCE §1.1). The taker-buy share of
# each hourly bar (``taker_buy_base / volume_base``, known at the bar's close) is the order-flow input of
# the liquidation and crowding proxies.
PERP_KLINES = {"BTCUSDT": "crypto_perp/binance_usdm/klines/BTCUSDT_1h.parquet",
               "ETHUSDT": "crypto_perp/binance_usdm/klines/ETHUSDT_1h_from_1m.parquet"}
BAR_SOURCES.update({s: BarSource(s, path, timedelta(hours=1), "binance_klines") for s, path in PERP_KLINES.items()})
# SOLUSDT and BNBUSDT are replayed on OTHER venues' perp prices, a declared proxy (data/perp_venues.py says
# how each file is stamped): SOLUSDT on OKX's hourly SOL-USDT-SWAP bars from 2021-01-22 06:00 (the only
# hourly SOL perp bars, and four years longer than Hyperliquid's), BNBUSDT on Hyperliquid's 8-hour candles
# from 2023-02-26 16:00 (no hourly BNB perp bars exist in the data). Their funding (Binance 8 h) and open
# interest (Bybit 1 h) are the same venues' as BTC/ETH; no taker-buy share exists for them, so the
# primitives and features that read it give no signal for these two (the perp coverage names the gap).
PERP_PROXY_BARS = {"SOLUSDT": BarSource("SOLUSDT", "crypto_perp/okx/okx_SOL_1h_perp_spot_funding_oi.parquet",
                                        timedelta(hours=1), "okx_perp_1h"),
                   "BNBUSDT": BarSource("BNBUSDT", "crypto_perp/hyperliquid/hyperliquid_BNB_1h_perp_funding.parquet",
                                        timedelta(hours=8), "hyperliquid_perp_8h")}
BAR_SOURCES.update(PERP_PROXY_BARS)
for _s in [*PERP_KLINES, *PERP_PROXY_BARS]:
    POINT_SOURCES += [
        PointSource("funding_rate", _s, f"crypto_perp/binance_usdm/funding/{_s}_funding_8h.parquet", "funding_rate", timedelta(0)),
        PointSource("open_interest", _s, f"crypto_perp/bybit_linear/open_interest/{_s}_oi_1h.parquet", "open_interest", timedelta(0), True),
    ]
    if _s in PERP_KLINES:
        POINT_SOURCES.append(PointSource("taker_buy_ratio", _s, PERP_KLINES[_s], "taker_buy_base", timedelta(hours=1), True, "kline_taker"))


def _daily_session_times(dates: pd.Series, close: pd.Timedelta = pd.Timedelta(hours=16)) -> tuple[pd.Series, pd.Series]:
    """A daily equity bar opens 09:30 and closes 16:00 New York time on its date (DST-aware)."""
    day = pd.to_datetime(dates.astype(str).str[:10])
    opens = (day + pd.Timedelta(hours=9, minutes=30)).dt.tz_localize(NY).dt.tz_convert("UTC")
    closes = (day + close).dt.tz_localize(NY).dt.tz_convert("UTC")
    return opens, closes


def _numeric(column: pd.Series) -> pd.Series:
    """A price or volume column as numbers: a cell that is not a number (e.g. ``abc``) becomes NaN, a bad
    row that the cleaning refuses and counts, instead of failing the whole file (numeric columns, i.e.
    every good file, pass through unchanged)."""
    return pd.to_numeric(column, errors="coerce")


def read_parquet(path, **kwargs) -> pd.DataFrame:
    """``pd.read_parquet`` that hands pyarrow's freed buffers back to the OS. pyarrow's allocator keeps
    what a read used (for 1M one-minute bars ~110 MB beyond the frame itself) for reuse, and that
    retention, not the data, set the process's peak once the replay built its arrays (bench/RESULTS.md §3I)."""
    frame = pd.read_parquet(path, **kwargs)
    import pyarrow
    pyarrow.default_memory_pool().release_unused()
    return frame


def read_bars(path, source: BarSource) -> pd.DataFrame:
    """Uniform frame: open_time, close_time (UTC), open, high, low, close, volume."""
    if source.reader == "binance_klines":
        raw = read_parquet(path, columns=["ts", "open", "high", "low", "close", "volume_base"])
        open_time = pd.to_datetime(raw["ts"], utc=True)
        frame = pd.DataFrame({"open_time": open_time, "close_time": open_time + source.interval,
                              "open": _numeric(raw["open"]), "high": _numeric(raw["high"]), "low": _numeric(raw["low"]),
                              "close": _numeric(raw["close"]), "volume": _numeric(raw["volume_base"])})
    elif source.reader in ("okx_perp_1h", "hyperliquid_perp_8h"):   # SOL/BNB perp proxies (data/perp_venues.py)
        from .perp_venues import read_hyperliquid_perp_8h, read_okx_perp
        frame = (read_okx_perp if source.reader == "okx_perp_1h" else read_hyperliquid_perp_8h)(path, source)
    elif source.reader == "daily_ohlc_ny":
        raw = pd.read_csv(path)
        opens, closes = _daily_session_times(raw["Date"])
        frame = pd.DataFrame({"open_time": opens, "close_time": closes, "open": _numeric(raw["Open"]),
                              "high": _numeric(raw["High"]), "low": _numeric(raw["Low"]),
                              "close": _numeric(raw["Close"]), "volume": _numeric(raw["Volume"])})
    elif source.reader == "daily_close_ny":
        raw = pd.read_csv(path)
        # the VIX close is set at 16:15 New York (Cboe), a quarter hour after the stocks': a cycle at the
        # 16:00 close must not read it
        opens, closes = _daily_session_times(raw.iloc[:, 0], close=pd.Timedelta(hours=16, minutes=15))
        close = pd.to_numeric(raw.iloc[:, 1], errors="coerce")
        frame = pd.DataFrame({"open_time": opens, "close_time": closes, "open": close, "high": close,
                              "low": close, "close": close, "volume": 0.0})
    elif source.reader in ("merged_equity", "merged_vix"):
        from .equity_sources import EQUITY_SOURCES, VIX_SOURCES, splice_cached
        folder = Path(path).parents[len(Path(source.path).parts) - 1]
        spliced = splice_cached(source.symbol, folder, EQUITY_SOURCES if source.reader == "merged_equity" else VIX_SOURCES)
        if spliced is None:
            raise FileNotFoundError(f"no daily source for {source.symbol} under {path}")
        m = spliced.frame
        # the VIX close is set at 16:15 New York (Cboe), a quarter hour after the stocks'
        close_at = pd.Timedelta(hours=16, minutes=15 if source.reader == "merged_vix" else 0)
        opens, closes = _daily_session_times(pd.Series(m.index.strftime("%Y-%m-%d")), close=close_at)
        frame = pd.DataFrame({"open_time": opens.to_numpy(), "close_time": closes.to_numpy(),
                              **{c: m[c].to_numpy(dtype=float) for c in ("open", "high", "low", "close", "volume")}})
        frame.attrs["source_note"] = spliced.describe()
        frame.attrs["source_notes"] = spliced.notes
        frame.attrs["sources_used"] = spliced.used
        frame.attrs["close_only_days"] = int(m["close_only"].sum())
    elif source.reader == "cboe_daily":   # VIX3M, VIX9D, VVIX when a plugin asks (data/macro_daily.py)
        from .macro_daily import read_cboe_bars
        frame = read_cboe_bars(path, source)
    else:  # pragma: no cover - guarded by the catalog itself
        raise ValueError(f"unknown reader {source.reader!r} for {path}")
    return frame


def read_points(path, source: PointSource) -> pd.DataFrame:
    """Uniform frame: known_at (UTC, timestamp + publish lag), value."""
    if source.reader == "fred_daily":   # FRED daily rates when a plugin asks (data/macro_daily.py)
        from .macro_daily import read_fred_points
        return read_fred_points(path, source)
    if source.reader == "kline_taker":   # taker-buy share of the bar's volume, known at the bar's close
        raw = read_parquet(path, columns=["ts", "taker_buy_base", "volume_base"])
        vol = raw["volume_base"].to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(vol > 0, raw["taker_buy_base"].to_numpy(dtype=float) / vol, np.nan)
        return pd.DataFrame({"known_at": pd.to_datetime(raw["ts"], utc=True) + source.publish_lag, "value": share})
    if str(path).endswith(".csv"):   # a user-supplied series: known_at, <column>
        raw = pd.read_csv(path)
        for col in ("known_at", source.column):
            if col not in raw.columns:
                raise ValueError(f"{path}: column {col!r} missing (have {list(raw.columns)})")
        known = pd.to_datetime(raw["known_at"], utc=True, format="ISO8601")
        return pd.DataFrame({"known_at": known + source.publish_lag,
                             "value": pd.to_numeric(raw[source.column], errors="coerce").to_numpy(dtype=float)})
    raw = read_parquet(path)
    if source.column not in raw.columns:
        raise ValueError(f"{path}: column {source.column!r} missing (have {list(raw.columns)})")
    ts = pd.to_datetime(raw.index, utc=True)
    return pd.DataFrame({"known_at": ts + source.publish_lag, "value": raw[source.column].to_numpy(dtype=float)})


# --------------------------------------------------------------------------- intraday bars (issue #18)
@dataclass(frozen=True)
class IntradaySource:
    """One-minute bars of an equity, served as ``minutes``-minute candles in ``MarketSnapshot.intraday``
    (the macro-event scalper's 15-minute candles, extended hours included). ``folder`` holds monthly files
    ``YYYY_MM_<SYM>_1M.csv.gz`` (``alphavantage_monthly``: ``timestamp,open,high,low,close,volume``,
    naive New York wall clock, bar start, newest row first), or one file (``tlt_1m``: ``Date`` as
    ``M/D/YYYY H:MM`` New York, regular hours only). These bars never drive the daily series: the symbol's
    daily bars stay its price and regime input."""

    symbol: str
    path: str
    reader: str              # "alphavantage_monthly" | "tlt_1m"
    minutes: int = 15


INTRADAY_SOURCES: dict[str, IntradaySource] = {
    "SPY": IntradaySource("SPY", "equities/intraday_1m/spy_2015_2025_alphavantage_like", "alphavantage_monthly"),
    "TLT": IntradaySource("TLT", "equities/intraday_1m/tlt_2019-10_2020-06/TLT_1m.csv.gz", "tlt_1m"),
}


def read_intraday(root, source: IntradaySource, start=None, end=None) -> pd.DataFrame:
    """Uniform frame of ``source.minutes``-minute candles: open_time, close_time (UTC), OHLCV, ascending.
    ``start``/``end`` (dates) limit which monthly files are read (a month before ``start`` is kept for the
    typical-range look-back). An empty frame when no file covers the span (the caller says so)."""
    from pathlib import Path
    path = Path(root) / source.path
    frames = []
    if source.reader == "alphavantage_monthly":
        if not path.is_dir():
            return _empty_intraday()
        for f in sorted(path.glob(f"*_{source.symbol}_1M.csv*")):
            y, m = (int(x) for x in f.name.split("_")[:2])
            month = pd.Timestamp(year=y, month=m, day=1)
            if start is not None and month + pd.offsets.MonthEnd(1) < pd.Timestamp(start) - pd.Timedelta(days=45):
                continue
            if end is not None and month > pd.Timestamp(end):
                continue
            frames.append(pd.read_csv(f))
        if not frames:
            return _empty_intraday()
        raw = pd.concat(frames, ignore_index=True)
        wall = pd.to_datetime(raw["timestamp"], format="%Y-%m-%d %H:%M:%S")
    elif source.reader == "tlt_1m":
        if not path.is_file():
            return _empty_intraday()
        raw = pd.read_csv(path).rename(columns=str.lower)
        wall = pd.to_datetime(raw["date"], format="%m/%d/%Y %H:%M", errors="coerce")   # spreadsheet artefacts: dropped
    else:  # pragma: no cover - guarded by the catalog itself
        raise ValueError(f"unknown intraday reader {source.reader!r}")
    frame = pd.DataFrame({"wall": wall, **{c: _numeric(raw[c]) for c in ("open", "high", "low", "close", "volume")}})
    frame = frame.dropna().sort_values("wall", kind="stable").drop_duplicates("wall", keep="last")
    bucket = frame["wall"].dt.floor(f"{source.minutes}min")
    agg = frame.groupby(bucket, sort=True).agg(open=("open", "first"), high=("high", "max"), low=("low", "min"),
                                               close=("close", "last"), volume=("volume", "sum"))
    opens = agg.index.tz_localize(NY, ambiguous="NaT", nonexistent="NaT")
    agg = agg[~opens.isna()]
    opens = opens[~opens.isna()].tz_convert("UTC")
    return pd.DataFrame({"open_time": opens, "close_time": opens + pd.Timedelta(minutes=source.minutes),
                         **{c: agg[c].to_numpy(dtype=float) for c in ("open", "high", "low", "close", "volume")}})


def _empty_intraday() -> pd.DataFrame:
    return pd.DataFrame({"open_time": pd.to_datetime([], utc=True), "close_time": pd.to_datetime([], utc=True),
                         **{c: [] for c in ("open", "high", "low", "close", "volume")}})


# issue #17: the daily macro series (Cboe VIX3M/VIX9D/VVIX bars, FRED rates), read only when a plugin declares them
from .macro_daily import MACRO_BAR_SOURCES, MACRO_POINT_SOURCES  # noqa: E402

BAR_SOURCES.update(MACRO_BAR_SOURCES)
POINT_SOURCES += MACRO_POINT_SOURCES
