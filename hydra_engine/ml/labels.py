"""The labels, as the ML specification defines them.

* Signal scorer: 1 when the signal's trade would have paid — the return in the signal's direction from
  the close known at the signal to the close at the end of its holding period, after the round-trip
  cost of its venue — else 0 (:func:`signal_outcome`). The holding period is the signal's own half-life
  (how long its author says it matters), clamped to [1 h, 10 days]. The label window is
  ``[t, t + holding]``: cross-validation purges every training row whose window reaches a test row.
* Regime classifier: the perp regime of the *next* window ``(t, t + REGIME_WINDOW]`` by the
  specification's ``label_regime`` rule (:func:`regime_label`), so the model forecasts rather than
  restates; the naive baseline is the same rule on the window that just ended (``(t - W, t]``).
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np

from ..perp.stats import VOL_WINDOW, HourlyVol, PerpRegime, _add, _mean, _std, flush_hours, hourly_vol

MIN_HOLDING = timedelta(hours=1)
MAX_HOLDING = timedelta(days=10)
REGIME_WINDOW_H = 24
#: the specification's label_regime thresholds
CASCADE_VELOCITY = 0.05
SQUEEZE_FUNDING = 0.001
SQUEEZE_OI = 0.02
TREND_SUM = 0.02
VOL_PERCENTILE = 95.0
#: class order of the classifier (the specification's Regime enum values 0..6)
CLASSES: tuple[PerpRegime, ...] = (PerpRegime.TRENDING_UP, PerpRegime.TRENDING_DOWN, PerpRegime.RANGING,
                                   PerpRegime.HIGH_VOLATILITY, PerpRegime.CASCADE_RISK, PerpRegime.SQUEEZE_LONG,
                                   PerpRegime.SQUEEZE_SHORT)
CLASS_INDEX = {r: i for i, r in enumerate(CLASSES)}


def holding_period(half_life: timedelta) -> timedelta:
    return max(MIN_HOLDING, min(MAX_HOLDING, half_life))


def signal_outcome(close_at, symbol: str, direction: float, t: datetime, holding: timedelta,
                   cost_frac: float, data_end: datetime) -> tuple[float, float] | None:
    """(net return, label) of a signal at ``t``: ``close_at(symbol, at) -> (close time, close) | None``
    (the replay's ``bar_close_at``). None when the holding period runs past ``data_end`` or no price is
    known at ``t``: an unlabelled signal is dropped, never guessed."""
    end = t + holding
    if end > data_end or direction == 0:
        return None
    entry, exit_ = close_at(symbol, t), close_at(symbol, end)
    if entry is None or exit_ is None or exit_[0] <= entry[0] or not entry[1] > 0:
        return None
    gross = direction * (exit_[1] / entry[1] - 1.0)
    net = gross - cost_frac
    return net, 1.0 if net > 0 else 0.0


def _window(bars, lo_s: int, hi_s: int) -> np.ndarray:
    closed = bars.ts + bars.interval_s
    return np.asarray(bars.close[(closed > lo_s) & (closed <= hi_s)], dtype=float)


def regime_label(market, symbol: str, start: datetime, hours: int = REGIME_WINDOW_H) -> PerpRegime | None:
    """The specification's ``label_regime`` on the window ``(start, start + hours]`` of ``symbol``, read
    from ``market`` — a snapshot taken at (or after) the window's end; nothing later is read.

    returns: hourly log returns in the window (from the close at ``start``); volatility: their standard
    deviation, annualised; funding: mean of the settlements published in the window (else the last one
    before); oi_delta: open interest at the end over the start; liq_velocity: the largest hourly
    liquidation velocity in the window (the perp module's open-interest-flush proxy in history);
    "volatility_95th_percentile": of the 24 h realised volatility over the bars visible before the
    window (at most the snapshot's history), so it is known at ``start``."""
    bars = market.bars.get(symbol)
    if bars is None or len(bars) < 3 * hours:
        return None
    t0 = int(start.timestamp())
    t1 = t0 + hours * 3600
    closed = bars.ts + bars.interval_s
    if closed[-1] < t1:
        return None
    k0 = int(closed.searchsorted(t0, "right")) - 1
    if k0 < 2 * hours:
        return None
    # _window(bars, t0, t1), as a slice: the close times are sorted (the searchsorted above relies on it too)
    k1 = int(closed.searchsorted(t1, "right"))
    if k1 - (k0 + 1) < hours // 2:
        return None
    # the log returns and their rolling ``hours``-bar deviations (for the 24-hour window the snapshot's own,
    # shared with the perp state and the classifier's features): the window's returns from the close at
    # start are r[k0:k1 - 1]; the history's deviations (the returns before the window, from the first bar)
    # are the first k0 + 1 - hours of sd, bit for bit (the cumulative sums run from the first return)
    hv = (hourly_vol(market, symbol) if hours == VOL_WINDOW
          else HourlyVol(np.asarray(bars.close[:k1], dtype=float), hours))
    r = hv.r[k0:k1 - 1]
    hist = hv.sd[:max(k0 + 1 - hours, 0)] * math.sqrt(365 * 24)
    vol = float(_std(r) * math.sqrt(365 * 24))   # np.std's own steps, less its dispatch
    vol95 = _percentile(hist, VOL_PERCENTILE) if len(hist) >= hours else math.inf
    fs = market.point_series("funding_rate", symbol)
    funding = math.nan
    if fs is not None and len(fs):
        j0, j1 = int(fs.ts.searchsorted(t0, "right")), int(fs.ts.searchsorted(t1, "right"))   # ts sorted
        inside = fs.values[j0:j1]
        funding = float(_mean(inside)) if len(inside) else (float(fs.values[j0 - 1]) if j0 > 0 else math.nan)
    oi = market.point_series("open_interest", symbol)
    oi_delta, liq_velocity = math.nan, 0.0
    if oi is not None and len(oi):
        a, b = _oi_at(oi, t0), _oi_at(oi, t1)
        if a and b:
            oi_delta = b / a - 1.0
        # through the snapshot's flush table: the perp state of this snapshot has most often computed these hours
        liq_velocity = max(sum(f) for f in flush_hours(market, symbol, [t0 + h * 3600 for h in range(1, hours + 1)]))
    mean = float(_mean(r))
    if liq_velocity > CASCADE_VELOCITY:
        return PerpRegime.CASCADE_RISK
    if funding > SQUEEZE_FUNDING and oi_delta > SQUEEZE_OI and mean < 0:
        return PerpRegime.SQUEEZE_SHORT
    if funding < -SQUEEZE_FUNDING and oi_delta > SQUEEZE_OI and mean > 0:
        return PerpRegime.SQUEEZE_LONG
    if vol > vol95:
        return PerpRegime.HIGH_VOLATILITY
    trend = float(_add(r))
    if trend > TREND_SUM:
        return PerpRegime.TRENDING_UP
    if trend < -TREND_SUM:
        return PerpRegime.TRENDING_DOWN
    return PerpRegime.RANGING


def _percentile(x: np.ndarray, pct: float) -> float:
    """``float(np.percentile(x, pct))`` (numpy's default "linear" method) of a 1-D float64 array, bit for
    bit, by numpy's own steps less its generic machinery (~30 µs a call): the virtual index
    ``(n - 1) * (pct / 100)``, the two order statistics around it by partition, numpy's ``_lerp`` between
    them (from the upper one when the weight is >= 0.5); NaN when any value is NaN."""
    n = len(x)
    v = (n - 1) * (pct / 100) if n else math.nan
    if x.dtype != np.float64 or x.ndim != 1 or n < 2 or not 0 <= v < n - 1 or type(pct) is not float:
        return float(np.percentile(x, pct))
    lo = math.floor(v)
    part = np.partition(x, (lo, lo + 1))
    if np.isnan(part).any():
        return math.nan
    a, b = float(part[lo]), float(part[lo + 1])
    t = v - lo
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def _oi_at(oi, t: int) -> float | None:
    k = int(oi.ts.searchsorted(t, "right")) - 1
    if k < 0 or t - int(oi.ts[k]) > 7200:
        return None
    v = float(oi.values[k])
    return v if math.isfinite(v) and v > 0 else None
