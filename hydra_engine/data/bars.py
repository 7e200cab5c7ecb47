"""A generic bar source: any OHLCV frame or single parquet/CSV file replayed through ``ReplayMarketData``.

The shared-data catalog (:mod:`.catalog`) knows the project's own files. Benchmarks and experiments
need to replay other bars — e.g. the seeded one-minute series of ``shared/bench-peers/gen_data.py``
(a parquet with a ``timestamp`` DatetimeIndex and ``open/high/low/close/volume`` columns) — through
exactly the same replay machinery: cleaning, no look-ahead (a bar is visible once it has closed at
``open time + interval``), staleness, and the simulated clock's timeline. :class:`BarFileMarketData`
is that replay with its bar sources injected (``bar_sources``, no point series), reading frames or
files of this generic layout instead of the catalog's readers.
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Mapping

import pandas as pd

from .catalog import BarSource, read_parquet
from .replay import DataFolderError, ReplayMarketData

READER = "ohlcv_frame"
COLUMNS = ("open", "high", "low", "close", "volume")


def uniform_frame(raw: pd.DataFrame, interval: timedelta) -> pd.DataFrame:
    """The replay's uniform frame (open_time, close_time, open, high, low, close, volume) from a frame
    whose bar open times are its DatetimeIndex or a ``timestamp``/``open_time`` column."""
    if isinstance(raw.index, pd.DatetimeIndex):
        idx = raw.index
    else:
        col = next((c for c in ("open_time", "timestamp", "ts") if c in raw.columns), None)
        if col is None:
            raise DataFolderError("bar frame needs a DatetimeIndex or an open_time/timestamp column")
        idx = pd.DatetimeIndex(pd.to_datetime(raw[col]))
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise DataFolderError(f"bar frame lacks columns {missing}")
    open_time = pd.Series(idx, copy=False)   # stays datetime64[ns, UTC]: no per-row Timestamp objects
    data = {"open_time": open_time, "close_time": open_time + interval}
    data.update({c: raw[c].to_numpy(dtype=float) for c in COLUMNS})
    return pd.DataFrame(data)


def read_frame_file(path: Path) -> pd.DataFrame:
    path = Path(path)
    if path.suffix == ".parquet":
        return read_parquet(path)
    return pd.read_csv(path, index_col=0, parse_dates=True)


class BarFileMarketData(ReplayMarketData):
    """``ReplayMarketData`` over generic OHLCV frames: ``bars`` maps each symbol to a DataFrame or to a
    parquet/CSV file. Every bar has the same ``interval`` (its close is open + interval)."""

    def __init__(self, bars: Mapping[str, pd.DataFrame | str | Path], *, interval: timedelta = timedelta(minutes=1),
                 history_bars: int = 500, stale_after_s: int | None = None, folder: str | Path = ".",
                 event_feeds=()):
        self._frames = dict(bars)
        sources = {s: BarSource(s, str(v) if not isinstance(v, pd.DataFrame) else f"<frame:{s}>", interval, READER)
                   for s, v in self._frames.items()}
        stale = stale_after_s if stale_after_s is not None else int(2 * interval.total_seconds()) + 300
        super().__init__(folder, list(self._frames), history_bars=history_bars, bar_sources=sources,
                         point_sources=[], crypto_stale_after_s=stale, equity_stale_after_s=stale,
                         event_feeds=event_feeds)
        self._frames = {}   # the replay keeps its own numpy arrays; do not hold the frames twice

    def _read(self, rel: str, reader, src):
        if src.reader != READER:
            return super()._read(rel, reader, src)
        raw = self._frames[src.symbol]
        if not isinstance(raw, pd.DataFrame):
            try:
                raw = read_frame_file(Path(raw))
            except FileNotFoundError:
                raise DataFolderError(f"bar file missing: {raw} (needed for {src.symbol})") from None
        return uniform_frame(raw, src.interval)
