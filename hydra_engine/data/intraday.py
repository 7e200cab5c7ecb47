"""Intraday candles held by the replay (issue #18): per symbol, 15-minute candles with the regular-session
index the simulated broker needs to fill a regular order against the first candle after it."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from ..domain import UTC

NEW_YORK = ZoneInfo("America/New_York")


def _epoch_s(values: pd.Series) -> np.ndarray:
    return (pd.to_datetime(values, utc=True).astype("datetime64[ns, UTC]").astype("int64") // 1_000_000_000).to_numpy()


@dataclass
class _Intraday:
    """A symbol's intraday candles and, per candle, whether it lies in the regular session (09:30-16:00 NY)."""
    symbol: str
    interval_s: int
    open_ts: np.ndarray
    close_ts: np.ndarray
    o: np.ndarray
    h: np.ndarray
    l: np.ndarray
    c: np.ndarray
    v: np.ndarray
    regular_idx: np.ndarray     # indices of regular-session candles
    first_day: str
    last_day: str

    @classmethod
    def from_frame(cls, symbol: str, frame: pd.DataFrame) -> "_Intraday":
        opens = pd.DatetimeIndex(frame["open_time"])
        local = opens.tz_convert(NEW_YORK)
        minute = np.asarray(local.hour * 60 + local.minute)
        regular = (minute >= 570) & (minute < 960)
        open_ts = _epoch_s(frame["open_time"])
        return cls(symbol, int(open_ts[1] - open_ts[0]) if len(open_ts) > 1 else 900, open_ts,
                   _epoch_s(frame["close_time"]),
                   *(frame[c].to_numpy(dtype=float) for c in ("open", "high", "low", "close", "volume")),
                   np.flatnonzero(np.asarray(regular)), f"{local[0]:%Y-%m-%d}", f"{local[-1]:%Y-%m-%d}")

    def next_regular(self, after_s: int, now_s: int, daily_open_s: int):
        """(open time, open) of the first regular-session candle opening at or after ``after_s`` when it opens
        before the next daily bar; "wait" when it has not closed by ``now_s``; None: the daily bar fills."""
        k = int(self.open_ts.searchsorted(after_s, "left"))
        j = int(self.regular_idx.searchsorted(k, "left"))
        if j >= len(self.regular_idx):
            return None
        kk = int(self.regular_idx[j])
        if int(self.open_ts[kk]) >= daily_open_s or int(self.open_ts[kk]) - after_s > 86_400:
            return None
        if int(self.close_ts[kk]) > now_s:
            return "wait"
        return datetime.fromtimestamp(int(self.open_ts[kk]), UTC), float(self.o[kk])
