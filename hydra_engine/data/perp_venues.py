"""Perp price bars from venues other than Binance (issue #20): the proxies that make SOLUSDT and BNBUSDT
replayable. The shared data has no Binance hourly perp klines for them (PROVENANCE §1.1); these files do
carry perp OHLCV (PROVENANCE §1.6, §1.7). Their prices are the other venue's, not Binance's: a declared
proxy, named in each bar source's path and in the replay's ``bar_source_notes``.

Bar stamping, measured on the files (not assumed):

* OKX (``okx_perp_1h``): genuine hourly bars (99.98 % of consecutive rows differ, 99.6 % open within
  0.2 % of the previous close), stamped by OPEN time -- aggregated to 8 h they match Hyperliquid's
  open-stamped 8-hour SOL candles to a median 0.05 % at lag 0 against 0.45-0.50 % one hour either way.
  ``timestamp`` is UTC, naive. Perp columns ``*_perp_okx`` start 2021-01-22 06:00 (rows before carry spot only).
* Hyperliquid (``hyperliquid_perp_8h``): the "1h" file holds 8-hour candles (00/08/16 UTC) written out
  over the 8 hourly rows of each candle (every run of identical rows is 8 long, for BTC, ETH, SOL, BNB).
  They are stamped by OPEN time: the BTC candles match Binance's 8 h aggregate of open-stamped hourly
  klines to a median 0.03 % at lag 0 against 0.6 % one candle either way. Read hourly, the row at 01:00
  would already show the candle's 08:00 close (a 7-hour look-ahead), so the reader returns one 8-hour bar
  per candle and refuses a file whose runs are not 8 identical rows. Rows before 2023-02-26 16:00 are
  filled placeholders (zero volume, repeated prices, PROVENANCE §1.7) and are dropped.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

HYPERLIQUID_FIRST_REAL = pd.Timestamp("2023-02-26 16:00", tz="UTC")
_OHLCV = ("open", "high", "low", "close", "volume")


def _frame(open_time: pd.Series, interval, values: dict) -> pd.DataFrame:
    frame = pd.DataFrame({"open_time": open_time, "close_time": open_time + pd.Timedelta(interval),
                          **{c: pd.to_numeric(values[c], errors="coerce").to_numpy(dtype=float) for c in _OHLCV}})
    return frame.reset_index(drop=True)


def read_okx_perp(path, source) -> pd.DataFrame:
    """OKX hourly perp bars: open_time = ``timestamp`` (UTC, open-stamped), close_time = open + 1 h."""
    from .catalog import read_parquet
    cols = {c: f"{c}_perp_okx" for c in _OHLCV}
    raw = read_parquet(path, columns=["timestamp", *cols.values()])
    raw = raw.dropna(subset=[cols["close"]])            # before 2021-01-22 06:00: spot rows only
    ts = pd.to_datetime(raw["timestamp"])
    ts = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")
    return _frame(ts, source.interval, {c: raw[cols[c]] for c in _OHLCV})


def read_hyperliquid_perp_8h(path, source) -> pd.DataFrame:
    """Hyperliquid 8-hour perp candles (see the module note): one bar per candle from 2023-02-26 16:00."""
    from .catalog import read_parquet
    cols = {c: f"{c}_perp" for c in _OHLCV}
    raw = read_parquet(path, columns=list(cols.values()))
    raw.index = pd.to_datetime(raw.index, utc=True)
    raw = raw[raw.index >= HYPERLIQUID_FIRST_REAL].sort_index()
    block = raw.index.floor("8h")
    values = raw[list(cols.values())].to_numpy(dtype=float)
    first = pd.DataFrame(values, index=raw.index).groupby(block).transform("first").to_numpy()
    same = (values == first) | (np.isnan(values) & np.isnan(first))
    if not same.all():
        bad = raw.index[~same.all(axis=1)][0]
        raise ValueError(f"{path}: rows of the 8-hour candle at {block[~same.all(axis=1)][0]} differ (first at {bad}); "
                         "the file is not 8-hour candles written hourly, refusing to read it as such")
    candles = raw[raw.index == block]
    return _frame(pd.Series(candles.index), source.interval, {c: candles[cols[c]] for c in _OHLCV})
