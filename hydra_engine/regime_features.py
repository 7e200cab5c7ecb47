"""Daily cross-asset features for the HMM regime detector.

One function turns daily closes into the feature frame, and two front-ends feed it: the shared-data
files (training, tests) and a live :class:`MarketSnapshot` (``detect``). Sharing the maths is what
guarantees the model sees the same features in training and in the engine.

Features (one row per trading day, index = the close's UTC date at midnight):

* ``<asset>_ret20``  — 20-bar log return, the trend (assets: SPY, TLT, HYG, GLD, BTC);
* ``<asset>_lvol20`` — log of the 20-bar realised volatility, annualised (sqrt 252 for exchange-
  traded funds, sqrt 365 for BTC, which trades every day); logged because volatility is skewed and
  a Gaussian emission fits its log far better;
* ``vix_log`` — log VIX close (the market's own volatility forecast), ``vix_chg5`` — its 5-day log change.

SPY's trading days form the index (other series are joined onto them); BTC's 7-day series is joined onto it by date. A feature whose
asset has no data (BTC before 2019-10, a symbol missing from a snapshot) is NaN: the detector
marginalises NaN features out instead of inventing values. Values are carried forward at most
``MAX_CARRY_DAYS`` so a stale source cannot impersonate a fresh one for long.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .config import PROJECT_ROOT
from .ports import MarketSnapshot

WINDOW = 20
VIX_CHANGE_DAYS = 5
MAX_CARRY_DAYS = 3
DAY_S = 86_400
# feature prefix -> engine symbol, and the annualisation (bars per year) of its volatility
ASSETS: dict[str, tuple[str, int]] = {
    "spy": ("SPY", 252), "tlt": ("TLT", 252), "hyg": ("HYG", 252), "gld": ("GLD", 252),
    "btc": ("BTC/USD", 365),
}
VIX_SYMBOL = "VIX"
FEATURES: tuple[str, ...] = tuple(f"{a}_{k}" for a in ASSETS for k in ("ret20", "lvol20")) + ("vix_log", "vix_chg5")

# first folder that has the symbol wins: adjusted closes from 1993, then the project's shipped
# Alpaca/IEX-style OHLCV (2020-07 on, column "Adj Close")
EQUITY_DIRS = (Path("equities/daily/adjclose_factor_attribution"), Path("equities/daily/iex_like_spooky_course"))
MAX_GAP_DAYS = 30
VIX_FILES = (Path("equities/daily/vix/VIX_ohlc_daily_2010_2025.csv"), Path("equities/daily/vix/vix_close_daily_2020_2025.csv"))
BTC_HOURLY = Path("crypto_perp/binance_usdm/klines/BTCUSDT_1h.parquet")
BTC_DAILY = Path("crypto_perp/binance_usdm/klines_daily/BTC_USDT_1d.csv")


def shared_data_dir() -> Path | None:
    """The shared real-data folder (env ``HYDRA_SHARED_DATA`` or ``../shared/data``), if present."""
    path = Path(os.environ.get("HYDRA_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))
    return path if path.is_dir() else None


def _utc_days(values) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True)).normalize().as_unit("ns")


def _daily_from_intraday(ts_s: np.ndarray, close: np.ndarray, interval_s: int, now_s: float) -> pd.Series:
    """Close of each UTC day from intraday bars: the last bar that closed inside the day, for days
    that have ended by ``now_s`` (a day still in progress has no close yet)."""
    close_s = ts_s.astype("int64") + interval_s
    day = (close_s - 1) // DAY_S                     # a bar closing at 00:00 belongs to the day before
    keep = (day + 1) * DAY_S <= now_s
    if not keep.any():
        return pd.Series(dtype=float)
    s = pd.Series(close[keep], index=day[keep]).groupby(level=0).last()
    s.index = pd.to_datetime(s.index.to_numpy() * DAY_S, unit="s", utc=True).as_unit("ns")
    return s


def load_daily_closes(data_dir: str | Path, end: pd.Timestamp | str | None = None) -> dict[str, pd.Series]:
    """Daily closes per engine symbol from the shared-data layout; files that are absent are skipped.

    ``end`` (exclusive, a date) cuts every series, so a model can be fitted on history only."""
    root = Path(data_dir)
    out: dict[str, pd.Series] = {}
    for _, (symbol, _) in ASSETS.items():
        if symbol == "BTC/USD":
            continue
        for folder in EQUITY_DIRS:
            f = root / folder / f"{symbol}.csv.gz"
            if f.is_file():
                df = pd.read_csv(f)
                col = "Adj Close" if "Adj Close" in df else "Close"
                out[symbol] = pd.Series(df[col].to_numpy(float), index=_utc_days(df["Date"]))
                break
    vix = []
    for f in VIX_FILES:
        if (root / f).is_file():
            if "ohlc" in f.name:
                df = pd.read_csv(root / f, skiprows=[1, 2])
                vix.append(pd.Series(df["Close"].to_numpy(float), index=_utc_days(df["Price"])))
            else:
                df = pd.read_csv(root / f)
                vix.append(pd.Series(df.iloc[:, 1].to_numpy(float), index=_utc_days(df.iloc[:, 0])))
    if vix:  # the OHLC file wins where both have a day; the close-only file extends it
        s = pd.concat(vix)
        out[VIX_SYMBOL] = s[~s.index.duplicated(keep="first")].sort_index()
    if (root / BTC_HOURLY).is_file():
        df = pd.read_parquet(root / BTC_HOURLY, columns=["ts", "close"])
        ts = df["ts"].dt.tz_convert("UTC").astype("datetime64[s, UTC]").astype("int64").to_numpy()
        last_close_s = float(ts[-1] + 3600)
        out["BTC/USD"] = _daily_from_intraday(ts, df["close"].to_numpy(float), 3600, last_close_s)
    elif (root / BTC_DAILY).is_file():
        df = pd.read_csv(root / BTC_DAILY)
        out["BTC/USD"] = pd.Series(df["close"].to_numpy(float), index=_utc_days(pd.to_datetime(df["timestamp"], unit="ms")))
    if end is not None:
        cut = pd.Timestamp(end, tz="UTC") if pd.Timestamp(end).tzinfo is None else pd.Timestamp(end)
        out = {k: v[v.index < cut] for k, v in out.items()}
    out = {k: _contiguous_tail(v.sort_index().dropna()) for k, v in out.items()}
    return {k: v for k, v in out.items() if len(v)}


def _contiguous_tail(s: pd.Series) -> pd.Series:
    """The series after its last hole longer than ``MAX_GAP_DAYS``: a return across a long hole (one
    stray 2018 row before a 634-day gap in a shipped file) is not a 20-day return."""
    s = s[~s.index.duplicated(keep="last")]
    gaps = np.flatnonzero(s.index.to_series().diff() > pd.Timedelta(days=MAX_GAP_DAYS))
    return s.iloc[gaps[-1]:] if len(gaps) else s


def daily_closes_from_snapshot(market: MarketSnapshot) -> dict[str, pd.Series]:
    """Daily closes of the feature symbols visible in a snapshot. Daily bars are dated by the UTC day
    of their open; intraday bars (hourly crypto) are resampled to UTC days, complete days only."""
    now_s = market.now.timestamp()
    out: dict[str, pd.Series] = {}
    for symbol in [s for s, _ in ASSETS.values()] + [VIX_SYMBOL]:
        bars = market.bars.get(symbol)
        if bars is None or not len(bars):
            continue
        if bars.interval_s >= DAY_S:
            s = pd.Series(np.asarray(bars.close, float), index=_utc_days(np.asarray(bars.ts, "int64") * 10**9))
            s = s[~s.index.duplicated(keep="last")]
        else:
            s = _daily_from_intraday(np.asarray(bars.ts), np.asarray(bars.close, float), bars.interval_s, now_s)
        s = s[np.isfinite(s.to_numpy()) & (s.to_numpy() > 0)]
        if len(s):
            out[symbol] = s
    return out


def build_features(closes: dict[str, pd.Series]) -> pd.DataFrame:
    """The feature frame (columns :data:`FEATURES`, NaN where an input is missing) from daily closes."""
    # the calendar: SPY's trading days when SPY is there (the reference market), else the union of
    # the other daily series, else BTC's days (a crypto-only snapshot)
    order = [["SPY"], [s for p, (s, _) in ASSETS.items() if p != "btc"] + [VIX_SYMBOL], list(closes)]
    days = next(([closes[s].index for s in group if s in closes] for group in order
                 if any(s in closes for s in group)), [])
    index = days[0].append(days[1:]).unique().sort_values() if days else pd.DatetimeIndex([], tz="UTC")
    frame = pd.DataFrame(index=index.rename("day"), columns=list(FEATURES), dtype=float)
    for prefix, (symbol, per_year) in ASSETS.items():
        s = closes.get(symbol)
        if s is None or len(s) <= WINDOW:
            continue
        logp = np.log(s)
        lr = logp.diff()
        with np.errstate(divide="ignore"):
            lvol = np.log(lr.rolling(WINDOW).std() * math.sqrt(per_year))
        cols = pd.DataFrame({f"{prefix}_ret20": logp - logp.shift(WINDOW),
                             f"{prefix}_lvol20": lvol.replace(-np.inf, np.nan)})
        frame[cols.columns] = cols.reindex(index, method="ffill", limit=MAX_CARRY_DAYS,
                                           tolerance=pd.Timedelta(days=MAX_CARRY_DAYS))
    vix = closes.get(VIX_SYMBOL)
    if vix is not None and len(vix) > VIX_CHANGE_DAYS:
        lv = np.log(vix)
        cols = pd.DataFrame({"vix_log": lv, "vix_chg5": lv - lv.shift(VIX_CHANGE_DAYS)})
        frame[cols.columns] = cols.reindex(index, method="ffill", limit=MAX_CARRY_DAYS,
                                           tolerance=pd.Timedelta(days=MAX_CARRY_DAYS))
    return frame.astype(float)


def load_feature_frame(data_dir: str | Path | None = None, end: pd.Timestamp | str | None = None) -> pd.DataFrame:
    """Feature frame straight from the data files (shared data by default)."""
    root = Path(data_dir) if data_dir is not None else shared_data_dir()
    if root is None:
        raise FileNotFoundError("no data folder given and the shared data folder was not found "
                                "(set HYDRA_SHARED_DATA)")
    closes = load_daily_closes(root, end)
    if not closes:
        raise FileNotFoundError(f"no daily closes found under {root} (expected {EQUITY_DIRS[0]}/<SYM>.csv.gz, "
                                f"{VIX_FILES[0]}, {BTC_HOURLY})")
    return build_features(closes)


__all__ = ["FEATURES", "ASSETS", "VIX_SYMBOL", "WINDOW", "build_features", "daily_closes_from_snapshot",
           "load_daily_closes", "load_feature_frame", "shared_data_dir"]
