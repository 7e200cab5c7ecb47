"""Bars for the simulated perp venue: one object that fills orders (``next_bar_open``, the replay
MarketData contract) and shows each bar's high and low for liquidation checks (``bars_between``).

Any object with these two methods can drive :class:`~hydra_engine.perp.venue.SimulatedPerpVenue`; this one
is built from frames with ``ts`` (bar open, UTC), ``open``, ``high``, ``low``, ``close`` columns — the
layout of ``shared/data/crypto_perp/binance_usdm/klines/*.parquet``.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np

from ..domain import UTC, require_utc


@dataclass(frozen=True, slots=True)
class PriceBar:
    """One closed bar as the venue reads it: open/close times and prices as floats from the file
    (the venue turns them into Decimal through their shortest repr)."""

    open_time: datetime
    close_time: datetime
    open: float
    high: float
    low: float


class BarRangeSource(Protocol):
    """What the venue needs for liquidation checks: the bars of ``symbol`` that opened at or after
    ``start`` and have closed by ``now``, oldest first."""

    def bars_between(self, symbol: str, start: datetime, now: datetime) -> Sequence[PriceBar]: ...


class PerpBars:
    """In-memory bars per symbol (numpy arrays of epoch seconds and floats)."""

    def __init__(self, frames: Mapping[str, "pd.DataFrame"], interval: timedelta,  # noqa: F821
                 intervals: Mapping[str, timedelta] | None = None):
        self.interval = interval
        self._data: dict[str, tuple[np.ndarray, ...]] = {}
        for symbol, frame in frames.items():
            # a symbol's own bar length where it differs (BNBUSDT: Hyperliquid 8-hour candles, issue #20)
            step = int((intervals or {}).get(symbol, interval).total_seconds())
            ts = frame["ts"]
            if getattr(ts.dt, "tz", None) is None:
                raise ValueError(f"{symbol}: bar times must be UTC-aware")
            open_s = (ts.astype("int64") // _ns_per_unit(ts)).to_numpy()
            order = np.argsort(open_s, kind="stable")
            open_s = open_s[order]
            if len(open_s) > 1 and (np.diff(open_s) <= 0).any():
                raise ValueError(f"{symbol}: duplicate bar open times")
            self._data[symbol] = (open_s, open_s + step, frame["open"].to_numpy()[order],
                                  frame["high"].to_numpy()[order], frame["low"].to_numpy()[order])

    @classmethod
    def from_parquet(cls, files: Mapping[str, str | Path], interval: timedelta, *,
                     start: datetime | None = None, end: datetime | None = None) -> "PerpBars":
        """Bars from the shared kline files, optionally cut to [start, end) to keep tests small."""
        return cls(dict(_kline_frames(files, start, end)), interval)

    @classmethod
    def from_sources(cls, folder: str | Path, sources: Mapping[str, "BarSource"], *,  # noqa: F821
                     start: datetime | None = None, end: datetime | None = None) -> "PerpBars":
        """Bars of catalog ``BarSource``s: Binance klines as :meth:`from_parquet` reads them, the other
        venues' perp bars (SOLUSDT on OKX, BNBUSDT on Hyperliquid) through the catalog's readers, each
        symbol with its own bar length."""
        import pandas as pd

        from ..data.catalog import read_bars

        binance = {s: Path(folder) / src.path for s, src in sources.items() if src.reader == "binance_klines"}
        frames = dict(_kline_frames(binance, start, end))
        for symbol, src in sources.items():
            if symbol in binance:
                continue
            f = read_bars(Path(folder) / src.path, src).rename(columns={"open_time": "ts"})
            if start is not None:
                f = f[f.ts >= pd.Timestamp(require_utc(start))]
            if end is not None:
                f = f[f.ts < pd.Timestamp(require_utc(end))]
            frames[symbol] = f.reset_index(drop=True)
        return cls(frames, timedelta(hours=1), {s: src.interval for s, src in sources.items()})

    def next_bar_open(self, symbol: str, after: datetime, now: datetime) -> tuple[datetime, float] | None:
        d = self._data.get(symbol)
        if d is None:
            return None
        open_s, close_s, o = d[0], d[1], d[2]
        k = int(open_s.searchsorted(int(after.timestamp()), "left"))
        if k < len(open_s) and close_s[k] <= int(now.timestamp()):
            return datetime.fromtimestamp(int(open_s[k]), UTC), float(o[k])
        return None

    def bars_between(self, symbol: str, start: datetime, now: datetime) -> list[PriceBar]:
        d = self._data.get(symbol)
        if d is None:
            return []
        open_s, close_s, o, h, lo = d
        i = int(open_s.searchsorted(int(start.timestamp()), "left"))
        j = int(close_s.searchsorted(int(now.timestamp()), "right"))
        return [PriceBar(datetime.fromtimestamp(int(open_s[k]), UTC), datetime.fromtimestamp(int(close_s[k]), UTC),
                         float(o[k]), float(h[k]), float(lo[k])) for k in range(i, j)]


def _kline_frames(files, start, end):
    """The kline files' ``ts, open, high, low, close`` frames, cut to [start, end)."""
    import pandas as pd

    for symbol, path in files.items():
        frame = pd.read_parquet(path, columns=["ts", "open", "high", "low", "close"])
        if start is not None:
            frame = frame[frame.ts >= pd.Timestamp(require_utc(start))]
        if end is not None:
            frame = frame[frame.ts < pd.Timestamp(require_utc(end))]
        yield symbol, frame.reset_index(drop=True)


def _ns_per_unit(ts) -> int:
    """Divisor from the column's integer representation to seconds (ms- or ns-resolution datetimes)."""
    unit = str(ts.dtype).split("[")[1].split(",")[0] if "[" in str(ts.dtype) else "ns"
    return {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
