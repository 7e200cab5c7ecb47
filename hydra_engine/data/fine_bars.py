"""Finer bars inside a coarse bar (issue #17), for the position manager's intrabar exits.

When one hourly or daily bar cannot tell whether its low came before its high (a stop and a target both
touched, a trail ratcheted by the high and a low beyond the new stop) or whether a touched stop was
crossed continuously or jumped through, the finer bars of the same symbol replay the path. The data folder
has them for BTC (Binance USD-M 5-minute klines, the same venue as the hourly bars) and SPY (1-minute bars
with pre- and post-market, ``equities/intraday_1m/spy_2015_2025_alphavantage_like``, monthly files, New
York time, unadjusted; see ``PROVENANCE.md`` §7).

Only the bars inside the coarse bar's own span are used (for SPY's daily bar 09:30-16:00 New York: a stop
order rests in the regular session only). The fine bars give the *order* of events; their levels are put on
the coarse bar's scale (the coarse series may be dividend-adjusted, the minute bars are not): multiplied by
coarse close / last fine close and held inside the coarse low..high. A window with fewer than half the fine
bars it should hold is not used (the coarse rule decides). Files are read on first use and cached.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from zoneinfo import ZoneInfo

from .catalog import NY, read_parquet

log = logging.getLogger(__name__)
_NY = ZoneInfo(NY)


@dataclass(frozen=True)
class FineSource:
    symbol: str
    path: str          # a file (parquet klines) or a folder of monthly files
    reader: str        # "binance_klines" | "alphavantage_1m_monthly"
    interval_s: int


FINE_SOURCES: dict[str, FineSource] = {
    "BTC/USD": FineSource("BTC/USD", "crypto_perp/binance_usdm/klines/BTCUSDT_5m.parquet", "binance_klines", 300),
    "SPY": FineSource("SPY", "equities/intraday_1m/spy_2015_2025_alphavantage_like", "alphavantage_1m_monthly", 60),
}


class FineBars:
    """``path(symbol, open_s, close_s, (o, h, l, c))`` -> the finer bars inside, or None."""

    def __init__(self, folder: str | Path, symbols, sources: dict[str, FineSource] | None = None):
        self.folder = Path(folder)
        table = FINE_SOURCES if sources is None else sources
        self.sources = {s: src for s, src in table.items() if s in set(symbols) and (self.folder / src.path).exists()}
        self._arrays: dict[tuple[str, str], tuple[np.ndarray, ...] | None] = {}   # (symbol, month or "") -> arrays

    def __bool__(self) -> bool:
        return bool(self.sources)

    def _load(self, src: FineSource, key: str) -> tuple[np.ndarray, ...] | None:
        cached = self._arrays.get((src.symbol, key), False)
        if cached is not False:
            return cached
        arrays = None
        try:
            if src.reader == "binance_klines":
                raw = read_parquet(self.folder / src.path, columns=["ts", "open", "high", "low", "close"])
                ts = pd.to_datetime(raw["ts"], utc=True).astype("datetime64[ns, UTC]").astype("int64").to_numpy() // 1_000_000_000
                arrays = (ts, *(raw[c].to_numpy(dtype=float) for c in ("open", "high", "low", "close")))
            else:
                path = self.folder / src.path / f"{key}_{src.symbol}_1M.csv.gz"
                if path.is_file():
                    raw = pd.read_csv(path)
                    local = pd.to_datetime(raw["timestamp"])
                    ts = local.dt.tz_localize(NY, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")
                    minute = (local.dt.hour * 60 + local.dt.minute).to_numpy()
                    # the regular session only: a resting stop does not trade pre- or post-market
                    keep = ts.notna().to_numpy() & (minute >= 9 * 60 + 30) & (minute < 16 * 60)
                    ts = ts[keep].astype("datetime64[ns, UTC]").astype("int64").to_numpy() // 1_000_000_000
                    order = np.argsort(ts, kind="stable")   # the files are newest first
                    arrays = (ts[order], *(raw.loc[keep, c].to_numpy(dtype=float)[order]
                                           for c in ("open", "high", "low", "close")))
        except Exception as exc:   # a broken fine file costs the refinement, never the run
            log.warning("finer bars for %s (%s) unreadable: %s", src.symbol, key or src.path, exc)
            arrays = None
        self._arrays[(src.symbol, key)] = arrays
        return arrays

    def path(self, symbol: str, open_s: int, close_s: int, coarse: tuple[float, float, float, float]):
        src = self.sources.get(symbol)
        if src is None:
            return None
        key = "" if src.reader == "binance_klines" else datetime.fromtimestamp(open_s, _NY).strftime("%Y_%m")
        arrays = self._load(src, key)
        if arrays is None:
            return None
        ts, o, h, lo, c = arrays
        i, j = int(ts.searchsorted(open_s, "left")), int(ts.searchsorted(close_s, "left"))
        if j - i < 0.5 * (close_s - open_s) / src.interval_s:
            return None
        fo, fh, fl, fc = o[i:j], h[i:j], lo[i:j], c[i:j]
        ok = np.isfinite(fo) & np.isfinite(fh) & np.isfinite(fl) & np.isfinite(fc) & (fl > 0)
        if not ok.all():
            fo, fh, fl, fc = fo[ok], fh[ok], fl[ok], fc[ok]
            if not len(fc):
                return None
        _, ch, cl, cc = coarse
        scale = cc / float(fc[-1])
        clip = lambda a: np.clip(a * scale, cl, ch)   # noqa: E731 - the coarse bar bounds every level
        return list(zip(clip(fo).tolist(), clip(fh).tolist(), clip(fl).tolist(), clip(fc).tolist()))
