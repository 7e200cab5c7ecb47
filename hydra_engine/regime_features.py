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

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .config import PROJECT_ROOT
from .data.catalog import read_parquet
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
# calendar days of daily closes the detector reads per feature symbol, whatever ``engine.history_bars``
# holds of an intraday one: the 20-day features then exist on the last ~40 trading days of the window
# (the hysteresis and the filter's recent rows), as in the history the model was fitted on
REGIME_HISTORY_DAYS = 90
VIX_FILES = (Path("equities/daily/vix/VIX_ohlc_daily_2010_2025.csv"), Path("equities/daily/vix/vix_close_daily_2020_2025.csv"))
BTC_HOURLY = Path("crypto_perp/binance_usdm/klines/BTCUSDT_1h.parquet")
BTC_DAILY = Path("crypto_perp/binance_usdm/klines_daily/BTC_USDT_1d.csv")


def feature_symbols() -> list[str]:
    """The engine symbols whose daily closes the features are made of."""
    return [s for s, _ in ASSETS.values()] + [VIX_SYMBOL]


def regime_history_days(settings) -> dict[str, int]:
    """Days of daily closes the configured regime detector reads per feature symbol (the data layer keeps
    that much of an intraday one beside the ``history_bars`` strategies see)."""
    if settings.engine.regime_detector != "hmm":
        return {}
    return {s: REGIME_HISTORY_DAYS for s in feature_symbols()}


def shared_data_dir() -> Path | None:
    """The shared real-data folder (env ``HYDRA_SHARED_DATA`` or ``../shared/data``), if present."""
    path = Path(os.environ.get("HYDRA_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))
    return path if path.is_dir() else None


def _utc_days(values) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True)).normalize().as_unit("ns")


def load_daily_closes(data_dir: str | Path, end: pd.Timestamp | str | None = None) -> dict[str, pd.Series]:
    """Daily closes per engine symbol from the shared-data layout; files that are absent are skipped.

    ``end`` (exclusive, a date) cuts every series, so a model can be fitted on history only. The files are
    read once per folder and state of its files (:func:`_read_daily_closes`); each call cuts and cleans
    its own copy, so a scheduled refit does not re-read years of closes from disk (issue #24)."""
    out = {k: v.copy() for k, v in _read_daily_closes(Path(data_dir)).items()}
    if end is not None:
        cut = pd.Timestamp(end, tz="UTC") if pd.Timestamp(end).tzinfo is None else pd.Timestamp(end)
        out = {k: v[v.index < cut] for k, v in out.items()}
    out = {k: _contiguous_tail(v.sort_index().dropna()) for k, v in out.items()}
    return {k: v for k, v in out.items() if len(v)}


_READ_CACHE: dict[tuple, dict[str, pd.Series]] = {}
_READ_CACHE_SIZE = 4


def _files_state(root: Path) -> tuple:
    """Which of the files :func:`_read_daily_closes_uncached` may read exist, with a digest of their bytes:
    a file that appears, disappears or changes in any byte makes a new cache key (hashing the few MB is
    a few ms; parsing them is what the cache saves)."""
    paths = [root / folder / f"{symbol}.csv.gz" for _, (symbol, _) in ASSETS.items() if symbol != "BTC/USD"
             for folder in EQUITY_DIRS] + [root / f for f in VIX_FILES] + [root / BTC_HOURLY, root / BTC_DAILY]
    state = []
    for p in paths:
        if not p.is_file():
            state.append((str(p), None))
            continue
        with open(p, "rb") as fh:
            state.append((str(p), hashlib.file_digest(fh, "sha256").hexdigest()))
    return (str(root.resolve()), tuple(state))


def _read_daily_closes(root: Path) -> dict[str, pd.Series]:
    """:func:`_read_daily_closes_uncached`, remembered for the last few folders while their files' bytes
    stay the same. The Series are the cache's own: callers copy them before use."""
    key = _files_state(root)
    hit = _READ_CACHE.get(key)
    if hit is None:
        hit = _read_daily_closes_uncached(root)
        if len(_READ_CACHE) >= _READ_CACHE_SIZE:
            _READ_CACHE.pop(next(iter(_READ_CACHE)))
        _READ_CACHE[key] = hit
    return hit


def _read_daily_closes_uncached(root: Path) -> dict[str, pd.Series]:
    """Each symbol's daily closes as its file holds them (not yet cut, sorted or cleaned)."""
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
        df = read_parquet(root / BTC_HOURLY, columns=["ts", "close"])
        ts = df["ts"].dt.tz_convert("UTC").astype("datetime64[s, UTC]").astype("int64").to_numpy()
        last_close_s = float(ts[-1] + 3600)
        day, close = _daily_arrays_from_bars(ts, df["close"].to_numpy(float), 3600, last_close_s)
        out["BTC/USD"] = pd.Series(close, index=_index_from_days(day))
    elif (root / BTC_DAILY).is_file():
        df = pd.read_csv(root / BTC_DAILY)
        out["BTC/USD"] = pd.Series(df["close"].to_numpy(float), index=_utc_days(pd.to_datetime(df["timestamp"], unit="ms")))
    return out


def _contiguous_tail(s: pd.Series) -> pd.Series:
    """The series after its last hole longer than ``MAX_GAP_DAYS``: a return across a long hole (one
    stray 2018 row before a 634-day gap in a shipped file) is not a 20-day return."""
    s = s[~s.index.duplicated(keep="last")]
    gaps = np.flatnonzero(s.index.to_series().diff() > pd.Timedelta(days=MAX_GAP_DAYS))
    return s.iloc[gaps[-1]:] if len(gaps) else s


DailyCloses = tuple[np.ndarray, np.ndarray]   # (UTC day numbers since 1970-01-01, closes), sorted by day


def _daily_arrays_from_bars(ts_s: np.ndarray, close: np.ndarray, interval_s: int, now_s: float) -> DailyCloses:
    """(day numbers, closes) from one symbol's bars: daily bars are dated by the UTC day of their open
    (the last bar of a day wins); intraday bars give the close of each UTC day that has ended by
    ``now_s`` (a bar closing at 00:00 belongs to the day before). Non-finite or non-positive closes are
    dropped. Bars are sorted by time, so "last of each day" is the end of each run of equal days."""
    ts_s = np.asarray(ts_s, "int64")
    close = np.asarray(close, float)
    if interval_s >= DAY_S:
        day = ts_s // DAY_S
    else:
        day = (ts_s + interval_s - 1) // DAY_S
        keep = (day + 1) * DAY_S <= now_s
        day, close = day[keep], close[keep]
    if not len(day):
        return np.empty(0, "int64"), np.empty(0)
    last_of_day = np.append(day[1:] != day[:-1], True)
    day, close = day[last_of_day], close[last_of_day]
    ok = np.isfinite(close) & (close > 0)
    return day[ok], close[ok]


def daily_close_arrays_from_snapshot(market: MarketSnapshot) -> dict[str, DailyCloses]:
    """Daily closes of the feature symbols visible in a snapshot, as numpy day numbers and closes."""
    now_s = market.now.timestamp()
    out: dict[str, DailyCloses] = {}
    for symbol in feature_symbols():
        bars = market.regime_bars.get(symbol)
        if bars is None:
            bars = market.bars.get(symbol)
        if bars is None or not len(bars):
            continue
        day, close = _daily_arrays_from_bars(bars.ts, bars.close, bars.interval_s, now_s)
        if len(day):
            out[symbol] = (day, close)
    return out


def daily_closes_from_snapshot(market: MarketSnapshot) -> dict[str, pd.Series]:
    """Daily closes of the feature symbols visible in a snapshot, as date-indexed Series."""
    return {k: pd.Series(c, index=_index_from_days(d)) for k, (d, c) in daily_close_arrays_from_snapshot(market).items()}


def _index_from_days(days: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(np.asarray(days, "int64") * DAY_S, unit="s", utc=True)).as_unit("ns")


def _days_from_index(index: pd.DatetimeIndex) -> np.ndarray:
    return pd.DatetimeIndex(index).as_unit("ns").asi8 // (DAY_S * 10**9)


def _carried(values: np.ndarray, own_days: np.ndarray, calendar: np.ndarray) -> np.ndarray:
    """``values`` (on ``own_days``) on ``calendar``: the latest value dated on or before each calendar
    day, carried at most ``MAX_CARRY_DAYS`` days, NaN beyond (or before the series starts)."""
    return _carried_at(values, *_carry_index(own_days, calendar))


def _carry_index(own_days: np.ndarray, calendar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each calendar day takes its value from (``j``) and whether it may (``ok``): computed once per
    series and used for each of its features (:func:`_carried_at`)."""
    j = np.searchsorted(own_days, calendar, side="right") - 1
    ok = (j >= 0)
    ok[ok] = calendar[ok] - own_days[j[ok]] <= MAX_CARRY_DAYS
    return j, ok


def _carried_at(values: np.ndarray, j: np.ndarray, ok: np.ndarray) -> np.ndarray:
    out = np.full(len(j), np.nan)
    out[ok] = values[j[ok]]
    return out


def _lagged_difference(x: np.ndarray, lag: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    out[lag:] = x[lag:] - x[:-lag]
    return out


def feature_matrix(closes: dict[str, DailyCloses]) -> tuple[np.ndarray, np.ndarray]:
    """The feature maths, in numpy: (calendar day numbers, matrix with columns :data:`FEATURES`, NaN
    where an input is missing). Training (:func:`build_features`) and detection both call this one
    function, so the model sees the same numbers in both; it is also fast enough to run on every new
    daily close inside the hourly loop (bench/RESULTS.md, cycle latency)."""
    # the calendar: SPY's trading days where SPY is there (the reference market), the union of the
    # other daily series before its first day, else BTC's days (a crypto-only snapshot). Before, a
    # snapshot whose SPY history had just begun (the shared equity files start 2020-07-27) switched to
    # SPY's few days outright, and the detector read UNKNOWN for 12 weeks for want of feature days.
    order = [[s for p, (s, _) in ASSETS.items() if p != "btc"] + [VIX_SYMBOL], list(closes)]
    group = next(([closes[s][0] for s in g if s in closes] for g in order if any(s in closes for s in g)), [])
    calendar = np.unique(np.concatenate(group)) if group else np.empty(0, "int64")
    if "SPY" in closes and len(closes["SPY"][0]):
        spy_days = closes["SPY"][0]
        calendar = np.union1d(calendar[calendar < spy_days[0]], spy_days)
    x = np.full((len(calendar), len(FEATURES)), np.nan)
    col = {name: j for j, name in enumerate(FEATURES)}
    for prefix, (symbol, per_year) in ASSETS.items():
        if symbol not in closes or len(closes[symbol][1]) <= WINDOW:
            continue
        days, close = closes[symbol]
        logp = np.log(close)
        ret = _lagged_difference(logp, WINDOW)
        lr = np.diff(logp)
        vol = np.full(len(close), np.nan)
        # sample std (ddof=1) of the WINDOW log returns ending at each day: the first needs WINDOW+1 closes
        vol[WINDOW:] = np.lib.stride_tricks.sliding_window_view(lr, WINDOW).std(axis=1, ddof=1) * math.sqrt(per_year)
        with np.errstate(divide="ignore"):
            lvol = np.log(vol)
        lvol[np.isneginf(lvol)] = np.nan       # a flat 20 days (stale source) is not "zero volatility"
        at = _carry_index(days, calendar)
        x[:, col[f"{prefix}_ret20"]] = _carried_at(ret, *at)
        x[:, col[f"{prefix}_lvol20"]] = _carried_at(lvol, *at)
    if VIX_SYMBOL in closes and len(closes[VIX_SYMBOL][1]) > VIX_CHANGE_DAYS:
        days, level = closes[VIX_SYMBOL]
        lv = np.log(level)
        at = _carry_index(days, calendar)
        x[:, col["vix_log"]] = _carried_at(lv, *at)
        x[:, col["vix_chg5"]] = _carried_at(_lagged_difference(lv, VIX_CHANGE_DAYS), *at)
    return calendar, x


def build_features(closes: dict[str, pd.Series]) -> pd.DataFrame:
    """The feature frame (columns :data:`FEATURES`, index = UTC days) from date-indexed daily closes."""
    arrays = {k: (_days_from_index(v.index), v.to_numpy(float)) for k, v in closes.items() if len(v)}
    days, x = feature_matrix(arrays)
    return pd.DataFrame(x, index=_index_from_days(days).rename("day"), columns=list(FEATURES))


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


__all__ = ["FEATURES", "ASSETS", "VIX_SYMBOL", "WINDOW", "build_features", "daily_close_arrays_from_snapshot",
           "daily_closes_from_snapshot", "feature_matrix", "load_daily_closes", "load_feature_frame",
           "shared_data_dir"]
