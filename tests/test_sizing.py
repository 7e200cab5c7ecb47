"""Pure sizing maths (hydra_engine.sizing): the seed's worked example and a case where each rule binds.

Worked example (strategy bible "Modified Half-Kelly"; layer spec "Full Calculation"): equity $100,000,
confidence 0.6, reward:risk 2, stop 2 %:
  Kelly f* = (0.6·2 − 0.4)/2 = 0.4; half-Kelly 0.2 → $20,000
  risk cap = 1 % / 2 % × $100,000 = $50,000
  hard cap 3 % per position = $3,000  ← binds (asset 5 % = $5,000, total 25 % = $25,000, buying power
  $100,000 × 95 % = $95,000)
"""
from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hydra_engine.sizing import (SizingInputs, aligned_returns, correlation, correlation_penalty, kelly_f,
                                 kelly_notional, risk_cap_notional, size_notional, vol_multiplier)

D = Decimal
EQ = D(100_000)


def seed_inputs(**kw) -> SizingInputs:
    base = dict(equity_usd=EQ, buying_power_usd=EQ, win_prob=0.6, reward_risk=2.0, stop_distance=0.02)
    return SizingInputs(**{**base, **kw})


def test_kelly_formula_on_the_seed_example():
    assert kelly_f(0.6, 2.0) == pytest.approx(0.4)
    assert kelly_notional(EQ, 0.6, 2.0, 0.5) == D("20000")
    assert kelly_notional(EQ, 0.6, 2.0, 0.25) == D("10000")  # the layer spec's quarter Kelly
    assert kelly_f(0.5, 1.0) == 0.0                              # fair coin at even odds: no bet
    assert kelly_f(0.3, 2.0) == 0.0                              # negative edge floored at 0
    assert kelly_f(0.35, 2.0) == 0.025
    assert kelly_f(0.6, 0.0) == 0.0 and kelly_f(float("nan"), 2.0) == 0.0


def test_risk_cap_is_risk_fraction_over_stop_distance():
    assert risk_cap_notional(EQ, 1.0, 0.02) == D("50000")
    assert risk_cap_notional(EQ, 1.0, 0.5) == D("2000")
    assert risk_cap_notional(EQ, 1.0, 0.0) == 0


def test_seed_worked_example_hard_cap_binds():
    r = size_notional(seed_inputs())
    assert (r.rule, r.notional_usd) == ("max_position_pct", D("3000.00"))
    assert r.details() == {"kelly": "20000.00", "risk_per_trade": "50000.00", "max_position_pct": "3000.00",
                           "max_asset_pct": "5000.00", "max_total_exposure_pct": "25000.00",
                           "buying_power": "95000.00"}


# Each row: inputs that make one rule bind, the rule and the expected notional (USD).
BINDS = [
    # confidence 0.35, b 2: f* = (0.7 − 0.65)/2 = 0.025, half 0.0125 → $1,250 < $3,000
    (dict(win_prob=0.35), "kelly", "1250.0"),
    # stop 50 %: risk cap 1 %/50 % → $2,000 < Kelly $20,000 and < $3,000
    (dict(stop_distance=0.5), "risk_per_trade", "2000"),
    # $3,000 already on the symbol: 5 % − $3,000 = $2,000
    (dict(asset_exposure_usd=D(3000), total_exposure_usd=D(3000)), "max_asset_pct", "2000.00"),
    # $23,500 already deployed: 25 % − $23,500 = $1,500
    (dict(total_exposure_usd=D(23500)), "max_total_exposure_pct", "1500.00"),
    # $2,000 buying power less the 5 % buffer → $1,900
    (dict(buying_power_usd=D(2000)), "buying_power", "1900.00"),
    # the liquidation hunter's own $2,000 cap
    (dict(max_notional_usd=D(2000)), "strategy_max_notional", "2000"),
    # Kelly $1,250 × vol multiplier 0.5 → $625
    (dict(win_prob=0.35, vol_mult=0.5), "vol_scale", "625.00"),
    # Kelly $1,250 × correlation penalty 0.6 → $750
    (dict(win_prob=0.35, corr_mult=0.6), "correlation", "750.00"),
    # both: the smaller multiplier names the rule; $1,250 × 0.8 × 0.3 = $300
    (dict(win_prob=0.35, vol_mult=0.8, corr_mult=0.3), "correlation", "300.00"),
    # a tightened config: 1 % per position → $1,000
    (dict(max_position_pct=1.0), "max_position_pct", "1000.00"),
]


@pytest.mark.parametrize("kw,rule,usd", BINDS, ids=[b[1] + str(i) for i, b in enumerate(BINDS)])
def test_each_rule_binds(kw, rule, usd):
    r = size_notional(seed_inputs(**kw))
    assert r.rule == rule
    assert r.notional_usd == D(usd)


def test_no_edge_gives_zero_named_kelly():
    r = size_notional(seed_inputs(win_prob=0.3))
    assert (r.rule, r.notional_usd) == ("kelly", 0)


def test_exhausted_cap_is_zero_never_negative():
    r = size_notional(seed_inputs(total_exposure_usd=D(30000)))
    assert r.rule == "max_total_exposure_pct" and r.notional_usd == 0


def test_correlation_penalty_steps():
    assert [correlation_penalty(c) for c in (0.95, 0.8, 0.79, 0.6, 0.59, 0.4, 0.39, 0.0)] == \
        [0.3, 0.3, 0.6, 0.6, 0.8, 0.8, 1.0, 1.0]
    assert correlation_penalty(None) == 1.0 and correlation_penalty(float("nan")) == 1.0


def test_vol_multiplier_halves_size_when_vol_doubles():
    rng = np.random.default_rng(5)
    rets = np.concatenate([rng.normal(0, 0.01, 400), rng.normal(0, 0.02, 20)])
    close = 100 * np.exp(np.cumsum(rets))
    mult, info = vol_multiplier(close, lookback=20)
    assert 0.35 < mult < 0.7, info          # ≈ 0.01 / 0.02, sampling noise on 20 returns
    calm, _ = vol_multiplier(close[:400], lookback=20)
    assert calm == 1.0 or calm > 0.85       # at its own median: ~1, never above the ceiling of 1
    assert vol_multiplier(close[:30])[0] == 1.0  # too little history: no scaling, said so
    assert "vol_note" in vol_multiplier(close[:30])[1]


def test_aligned_returns_across_bar_intervals():
    """An hourly series and its own daily sample correlate perfectly once aligned on the daily grid."""
    rng = np.random.default_rng(7)
    hourly_close = 100 * np.exp(np.cumsum(rng.normal(0, 0.005, 24 * 80)))
    hourly_ts = np.arange(len(hourly_close)) * 3600.0 + 3600      # close times
    daily_ts, daily_close = hourly_ts[23::24], hourly_close[23::24]
    ra, rb = aligned_returns(hourly_ts, hourly_close, daily_ts, daily_close, 60)
    assert len(ra) == len(rb) == 60
    assert correlation(ra, rb) == pytest.approx(1.0)
    assert correlation(ra[:10], rb[:10], min_overlap=20) is None


def test_the_grid_is_the_series_with_the_wider_bars_even_when_both_have_as_many_bars():
    """history_bars gives every symbol 500 bars: 500 hourly crypto closes against 500 daily equity closes.
    Gridded on the hours, 23 of 24 equity returns are zero and a perfect daily co-movement reads ~0."""
    rng = np.random.default_rng(3)
    end = 1_717_448_400.0
    daily_ts = end - 86_400 * np.arange(500)[::-1]
    daily_close = 500 * np.exp(np.cumsum(rng.normal(0, 0.015, 500)))
    hourly_ts = end - 3_600 * np.arange(500)[::-1]
    hourly_close = daily_close[np.searchsorted(daily_ts, hourly_ts, side="right") - 1]   # the same daily moves
    for a, b in ((hourly_ts, hourly_close), (daily_ts, daily_close)), ((daily_ts, daily_close), (hourly_ts, hourly_close)):
        ra, rb = aligned_returns(*a, *b, 60)
        assert len(ra) == len(rb) == 20                     # the 20 days the hourly history covers
        assert correlation(ra, rb) == pytest.approx(1.0)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(eq=st.integers(1_000, 10_000_000), bp=st.integers(0, 10_000_000),
       p=st.floats(0, 1), b=st.floats(0.1, 10), stop=st.floats(0.001, 0.5),
       pos=st.floats(0.1, 3), asset=st.floats(0.1, 5), total=st.floats(0.1, 25),
       held_asset=st.integers(0, 1_000_000), held_other=st.integers(0, 3_000_000),
       vol=st.floats(0.25, 1), corr=st.sampled_from([0.3, 0.6, 0.8, 1.0]),
       cap=st.none() | st.integers(0, 100_000))
def test_size_is_the_minimum_and_within_every_cap(eq, bp, p, b, stop, pos, asset, total, held_asset,
                                                   held_other, vol, corr, cap):
    x = SizingInputs(D(eq), D(bp), p, b, stop, max_position_pct=pos, max_asset_pct=asset,
                     max_total_exposure_pct=total, asset_exposure_usd=D(held_asset),
                     total_exposure_usd=D(held_asset + held_other), vol_mult=vol, corr_mult=corr,
                     max_notional_usd=None if cap is None else D(cap))
    r = size_notional(x)
    assert r.notional_usd >= 0
    assert r.notional_usd <= max(D(0), D(eq) * D(repr(pos)) / 100)
    assert r.notional_usd <= max(D(0), D(eq) * D(repr(asset)) / 100 - D(held_asset))
    assert r.notional_usd <= max(D(0), D(eq) * D(repr(total)) / 100 - D(held_asset + held_other))
    assert r.notional_usd <= D(bp)
    assert cap is None or r.notional_usd <= cap
    assert r.notional_usd <= min(r.candidates["kelly"], r.candidates["risk_per_trade"])
    assert r.rule in r.candidates
