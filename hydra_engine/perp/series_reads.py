"""The perp state's reads of its point series (open interest, funding) and bars: the value known at a time,
open-interest deltas, the funding moments and the open-interest-flush proxy of liquidations, each with
numpy's dispatch left out where it is bit for bit the same (issues #21 and #24; tests/test_cycle_fast_paths.py
and tests/test_perp_state_fast.py hold them against numpy and the code they replaced)."""
from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np

FLUSH_OI_PCT = 2.0                        # open interest down >= 2 % in the hour ...
FLUSH_MOVE_PCT = 1.5                      # ... with a price move >= 1.5 % ...


_add = np.add.reduce


def _mean(x: np.ndarray):
    """``np.mean`` of a 1-D float64 array, bit for bit (numpy's own sum, one division), less its dispatch
    (the same steps as ``ml.features._mean``)."""
    if x.dtype != np.float64 or x.ndim != 1 or not len(x):
        return np.mean(x)
    return _add(x) / len(x)


def _std(x: np.ndarray) -> float:
    """``float(np.std(x))`` (ddof 0) of a 1-D float64 array, bit for bit: numpy's steps (mean as sum over n,
    squared deviations summed over n, square root) less its dispatch (as ``ml.features._std``)."""
    if x.dtype != np.float64 or x.ndim != 1 or not len(x):
        return float(np.std(x))
    d = x - _add(x) / len(x)
    return math.sqrt(_add(d * d) / len(x))


def _latest(series, now: datetime, max_age: timedelta) -> tuple[float, int] | None:
    if series is None or not len(series):
        return None
    v, t = float(series.values[-1]), int(series.ts[-1])
    if not math.isfinite(v) or now.timestamp() - t > max_age.total_seconds():
        return None
    return v, t




def _latest_s(series, now_ts: float, max_age_s: float) -> tuple[float, int] | None:
    """``_latest(series, now, max_age)`` with ``now.timestamp()`` and ``max_age.total_seconds()`` given."""
    if series is None or not len(series):
        return None
    v, t = float(series.values[-1]), int(series.ts[-1])
    if not math.isfinite(v) or now_ts - t > max_age_s:
        return None
    return v, t


def _value_at(series, t: int, tolerance_s: int = 7200) -> float | None:
    """The series' value known at epoch ``t`` (the newest at or before it, at most ``tolerance_s`` old)."""
    k = int(series.ts.searchsorted(t, "right")) - 1   # the ndarray method: np.searchsorted less its wrapper
    if k < 0 or t - int(series.ts[k]) > tolerance_s:
        return None
    v = float(series.values[k])
    return v if math.isfinite(v) and v > 0 else None


def _oi_delta(oi, t_now: int, hours: int) -> float | None:
    last = _value_at(oi, t_now, 0)
    prev = _value_at(oi, t_now - hours * 3600)
    return None if last is None or prev is None else last / prev - 1.0


def _oi_delta_newest(oi, t_oi: int, hours: int) -> float | None:
    """``_oi_delta(oi, t_oi, hours)`` where ``t_oi`` is the newest point's time, the same value without a search
    when the point ``hours`` back sits at index ``-1 - hours`` at exactly ``t_oi - hours`` h (no gap in that
    hour): ``_value_at``'s two searches in the (time-ordered) series land there and at the newest point, at
    no distance; else ``_oi_delta`` itself."""
    ts = oi.ts
    k = len(ts) - 1 - hours
    back = t_oi - hours * 3600
    if k < 0 or ts.item(k) != back or ts.item(k + 1) <= back or ts.item(-1) != t_oi:
        return _oi_delta(oi, t_oi, hours)
    last, prev = float(oi.values[-1]), float(oi.values[k])
    if not (math.isfinite(last) and last > 0 and math.isfinite(prev) and prev > 0):
        return None
    return last / prev - 1.0


#: float(_mean(w)), _std(w) of a window of funding settlements, by the window's bytes: the window moves only
#: when a settlement is published (every 8 h), the hourly cycles in between compute the same two numbers
_MOMENTS: dict[bytes, tuple[float, float]] = {}


def _funding_moments(hist: np.ndarray) -> tuple[float, float]:
    """``(float(_mean(hist)), _std(hist))`` of a 1-D float64 array, computed once per distinct content."""
    key = hist.tobytes()
    got = _MOMENTS.get(key)
    if got is None:
        if len(_MOMENTS) > 512:
            _MOMENTS.clear()
        got = _MOMENTS[key] = (float(_mean(hist)), _std(hist))
    return got


def _close_at(bars, t: int) -> float | None:
    # the newest bar closed (ts + interval) at or before t: ts <= t - interval, integers, no array built
    i = int(bars.ts.searchsorted(t - bars.interval_s, "right")) - 1
    if i < 0 or t - (int(bars.ts[i]) + bars.interval_s) > 7200:
        return None
    return float(bars.close[i])


def _flush(oi, bars, taker, t: int) -> tuple[float, float]:
    """The proxy liquidation cluster in the hour ending at ``t``: (long share, short share) of open
    interest liquidated — the open-interest drop when price moved >= FLUSH_MOVE_PCT that hour and the
    taker flow was on the move's side; (0, 0) otherwise."""
    d = _oi_delta(oi, t, 1)
    if d is None or d > -FLUSH_OI_PCT / 100:
        return 0.0, 0.0
    c1, c0 = _close_at(bars, t), _close_at(bars, t - 3600)
    if c1 is None or c0 is None:
        return 0.0, 0.0
    move = c1 / c0 - 1.0
    if abs(move) < FLUSH_MOVE_PCT / 100:
        return 0.0, 0.0
    share = _value_at(taker, t, 3600) if taker is not None and len(taker) else None
    if share is None or (move < 0 and share >= 0.5) or (move > 0 and share <= 0.5):
        return 0.0, 0.0
    return (-d, 0.0) if move < 0 else (0.0, -d)


def _flush_many(oi, bars, taker, ts: list[int]) -> list[tuple[float, float]]:
    """``[_flush(oi, bars, taker, t) for t in ts]``, the same values, cheaper: the open-interest test that
    rejects most hours (a drop of at least FLUSH_OI_PCT in the hour) runs on all of them in one pass, with
    a 1 % margin (``last <= prev * 0.9802`` for a drop of 2 %), and only an hour it cannot rule out goes
    through :func:`_flush` itself. NaN or non-positive values fail the pass as they fail ``_value_at``."""
    zero = (0.0, 0.0)
    if oi is None or not len(oi.ts):
        return [zero] * len(ts)
    ots = oi.ts
    n = len(ots)
    # the usual ask, the hours back from the newest point of an hourly series with no gap among the last
    # ones: each hour's two searches land at known indices (-1 - h and -2 - h), the pass is a few float tests
    t_last, hs = ots.item(n - 1), []
    for x in ts:
        b = t_last - x
        if type(b) is not int or b < 0 or b % 3600:
            break
        hs.append(b // 3600)
    else:
        top = max(hs, default=0) + 2
        if n >= top and ots[n - top:].tolist() == list(range(t_last - (top - 1) * 3600, t_last + 1, 3600)):
            v = np.asarray(oi.values[n - top:], dtype=float).tolist()
            return [_flush(oi, bars, taker, x)
                    if (last := v[top - 1 - h]) > 0 and last <= v[top - 2 - h] * _FLUSH_PREFILTER else zero
                    for x, h in zip(ts, hs)]
    t = np.asarray(ts, dtype=np.int64)
    k1 = ots.searchsorted(t, "right") - 1          # _value_at(oi, t, 0)
    k0 = ots.searchsorted(t - 3600, "right") - 1   # _value_at(oi, t - 1 h), 2 h tolerance
    k1c, k0c = np.maximum(k1, 0), np.maximum(k0, 0)
    last = np.asarray(oi.values[k1c], dtype=float)
    prev = np.asarray(oi.values[k0c], dtype=float)
    maybe = ((k0 >= 0) & (ots[k1c] >= t) & (t - 3600 - ots[k0c] <= 7200)   # k1 >= k0: k0 >= 0 covers both
             & (last > 0) & (last <= prev * _FLUSH_PREFILTER))
    return [_flush(oi, bars, taker, x) if m else zero for x, m in zip(ts, maybe.tolist())]


_FLUSH_PREFILTER = 1 - FLUSH_OI_PCT / 100 * 0.99
