"""Regime freshness (issue #17): a reading older than its inputs allow is UNKNOWN, said out loud.

The HMM regime is a daily reading built on the feature calendar (SPY's sessions, with the other markets
joined to it); when an input feed stops -- the backtest runs past SPY's last bar, or a paper data feed
stalls -- the detector keeps returning the last day it could compute. :func:`freshen` turns such a reading
into UNKNOWN with the reason ``regime inputs stale since <day>`` once its last input day is more than
``truth.regime_max_age_days`` calendar days before ``now`` (4 by default: a Friday close still holds over a
long weekend). UNKNOWN blocks entries through the entry gate (``RegimeUnknownRule``); the engine counts
those cycles (``Engine.regime_stale_cycles``), and backtests and the run summary report them.
"""
from __future__ import annotations

from datetime import date, datetime

from .domain import Regime, RegimeReading

STALE_PREFIX = "regime inputs stale since"


def input_day(reading: RegimeReading) -> date | None:
    """The last day of inputs a reading was computed on (``details["as_of_day"]``), when it says."""
    day = reading.details.get("as_of_day") if reading.details else None
    if not day:
        return None
    try:
        return date.fromisoformat(str(day)[:10])
    except ValueError:
        return None


def freshen(reading: RegimeReading, now: datetime, max_age_days: float) -> RegimeReading:
    """``reading`` as is while fresh; UNKNOWN with the stale reason when its inputs are too old."""
    if reading.regime is Regime.UNKNOWN:
        return reading
    day = input_day(reading)
    if day is None:
        return reading
    age = (now.date() - day).days
    if age <= max_age_days:
        return reading
    return RegimeReading(Regime.UNKNOWN, 0.0, reading.detector, now, {
        "why": f"{STALE_PREFIX} {day.isoformat()} ({age} days > {max_age_days:g}); last reading "
               f"{reading.regime.value}", "stale_since": day.isoformat(), "as_of_day": day.isoformat(),
        "last_regime": reading.regime.value})


def is_stale(reading: RegimeReading) -> bool:
    return bool(reading.details) and "stale_since" in reading.details and reading.regime is Regime.UNKNOWN
