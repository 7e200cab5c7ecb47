"""Pure position-sizing maths for the risk brain (issue #5). No state, no clock, no I/O.

Seeds: strategy bible, "Risk Management: The Actual Edge" (modified half-Kelly, volatility scaling,
hard limits) and layer specifications, "LAYER 4: RISK BRAIN" (Kelly, 1 % risk-based cap, take the
minimum, divide by volatility, multiply by the correlation penalty, then apply the limits).

Units: money is ``Decimal`` USD; ``*_pct`` arguments are percent of equity (3.0 = 3 %);
``stop_distance`` and ``kelly_fraction`` are plain fractions; volatilities are standard deviations of
log returns per bar of the series they came from (so only ratios of them are ever used).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal

import numpy as np

ZERO = Decimal(0)
PCT = Decimal("0.01")
CENT = Decimal("0.01")


# --------------------------------------------------------------------------- Kelly and risk cap
def dec(x: float) -> Decimal:
    """A float as the Decimal of its shortest repr (0.1 → Decimal('0.1'), not 0.1000000000000000055…)."""
    return Decimal(repr(float(x)))


def kelly_fd(win_prob: float, reward_risk: float) -> Decimal:
    """Kelly's optimal bet fraction f* = (p·b − q)/b, floored at 0 (no edge, no bet), in Decimal so
    the worked examples come out exact.

    ``win_prob`` is the proposal's confidence read as a win probability, ``reward_risk`` is b, the
    win/loss ratio. Layer spec, ``kelly_size``."""
    if not (math.isfinite(win_prob) and math.isfinite(reward_risk)) or reward_risk <= 0:
        return ZERO
    p, b = dec(min(1.0, max(0.0, win_prob))), dec(reward_risk)
    return max(ZERO, (p * b - (1 - p)) / b)


def kelly_f(win_prob: float, reward_risk: float) -> float:
    """:func:`kelly_fd` as a float, for reports."""
    return float(kelly_fd(win_prob, reward_risk))


def kelly_notional(equity_usd: Decimal, win_prob: float, reward_risk: float, kelly_fraction: float) -> Decimal:
    """equity × f* × kelly_fraction. Half-Kelly by default: 75 % of the growth for 50 % of the
    drawdown, and robust to our noisy edge estimates (bible, "Modified Half-Kelly")."""
    return equity_usd * kelly_fd(win_prob, reward_risk) * dec(kelly_fraction)


def risk_cap_notional(equity_usd: Decimal, risk_per_trade_pct: float, stop_distance: float) -> Decimal:
    """Notional that loses exactly ``risk_per_trade_pct`` of equity if the stop is hit:
    equity × risk% / stop distance (layer spec, "Risk-based sizing (1% risk per trade)")."""
    if not (math.isfinite(stop_distance) and stop_distance > 0):
        return ZERO
    return equity_usd * dec(risk_per_trade_pct) * PCT / dec(stop_distance)


# --------------------------------------------------------------------------- volatility scaling
def log_returns(close: np.ndarray) -> np.ndarray:
    """Finite log returns of a close array (non-positive or missing prices are dropped)."""
    c = np.asarray(close, dtype=float)
    c = c[np.isfinite(c) & (c > 0)]
    return np.diff(np.log(c)) if len(c) > 1 else np.empty(0)


def vol_multiplier(close: np.ndarray, lookback: int = 20, floor: float = 0.25,
                   ceiling: float = 1.0) -> tuple[float, dict]:
    """Size multiplier inversely proportional to realised volatility (bible, "Volatility Scaling").

    The reference is the median of the rolling ``lookback``-bar volatilities over the visible history
    of the same series, so the ratio is unit-free (any bar interval) and each symbol is compared with
    its own normal: multiplier = clamp(median_vol / current_vol, floor, ceiling). The default ceiling
    of 1 only ever shrinks sizes ("HYDRA prefers not trading over dying"). With fewer than
    2·lookback returns there is no honest reference and the multiplier is 1 (stated in the details)."""
    rets = log_returns(close)
    if len(rets) < 2 * lookback:
        return 1.0, {"vol_note": f"{len(rets)} returns < {2 * lookback}: no vol scaling"}
    vols = np.lib.stride_tricks.sliding_window_view(rets, lookback).std(axis=1)
    current, reference = float(vols[-1]), float(np.median(vols))
    if current <= 0 or reference <= 0:
        return 1.0, {"vol_note": "zero volatility: no vol scaling"}
    mult = min(ceiling, max(floor, reference / current))
    return mult, {"vol_current": round(current, 6), "vol_median": round(reference, 6),
                  "vol_mult": round(mult, 4)}


# --------------------------------------------------------------------------- correlation penalty
def aligned_returns(ts_a: np.ndarray, close_a: np.ndarray, ts_b: np.ndarray, close_b: np.ndarray,
                    lookback: int) -> tuple[np.ndarray, np.ndarray]:
    """Log returns of two series on a common time grid, last ``lookback`` of them.

    ``ts_*`` are bar *close* times (epoch seconds, ascending). The grid is the sparser series' close
    times; the other series is sampled as of each grid time (last close at or before it), so daily
    equities and hourly crypto are compared day by day without looking ahead."""
    ts_a, ts_b = np.asarray(ts_a, dtype=float), np.asarray(ts_b, dtype=float)
    if len(ts_a) < 2 or len(ts_b) < 2:
        return np.empty(0), np.empty(0)
    # grid on the sparser series -- by bar spacing, not bar count: equal-length histories (history_bars)
    # of hourly crypto and daily equities would otherwise put the grid on the hours, where 23 of 24
    # equity returns are zero and no correlation shows
    if np.median(np.diff(ts_b)) > np.median(np.diff(ts_a)):
        rb, ra = aligned_returns(ts_b, close_b, ts_a, close_a, lookback)
        return ra, rb
    grid = ts_a[ts_a >= ts_b[0]]
    idx = np.searchsorted(ts_b, grid, side="right") - 1
    a = np.asarray(close_a, dtype=float)[len(ts_a) - len(grid):]
    b = np.asarray(close_b, dtype=float)[idx]
    ok = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
    a, b = a[ok], b[ok]
    if len(a) < 2:
        return np.empty(0), np.empty(0)
    return np.diff(np.log(a))[-lookback:], np.diff(np.log(b))[-lookback:]


def correlation(ret_a: np.ndarray, ret_b: np.ndarray, min_overlap: int = 20) -> float | None:
    """Pearson correlation of two aligned return arrays, None when too short or degenerate."""
    if len(ret_a) < min_overlap or len(ret_a) != len(ret_b):
        return None
    if np.std(ret_a) == 0 or np.std(ret_b) == 0:
        return None
    return float(np.corrcoef(ret_a, ret_b)[0, 1])


CORRELATION_STEPS = ((0.8, 0.3), (0.6, 0.6), (0.4, 0.8))  # avg |corr| at or above -> multiplier


def correlation_penalty(avg_abs_corr: float | None) -> float:
    """Layer spec, "Correlation Penalty": ≥0.8 → ×0.3, ≥0.6 → ×0.6, ≥0.4 → ×0.8, else ×1.
    Unknown correlation (no open positions, too little history) → ×1."""
    if avg_abs_corr is None or not math.isfinite(avg_abs_corr):
        return 1.0
    for threshold, mult in CORRELATION_STEPS:
        if avg_abs_corr >= threshold:
            return mult
    return 1.0


# --------------------------------------------------------------------------- the whole calculation
@dataclass(frozen=True, slots=True)
class SizingInputs:
    """Everything :func:`size_notional` needs. Percentages are percent of equity."""

    equity_usd: Decimal
    buying_power_usd: Decimal
    win_prob: float
    reward_risk: float
    stop_distance: float               # |entry − stop| / entry, a fraction
    kelly_fraction: float = 0.5
    risk_per_trade_pct: float = 1.0
    max_position_pct: float = 3.0
    max_asset_pct: float = 5.0
    max_total_exposure_pct: float = 25.0
    asset_exposure_usd: Decimal = ZERO  # already held or pending on this symbol
    total_exposure_usd: Decimal = ZERO  # already held or pending on every symbol
    buying_power_buffer_pct: float = 5.0
    vol_mult: float = 1.0
    corr_mult: float = 1.0
    max_notional_usd: Decimal | None = None  # the plugin's own cap


@dataclass(frozen=True, slots=True)
class SizingResult:
    notional_usd: Decimal               # approved notional before quantity rounding, whole cents down, ≥ 0
    rule: str                           # the binding rule
    candidates: dict[str, Decimal] = field(default_factory=dict)

    def details(self) -> dict[str, str]:
        return {k: str(v.quantize(CENT)) for k, v in self.candidates.items()}


def size_notional(x: SizingInputs) -> SizingResult:
    """The layer-spec calculation, smallest size wins:

    1. ``kelly`` = equity × f* × kelly_fraction; ``risk_per_trade`` = equity × risk% / stop distance;
       the base is the smaller of the two;
    2. the base is multiplied by the volatility and correlation multipliers (the candidate is named
       ``vol_scale`` or ``correlation`` after the smaller multiplier when either is below 1);
    3. hard caps: ``max_position_pct``, ``max_asset_pct`` and ``max_total_exposure_pct`` minus what is
       already used, ``buying_power`` less a buffer, and the plugin's ``strategy_max_notional``.

    Ties go to the earlier rule in that order. The result is never negative and is rounded down to
    whole cents (never above any cap)."""
    eq = x.equity_usd
    kelly = kelly_notional(eq, x.win_prob, x.reward_risk, x.kelly_fraction)
    risk = risk_cap_notional(eq, x.risk_per_trade_pct, x.stop_distance)
    base_rule, base = ("kelly", kelly) if kelly <= risk else ("risk_per_trade", risk)
    scaled_rule = base_rule
    if base > 0 and min(x.vol_mult, x.corr_mult) < 1.0:
        scaled_rule = "correlation" if x.corr_mult <= x.vol_mult else "vol_scale"
    candidates: dict[str, Decimal] = {"kelly": kelly, "risk_per_trade": risk}
    sized = {scaled_rule: base * dec(x.vol_mult) * dec(x.corr_mult)}
    if scaled_rule != base_rule:
        candidates[scaled_rule] = sized[scaled_rule]
    caps = {
        "max_position_pct": eq * dec(x.max_position_pct) * PCT,
        "max_asset_pct": eq * dec(x.max_asset_pct) * PCT - x.asset_exposure_usd,
        "max_total_exposure_pct": eq * dec(x.max_total_exposure_pct) * PCT - x.total_exposure_usd,
        "buying_power": x.buying_power_usd * (1 - dec(x.buying_power_buffer_pct) * PCT),
    }
    if x.max_notional_usd is not None:
        caps["strategy_max_notional"] = x.max_notional_usd
    candidates.update(caps)
    rule, notional = min({**sized, **caps}.items(), key=lambda kv: kv[1])  # min keeps the first of ties
    return SizingResult(max(ZERO, notional).quantize(CENT, ROUND_DOWN), rule, candidates)
