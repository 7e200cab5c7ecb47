"""Daily macro series a plugin may ask for (issue #17): Cboe's volatility indices and FRED's daily rates.

Only what a plugin declares in ``data_needs`` is read (none of the shipped plugins does yet), as data-only
inputs that never drive the clock and are never traded:

- ``DataNeed("bars", "VIX3M")`` / ``"VIX9D"`` / ``"VVIX"``: daily bars from ``macro/vol_indices_cboe/``
  (Cboe's history files, OHLC; VVIX close only, so open = high = low = close). Like VIX, a bar closes --
  becomes visible -- at 16:15 New York on its date, when Cboe sets the close.
- ``DataNeed("fred_daily", "DGS2")`` / ``"DGS10"`` / ``"DGS30"`` / ``"T10Y2Y"`` / ``"DTWEXBGS"``: point
  series from ``macro/fred_daily/`` (percent yields, the 10y-2y spread, which can be negative, so these
  are values and not price bars; and the broad trade-weighted dollar index, not DXY). FRED stamps a value
  with the day it describes, not the day it was published: the yields come from the Fed's H.15 daily
  update, posted the next business day, so a value of day D is known at 16:15 New York on the next US
  business day (federal holidays skipped); the dollar index comes from the weekly H.10 release (Mondays),
  so a value of day D is known at 16:15 New York on the first business day on or after the Monday that
  follows D's week. Both err late, never early. FRED's blank rows (market holidays) carry no value and are
  left out.

A declared series whose file is not in the data folder (the shipped extract has no ``macro/``) is not
read: the coverage table names it as lost for that plugin (``not in the data``) and the plugin sees no
series.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pandas as pd

from .catalog import NY, BarSource, PointSource

CBOE_DIR = "macro/vol_indices_cboe"
FRED_DIR = "macro/fred_daily"
FRED_KIND = "fred_daily"

MACRO_BAR_SOURCES: dict[str, BarSource] = {
    s: BarSource(s, f"{CBOE_DIR}/{s}_History.csv", timedelta(days=1), "cboe_daily") for s in ("VIX3M", "VIX9D", "VVIX")
}
WEEKLY_FRED = ("DTWEXBGS",)
MACRO_POINT_SOURCES: list[PointSource] = [
    PointSource(FRED_KIND, s, f"{FRED_DIR}/{s}.csv", "value", timedelta(0), reader="fred_daily", optional=True)
    for s in ("DGS2", "DGS10", "DGS30", "T10Y2Y", "DTWEXBGS")
]


def read_cboe_bars(path, source: BarSource) -> pd.DataFrame:
    """Uniform bar frame of a Cboe history file (``DATE`` as MM/DD/YYYY; OHLC, or one close column)."""
    from .catalog import _daily_session_times, _numeric
    raw = pd.read_csv(path)
    if "DATE" not in raw.columns:
        raise ValueError(f"{path}: column 'DATE' missing (have {list(raw.columns)})")
    day = pd.to_datetime(raw["DATE"], format="%m/%d/%Y").dt.strftime("%Y-%m-%d")
    opens, closes = _daily_session_times(day, close=pd.Timedelta(hours=16, minutes=15))
    if {"OPEN", "HIGH", "LOW", "CLOSE"} <= set(raw.columns):
        o, h, lo, c = (_numeric(raw[k]) for k in ("OPEN", "HIGH", "LOW", "CLOSE"))
    elif source.symbol in raw.columns:   # VVIX: the close alone
        o = h = lo = c = _numeric(raw[source.symbol])
    else:
        raise ValueError(f"{path}: neither OPEN/HIGH/LOW/CLOSE nor {source.symbol!r} (have {list(raw.columns)})")
    return pd.DataFrame({"open_time": opens, "close_time": closes, "open": o, "high": h, "low": lo,
                         "close": c, "volume": 0.0})


def _business_day():
    from pandas.tseries.holiday import USFederalHolidayCalendar
    from pandas.tseries.offsets import CustomBusinessDay
    return CustomBusinessDay(calendar=USFederalHolidayCalendar())


def fred_known_at(days: pd.Series, weekly: bool) -> pd.Series:
    """When FRED's value for each day was public (UTC): see the module docstring."""
    bday = _business_day()
    days = pd.to_datetime(days).dt.normalize()
    if weekly:   # the Monday after the week of D, or the next business day when that Monday is a holiday
        mondays = days + pd.to_timedelta(7 - days.dt.day_of_week, unit="D")
        published = pd.Series([bday.rollforward(m) for m in mondays], index=days.index)
    else:        # the next business day
        published = pd.Series([d + bday for d in days], index=days.index)
    local = pd.to_datetime(published) + pd.Timedelta(hours=16, minutes=15)
    return local.dt.tz_localize(NY).dt.tz_convert("UTC")


def read_fred_points(path, source: PointSource) -> pd.DataFrame:
    """Uniform point frame (known_at, value) of a FRED daily CSV (``date,value``)."""
    raw = pd.read_csv(path)
    for col in ("date", source.column):
        if col not in raw.columns:
            raise ValueError(f"{path}: column {col!r} missing (have {list(raw.columns)})")
    value = pd.to_numeric(raw[source.column], errors="coerce")
    keep = value.notna()   # a blank row is a holiday without a value, not a bad value
    return pd.DataFrame({"known_at": fred_known_at(raw.loc[keep, "date"], source.symbol in WEEKLY_FRED).to_numpy(),
                         "value": value[keep].to_numpy(dtype=float)})


@dataclass(frozen=True)
class MacroNeeds:
    bars: list[str]                      # data-only daily bars to read (files present)
    series: list[tuple[str, str]]        # (kind, symbol) point series to read (files present)


def macro_needs(strategies, folder: Path) -> MacroNeeds:
    """The macro series the plugins declare whose files exist in ``folder``; a missing one is left to the
    coverage table to name."""
    needs = [n for s in strategies for n in s.data_needs]
    bars = [n.symbol for n in needs if n.kind == "bars" and n.symbol in MACRO_BAR_SOURCES
            and (Path(folder) / MACRO_BAR_SOURCES[n.symbol].path).is_file()]
    known = {(p.kind, p.symbol): p for p in MACRO_POINT_SOURCES}
    series = [(n.kind, n.symbol) for n in needs if (n.kind, n.symbol) in known
              and (Path(folder) / known[(n.kind, n.symbol)].path).is_file()]
    return MacroNeeds(list(dict.fromkeys(bars)), list(dict.fromkeys(series)))
