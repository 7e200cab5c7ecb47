"""The liquidation-cascade hunter's leaner signal checks (issue #24: ``ndarray.searchsorted`` instead of
``np.searchsorted``'s dispatch, the two max-age timedeltas built once per params object) equal the replaced
code (``_funding_signal_reference`` / ``_cascade_signal_reference``, verbatim below): the same Signal or
None, and the same ``wants_cycle``, on real hourly BTC/ETH snapshots of /work/shared/data 2020-2024 (every
hour around each open-interest cascade and funding spike of the replay, and every fifth hour otherwise),
and on edge cases (empty, short, stale, NaN, zero, gapped, list-typed series; other params; a bad max age
still raising)."""
from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

import strategies.liquidation_cascade as lcm
from hydra_engine.data.replay import ReplayMarketData
from hydra_engine.domain import UTC, Signal
from hydra_engine.ports import BarSeries, MarketSnapshot, PointSeries
from strategies.liquidation_cascade import SYMBOLS, LiquidationCascadeHunter


# --------------------------------------------------------------------------- the replaced code, verbatim
def _funding_signal_reference(self, market: MarketSnapshot, symbol: str) -> Signal | None:
    p = self.params
    series = market.point_series("funding_rate", symbol)
    if series is None or not len(series):
        return None
    known_at = datetime.fromtimestamp(int(series.ts[-1]), market.now.tzinfo)
    rate = series.last
    if not math.isfinite(rate) or market.now - known_at > timedelta(hours=p.funding_max_age_hours):
        return None
    if abs(rate) <= p.funding_threshold:
        return None
    crowd = "longs" if rate > 0 else "shorts"
    return Signal(symbol=symbol, score=-math.copysign(min(1.0, abs(rate) / (4 * p.funding_threshold)), rate),
                  confidence=min(0.8, abs(rate) * 500), source="funding_rate", created_at=known_at,
                  half_life=timedelta(hours=8),
                  thesis=f"{crowd} pay {rate * 100:.4f}% per 8h (> {p.funding_threshold * 100:.3f}%): "
                         f"over-levered {crowd}, bias {'down' if rate > 0 else 'up'}")


def _cascade_signal_reference(self, market: MarketSnapshot, symbol: str) -> Signal | None:
    p = self.params
    oi = market.point_series("open_interest", symbol)
    bars = market.bars.get(symbol)
    if oi is None or len(oi) < 2 or bars is None or len(bars) < 2:
        return None
    t_now = int(oi.ts[-1])
    known_at = datetime.fromtimestamp(t_now, market.now.tzinfo)
    # the newest value against the newest one at least an hour older: exactly one hour on the
    # hourly history, one to two hours when a live snapshot follows it; wider gaps give no opinion
    k = int(np.searchsorted(oi.ts, t_now - 3600, side="right")) - 1
    if k < 0 or t_now - int(oi.ts[k]) > 7200 or market.now - known_at > timedelta(hours=p.oi_max_age_hours):
        return None
    prev, last = float(oi.values[k]), float(oi.values[-1])
    if not (prev > 0 and last > 0 and math.isfinite(prev) and math.isfinite(last)):
        return None  # zero, negative or missing open interest is bad data, not a -100 % cascade
    change = last / prev - 1.0
    if change > -p.oi_drop_pct / 100:
        return None
    # the price move over the same span as the open-interest change: the closes of the last bars closed
    # by each observation (the newest bar may already be an hour past the newest OI point)
    closed = bars.ts + bars.interval_s
    i_then, i_now = (int(np.searchsorted(closed, t, side="right")) - 1 for t in (int(oi.ts[k]), t_now))
    if (i_then < 0 or i_now <= i_then or t_now - int(closed[i_now]) > 7200
            or int(oi.ts[k]) - int(closed[i_then]) > 7200):   # bars missing: the move spans other hours
        return None
    price_move = float(bars.close[i_now] / bars.close[i_then] - 1.0)
    if price_move == 0 or not math.isfinite(price_move):
        return None
    direction = 1.0 if price_move > 0 else -1.0
    who = "shorts" if direction > 0 else "longs"
    return Signal(symbol=symbol, score=direction * min(1.0, -change / 0.10),
                  confidence=min(0.9, 0.5 - change * 4), source="oi_cascade", created_at=known_at,
                  half_life=timedelta(hours=2),
                  thesis=f"open interest {change * 100:.1f}% in 1h while price moved {price_move * 100:+.2f}%: "
                         f"{who} being liquidated, ride the move")


def _reference_wants_cycle(s, market) -> bool:
    return any(_funding_signal_reference(s, market, x) or _cascade_signal_reference(s, market, x) for x in SYMBOLS)


def _assert_same(s: LiquidationCascadeHunter, market: MarketSnapshot) -> int:
    fired = 0
    for symbol in SYMBOLS:
        for new, ref in ((s._funding_signal, _funding_signal_reference),
                         (s._cascade_signal, _cascade_signal_reference)):
            got, want = new(market, symbol), ref(s, market, symbol)
            assert got == want, (market.now, symbol, got, want)
            fired += got is not None
    assert s.wants_cycle(market) == _reference_wants_cycle(s, market)
    return fired


def test_signals_equal_the_replaced_code_on_real_hours_2020_2024(shared_data):
    m = ReplayMarketData(shared_data, list(SYMBOLS))
    s = LiquidationCascadeHunter()
    hours = pd.date_range("2020-01-01T00:00Z", "2024-12-31T23:00Z", freq="1h")
    start = int(hours[0].timestamp())
    wanted = set(range(0, len(hours), 5))
    for symbol in SYMBOLS:   # every hour from each hot point (cascade, funding spike) to 3 h after it
        for kind in ("funding_rate", "open_interest"):
            src = m._points.get((kind, symbol))
            assert src is not None, (kind, symbol)
            for t in src.ts[s._hot_points(kind, symbol, src)].tolist():
                h = (int(t) - start) // 3600
                wanted.update(x for x in range(h, h + 4) if 0 <= x < len(hours))
    fired = 0
    for h in sorted(wanted):
        fired += _assert_same(s, m.snapshot(hours[h].to_pydatetime()))
    assert len(wanted) > 8000 and fired > 500


def _snap(now_s: int, oi=None, funding=None, bars=None, as_list=False) -> MarketSnapshot:
    series, bar_map = {}, {}
    conv = (lambda a: list(a)) if as_list else (lambda a: np.asarray(a))
    for symbol in SYMBOLS:
        if oi is not None:
            series[("open_interest", symbol)] = PointSeries("open_interest", symbol, conv(oi[0]), np.asarray(oi[1]))
        if funding is not None:
            series[("funding_rate", symbol)] = PointSeries("funding_rate", symbol, conv(funding[0]),
                                                           np.asarray(funding[1]))
        if bars is not None:
            ts, close = np.asarray(bars[0], dtype=np.int64), np.asarray(bars[1], dtype=float)
            bar_map[symbol] = BarSeries(symbol, 3600, ts, close, close, close, close, np.ones(len(ts)))
    return MarketSnapshot(now=datetime.fromtimestamp(now_s, UTC), bars=bar_map, series=series)


@pytest.mark.parametrize("params", [{}, {"oi_max_age_hours": 0.5, "funding_max_age_hours": 100.0},
                                    {"oi_drop_pct": 1.0, "funding_threshold": 0.0001}])
def test_signals_equal_the_replaced_code_on_edge_cases(params):
    rng = np.random.default_rng(11)
    s = LiquidationCascadeHunter(params)
    t0 = 1_700_000_000 - 1_700_000_000 % 3600
    hours = t0 + 3600 * np.arange(48)
    bar_ts = hours - 3600
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 48)))
    oi_vals = 1e5 * np.exp(np.cumsum(rng.normal(0, 0.03, 48)))
    oi_vals[[10, 20, 30]] *= 0.9                   # cascades
    fund = rng.normal(0, 0.0006, 48)
    cases = []
    for n in (0, 1, 2, 3, 12, 48):
        for lag_s in (0, 1800, 3 * 3600, 20 * 3600):   # fresh, half an hour, stale for OI, stale for both
            cases.append(_snap(int(hours[n - 1]) + lag_s if n else t0, (hours[:n], oi_vals[:n]),
                               (hours[:n], fund[:n]), (bar_ts[:n], close[:n])))
    bad = oi_vals.copy()
    bad[[11, 21, 31]] = [np.nan, 0.0, -5.0]
    gapped = np.delete(hours, [19, 20, 21])
    flat = np.full(48, 100.0)
    for n in (11, 12, 21, 22, 31, 32, 48):   # 11, 21, 31: a cascade is the newest point
        holey_funding = np.where(np.arange(n) % 7, fund[:n], np.nan)
        cases += [_snap(int(hours[n - 1]), (hours[:n], bad[:n]), (hours[:n], holey_funding), (bar_ts[:n], close[:n])),
                  _snap(int(gapped[min(n, len(gapped)) - 1]), (gapped[:n], oi_vals[:n]), None, (bar_ts, close)),
                  _snap(int(hours[n - 1]), (hours[:n], oi_vals[:n]), (hours[:n], fund[:n]), (bar_ts[:n], flat[:n])),
                  _snap(int(hours[n - 1]), (hours[:n], oi_vals[:n]), (hours[:n], fund[:n]), (bar_ts[:5], close[:5])),
                  _snap(int(hours[n - 1]), (hours[:n], oi_vals[:n]), (hours[:n], fund[:n]), (bar_ts[:n], close[:n]),
                        as_list=True),   # list-typed point times: np.searchsorted's own path
                  _snap(int(hours[n - 1]), None, None, None)]
    fired = sum(_assert_same(s, c) for c in cases)
    cascades = sum(s._cascade_signal(c, "BTC/USD") is not None for c in cases if isinstance(c.series.get(
        ("open_interest", "BTC/USD"), PointSeries("", "", np.zeros(0), np.zeros(0))).ts, list))
    assert fired > 5 and cascades >= 1
    s.params = s.Params(**{**params, "oi_max_age_hours": 0.1})   # a new params object: the new max age counts
    for c in cases:
        _assert_same(s, c)


def test_a_bad_max_age_still_raises_where_it_did():
    s = LiquidationCascadeHunter({"oi_max_age_hours": 1e12})
    t = 1_700_000_000 - 1_700_000_000 % 3600
    hours = t + 3600 * np.arange(5)
    snap = _snap(int(hours[-1]), (hours, np.full(5, 1e5)), (hours, np.full(5, 1e-6)), (hours - 3600, np.ones(5)))
    assert s._funding_signal(snap, "BTC/USD") is None      # the funding check never builds the OI age
    with pytest.raises(OverflowError):
        s._cascade_signal(snap, "BTC/USD")
    with pytest.raises(OverflowError):
        _cascade_signal_reference(s, snap, "BTC/USD")
    assert lcm._PROMISED == (LiquidationCascadeHunter.wants_cycle, LiquidationCascadeHunter._funding_signal,
                             LiquidationCascadeHunter._cascade_signal)
