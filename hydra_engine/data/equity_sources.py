"""Equity (and VIX) daily bars from every source in the data folder, spliced per symbol (issue #17).

The shared folder holds several daily histories of the same names (``PROVENANCE.md`` §3):

| folder (``equities/daily/``) | what | span |
|---|---|---|
| ``iex_like_spooky_course`` | OHLCV, all 13 names (the replay's only source before) | 2020-07-27 → 2024-12 |
| ``yfinance_taa_dashboard`` | OHLCV + adjusted close, SPY TLT GLD HYG | listing → 2024-12 |
| ``yfinance_stock_data`` | OHLCV + adjusted close, six stocks | listing → 2024-03 |
| ``alphavantage_backtester`` | OHLCV (split-unadjusted) + adjusted close, ten names | 1999-2007 → 2020-12 |
| ``adjclose_factor_attribution`` | adjusted close only, all 13 | listing → 2024-12 |

Rule, per symbol: the sources are taken in that order of preference (OHLCV before close-only). The first
one present is the reference; each next one only *extends* the merged series (days before its first or
after its last day -- never replacing a day a better source has). Every OHLCV source is put on a
dividend-and-split-adjusted basis first (open/high/low/close × adjusted close / close, where the file has
both), and each extension is scaled by the median ratio merged close / source close over the (up to 20)
shared days nearest the junction: adjusted series anchored on different download dates differ by a
constant factor, which this removes, so the splice is continuous (tested). A source sharing no day with the
merged series cannot be reconciled and is left out, with a note. Close-only rows become bars with open =
high = low = close and are flagged ``close_only``: the position manager's intrabar rule then reduces to
close-to-close (a close beyond the stop exits at that close), so they claim no path they do not have.

VIX: ``vix/VIX_ohlc_daily_2010_2025.csv`` (OHLC) before ``vix/vix_close_daily_2020_2025.csv`` (close only);
an index, no adjustment. Sources are found by folder name, so a later, longer data folder with the same
layout is read without code changes.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

EQUITY_DIR = "equities/daily"


@dataclass(frozen=True)
class DailySource:
    name: str
    path: str            # relative to the data folder; "{symbol}" is replaced
    fmt: str             # iex | yf_multiheader | yf_plain | alphavantage | close_only
    close_only: bool = False


EQUITY_SOURCES: tuple[DailySource, ...] = (
    DailySource("iex_like_spooky_course", f"{EQUITY_DIR}/iex_like_spooky_course/{{symbol}}.csv.gz", "iex"),
    DailySource("yfinance_taa_dashboard", f"{EQUITY_DIR}/yfinance_taa_dashboard/{{symbol}}.csv.gz", "yf_multiheader"),
    DailySource("yfinance_stock_data", f"{EQUITY_DIR}/yfinance_stock_data/{{symbol}}.csv.gz", "yf_plain"),
    DailySource("alphavantage_backtester", f"{EQUITY_DIR}/alphavantage_backtester/{{symbol}}.csv.gz", "alphavantage"),
    DailySource("adjclose_factor_attribution", f"{EQUITY_DIR}/adjclose_factor_attribution/{{symbol}}.csv.gz",
                "close_only", close_only=True),
)
VIX_SOURCES: tuple[DailySource, ...] = (
    DailySource("vix_ohlc_yfinance", f"{EQUITY_DIR}/vix/VIX_ohlc_daily_2010_2025.csv", "yf_multiheader"),
    DailySource("vix_close_daily", f"{EQUITY_DIR}/vix/vix_close_daily_2020_2025.csv", "close_only", close_only=True),
)
JUNCTION_DAYS = 20


@dataclass
class Spliced:
    """The merged daily frame (index: session date; open, high, low, close, volume, close_only, source) and
    what was done: per source the rows used, the scale applied and why a source was left out."""
    frame: pd.DataFrame
    used: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = [f"{u['source']} {u['from']}..{u['to']}" + (" close-only" if u["close_only"] else "")
                 for u in sorted(self.used, key=lambda u: u["from"])]
        return " + ".join(parts)


def _dates(col: pd.Series) -> pd.Series:
    return pd.to_datetime(col.astype(str).str[:10], format="%Y-%m-%d", errors="coerce")


def read_daily(path: Path, fmt: str) -> pd.DataFrame:
    """One file as a frame indexed by session date with open, high, low, close (adjusted basis), volume."""
    if fmt == "close_only":
        raw = pd.read_csv(path)
        close = pd.to_numeric(raw.iloc[:, 1], errors="coerce")
        frame = pd.DataFrame({"open": close, "high": close, "low": close, "close": close, "volume": 0.0})
        frame.index = _dates(raw.iloc[:, 0])
    elif fmt == "iex":
        raw = pd.read_csv(path)
        frame = pd.DataFrame({k: pd.to_numeric(raw[c], errors="coerce") for k, c in
                              (("open", "Open"), ("high", "High"), ("low", "Low"), ("close", "Close"),
                               ("volume", "Volume"))})
        adj = pd.to_numeric(raw["Adj Close"], errors="coerce")
        frame.index = _dates(raw["Date"])
        frame = _adjust(frame, adj.to_numpy())
    elif fmt in ("yf_multiheader", "yf_plain"):
        if fmt == "yf_multiheader":   # Price/Ticker/Date header rows; columns date, Adj Close, Close, High, Low, Open, Volume
            raw = pd.read_csv(path, header=None, skiprows=3)
            raw.columns = ["Date", "Adj Close", "Close", "High", "Low", "Open", "Volume"][:raw.shape[1]]
        else:
            raw = pd.read_csv(path)
        num = {c: pd.to_numeric(raw[c], errors="coerce") for c in ("Open", "High", "Low", "Close", "Adj Close", "Volume")
               if c in raw}
        frame = pd.DataFrame({"open": num["Open"], "high": num["High"], "low": num["Low"], "close": num["Close"],
                              "volume": num.get("Volume", pd.Series(0.0, index=raw.index))})
        frame.index = _dates(raw["Date"])
        frame = _adjust(frame, num["Adj Close"].to_numpy() if "Adj Close" in num else None)
    elif fmt == "alphavantage":
        raw = pd.read_csv(path)
        frame = pd.DataFrame({k: pd.to_numeric(raw[k], errors="coerce") for k in ("open", "high", "low", "close", "volume")})
        frame.index = _dates(raw["timestamp"])
        frame = _adjust(frame, pd.to_numeric(raw["adjusted_close"], errors="coerce").to_numpy())
    else:  # pragma: no cover - the tables above name the formats
        raise ValueError(f"unknown daily format {fmt!r} for {path}")
    frame = frame[frame.index.notna()]
    frame = frame[~frame.index.duplicated(keep="last")].sort_index()
    # a stray leading fragment (iex SPY: one 2018-11-01 row, then 2020-07-27 on) is not the start of the
    # source: dropped here so that a longer source fills the gap behind it (clean_bars' rule: <= 5 rows
    # before a gap of more than 30 days)
    gaps = np.flatnonzero(np.diff(frame.index.to_numpy()) > np.timedelta64(30, "D"))
    if len(gaps) and gaps[0] < 5:
        frame = frame.iloc[gaps[0] + 1:]
    return frame


def _adjust(frame: pd.DataFrame, adj: np.ndarray | None) -> pd.DataFrame:
    """Open/high/low/close on the adjusted-close basis (× adj / close) where both are known."""
    if adj is None:
        return frame
    close = frame["close"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(np.isfinite(adj) & (close > 0), adj / close, np.nan)
    ok = np.isfinite(factor)
    out = frame.copy()
    for c in ("open", "high", "low", "close"):
        out[c] = np.where(ok, frame[c].to_numpy(dtype=float) * np.where(ok, factor, 1.0), frame[c].to_numpy(dtype=float))
    return out


def splice(symbol: str, folder: Path, sources: tuple[DailySource, ...]) -> Spliced | None:
    """The merged series of ``symbol`` from every source present in ``folder`` (None: none present)."""
    merged: pd.DataFrame | None = None
    out = Spliced(pd.DataFrame())
    for src in sources:
        path = folder / src.path.format(symbol=symbol)
        if not path.is_file():
            continue
        try:
            frame = read_daily(path, src.fmt)
        except Exception as exc:   # a broken extra source costs that source, said; never the run
            out.notes.append(f"{symbol}: {src.name} unreadable ({exc}); left out")
            continue
        good = frame[["open", "high", "low", "close"]].gt(0).all(axis=1) & np.isfinite(
            frame[["open", "high", "low", "close"]]).all(axis=1)
        if merged is None:
            merged = frame.assign(close_only=src.close_only, source=src.name)
            out.used.append(_used(src, merged, 1.0))
            continue
        shared = merged.index.intersection(frame.index[good])
        first, last = merged.index[0], merged.index[-1]
        before, after = frame[good & (frame.index < first)], frame[good & (frame.index > last)]
        if before.empty and after.empty:
            continue
        if shared.empty:
            out.notes.append(f"{symbol}: {src.name} shares no day with {merged['source'].iloc[0]} .. cannot be "
                             "put on the same price basis; left out")
            continue
        scaled = []
        for part, near in ((before, shared[:JUNCTION_DAYS]), (after, shared[-JUNCTION_DAYS:])):
            if part.empty:
                continue
            ratio = float(np.median(merged.loc[near, "close"].to_numpy(dtype=float)
                                    / frame.loc[near, "close"].to_numpy(dtype=float)))
            piece = part.copy()
            for c in ("open", "high", "low", "close"):
                piece[c] = piece[c] * ratio
            piece = piece.assign(close_only=src.close_only, source=src.name)
            scaled.append(piece)
            out.used.append(_used(src, piece, ratio))
        merged = pd.concat([merged, *scaled]).sort_index()
    if merged is None:
        return None
    out.frame = merged
    return out


def _used(src: DailySource, part: pd.DataFrame, ratio: float) -> dict:
    return {"source": src.name, "from": part.index[0].date().isoformat(), "to": part.index[-1].date().isoformat(),
            "rows": int(len(part)), "scale": round(ratio, 8), "close_only": src.close_only}


def _stamp(folder: Path, symbol: str, sources: tuple[DailySource, ...]) -> tuple:
    out = []
    for src in sources:
        p = folder / src.path.format(symbol=symbol)
        try:
            st = p.stat()
            out.append((src.name, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((src.name, None, None))
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _splice_once(symbol: str, folder: str, sources: tuple[DailySource, ...], stamp: tuple) -> Spliced | None:
    return splice(symbol, Path(folder), sources)


def splice_cached(symbol: str, folder: Path, sources: tuple[DailySource, ...]) -> Spliced | None:
    """:func:`splice`, read once per process while the files are unchanged (a backtest opens the folder
    twice: to check the span, then to run). Callers must not modify the frame."""
    return _splice_once(symbol, str(Path(folder).resolve()), sources, _stamp(Path(folder), symbol, sources))
