"""The cycle's exact fast paths (issue #21, cycle latency with both models): each is checked against the
computation it replaces, on the shipped real data (Binance perp klines, funding, Bybit open interest) and
the shipped regime classifier, bit for bit."""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from hydra_engine.domain import UTC
from hydra_engine.ml import loop as L
from hydra_engine.perp import stats as perp_stats

ROOT = Path(__file__).resolve().parents[1]
PERPS = ["BTCUSDT", "ETHUSDT"]
START = datetime(2024, 1, 3, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _rule_labeller_after():
    yield
    perp_stats.set_regime_labeller(perp_stats.RuleRegimeLabeller())   # the labeller is process-global


@pytest.fixture(scope="module")
def market():
    from hydra_engine.data.replay import ReplayMarketData
    return ReplayMarketData(ROOT / "data", ["BTC/USD", "SPY", *PERPS], history_bars=500)


def _classifier():
    from hydra_engine.ml.regime_classifier import ClassifierRegimeLabeller
    return ClassifierRegimeLabeller.load(ROOT / "models" / "regime_classifier.json")


def test_xgboost_gives_a_row_in_a_batch_the_bits_it_gets_alone(market):
    from hydra_engine.ml.features import REGIME_FEATURES, regime_features
    clf = _classifier()
    rows = []
    for k in range(60):
        snap = market.snapshot(START + timedelta(hours=37 * k + 5))
        for s in PERPS:
            f = regime_features(snap, s)
            rows.append([f[n] for n in REGIME_FEATURES])
    rng = np.random.default_rng(3)   # and rows off the data: scaled, with holes
    X = np.vstack([np.array(rows, dtype=float), np.array(rows, dtype=float) * rng.uniform(0.5, 2.0, (len(rows), 1))])
    X[rng.random(X.shape) < 0.05] = np.nan
    single = np.vstack([clf.predict_proba(X[i:i + 1]) for i in range(len(X))])
    for n in (2, 3, 48, 65, len(X)):
        assert clf.predict_proba(X[:n]).tobytes() == single[:n].tobytes(), n
    assert len(set(np.argmax(single, axis=1))) >= 2   # the rows are not all one answer


def test_a_deferred_forecast_answers_what_label_answers_and_fills_the_same_cache(market):
    eager, lazy = _classifier(), _classifier()
    entries = []
    for k in range(30):
        snap = market.snapshot(START + timedelta(hours=k, minutes=7 * (k % 3)))
        for s in PERPS:
            want = eager.label(perp_stats.perp_state(snap, s), snap)
            entries.append((lazy.forecast_later(snap, s, lambda s=s, snap=snap: perp_stats.perp_state(snap, s)), want))
            assert set(lazy._cache) == set(eager._cache)
    assert all(e.__class__ is not tuple and e.out is None for e, _ in entries)   # nothing predicted yet
    got = lazy.resolve([e for e, _ in entries])
    assert got == [w for _, w in entries] and all(w[2].startswith("classifier") for _, w in entries)
    # a consumer reading the cache after the batch gets the same answer, without a second prediction
    snap = market.snapshot(START + timedelta(hours=29, minutes=7 * (29 % 3)))
    lazy.predict_proba = None
    assert lazy.label(perp_stats.perp_state(snap, "ETHUSDT"), snap) == entries[-1][1]


def test_the_monitor_with_deferred_predictions_records_what_the_eager_monitor_records(market):
    class Eager:   # the same classifier without forecast_later: the monitor labels at each bar
        def __init__(self, inner):
            self.inner, self.booster = inner, inner.booster

        def label(self, state, snap):
            return self.inner.label(state, snap)

    eager_clf, lazy_clf = Eager(_classifier()), _classifier()
    a = L.ClassifierMonitor(PERPS, labeller_fn=lambda: eager_clf)
    b = L.ClassifierMonitor(PERPS, labeller_fn=lambda: lazy_clf)
    got_a, got_b = [], []
    for h in range(80):
        now = START + timedelta(hours=h)
        ra, rb = {"notes": []}, {"notes": []}
        a(now, market.snapshot(now), ra)
        b(now, market.snapshot(now), rb)
        got_a += ra.get("ml_regime_monitor", [])
        got_b += rb.get("ml_regime_monitor", [])
    # the same records; the deferred forecasts also record their features (a training row, ml/recorded_regime.py)
    assert all("inputs" in r for r in got_b) and not any("inputs" in r for r in got_a)
    assert len(got_a) >= 2 * 50 and got_a == [{k: v for k, v in r.items() if k != "inputs"} for r in got_b]


def _flush_both_ways(market, symbol, times):
    snap = market.snapshot(times[-1] + timedelta(hours=2))
    oi, bars = snap.point_series("open_interest", symbol), snap.bars[symbol]
    taker = snap.point_series("taker_buy_ratio", symbol)
    ts = [int(t.timestamp()) + off for t in times for off in (0, 1, -1, 1800, 3599)]   # on and beside the hour
    return perp_stats._flush_many(oi, bars, taker, ts), [perp_stats._flush(oi, bars, taker, t) for t in ts]


def test_the_batched_flush_proxy_equals_the_hour_by_hour_one_on_real_flushes(shared_data):
    from datetime import date

    from hydra_engine.data.replay import ReplayMarketData
    may = ReplayMarketData(shared_data, ["BTCUSDT"], start=date(2021, 4, 1), end=date(2021, 5, 21))
    times = [datetime(2021, 4, 20, tzinfo=UTC) + timedelta(hours=h) for h in range(30 * 24)]
    fast, slow = _flush_both_ways(may, "BTCUSDT", times)
    assert fast == slow
    assert sum(f != (0.0, 0.0) for f in slow) >= 5   # the May 2021 crash has real flushes: not a vacuous check


def test_the_batched_flush_proxy_equals_the_hour_by_hour_one_on_the_shipped_half_year(market):
    for s in PERPS:
        fast, slow = _flush_both_ways(market, s, [START + timedelta(hours=h) for h in range(400)])
        assert fast == slow


def test_ai_disruption_kept_across_cycles_answers_what_a_fresh_plugin_answers():
    """The plugin keeps each launch's IGV watch while IGV's bars are unchanged: hourly over the claude-3
    shock (shipped data; confirmed 2024-03-05), one long-lived plugin against a fresh one per cycle."""
    import dataclasses

    from hydra_engine.data.event_feeds import build_event_feeds
    from hydra_engine.data.replay import ReplayMarketData
    from hydra_engine.domain import Regime
    from hydra_engine.regime import RegimeReading
    from hydra_engine.strategy import CombinedSignal, DataNeed, StrategyContext
    from strategies.ai_disruption import AiDisruption

    saas = ["IGV", "CRM", "SHOP", "ADBE", "MSFT", "WDAY", "LZ"]
    m = ReplayMarketData(ROOT / "data", saas, event_feeds=build_event_feeds([DataNeed("events", "ai_model_launch")],
                                                                               ROOT / "data"))
    kept = AiDisruption()
    seen = set()
    for h in range(0, 24 * 20, 3):
        now = datetime(2024, 2, 26, tzinfo=UTC) + timedelta(hours=h)
        snap = m.snapshot(now)
        ctx = StrategyContext(now, snap, RegimeReading(Regime.HIGH_VOL, 0.9, "test", now), {"LZ": -3.0, "CRM": 2.0})
        answers = []
        for plugin in (kept, AiDisruption()):
            sigs = plugin.generate_signals(ctx)
            combined = {s.symbol: CombinedSignal(s.symbol, s.score, s.confidence, ({"source": s.source, "thesis": s.thesis},))
                        for s in sigs}
            answers.append((plugin.wants_cycle(snap), [dataclasses.astuple(s) for s in sigs],
                            plugin.live_shock(snap), plugin.propose(ctx, combined)))
            seen |= {s.source for s in sigs}
        assert answers[0] == answers[1], now
    assert {"launch_watch", "ai_shock_impaired"} <= seen   # the span has a watched launch and a live shock


def test_perp_state_helpers_equal_numpy_and_the_definitions_they_replace(market):
    rng = np.random.default_rng(11)
    for n in (1, 2, 3, 7, 30, 90, 91, 500):
        for scale in (1e-6, 1e-4, 1.0, 3e4):
            x = rng.normal(size=n) * scale + rng.normal() * scale
            assert perp_stats._mean(x) == np.mean(x) and perp_stats._std(x) == float(np.std(x)), (n, scale)
            sd = np.abs(x)
            assert float(np.count_nonzero(sd <= sd[-1]) / len(sd)) == float(np.mean(sd <= sd[-1]))
    snap = market.snapshot(START + timedelta(days=40, minutes=13))
    bars, oi = snap.bars["BTCUSDT"], snap.point_series("open_interest", "BTCUSDT")
    closed = bars.ts + bars.interval_s
    t_last = int(closed[-1])
    for t in range(t_last - 30 * 3600, t_last + 4 * 3600, 1800):
        for dt in (-1, 0, 1):
            i = int(np.searchsorted(closed, t + dt, side="right")) - 1   # the definition before
            want = None if i < 0 or t + dt - int(closed[i]) > 7200 else float(bars.close[i])
            assert perp_stats._close_at(bars, t + dt) == want
            k = int(np.searchsorted(oi.ts, t + dt, side="right")) - 1
            v = None if k < 0 or t + dt - int(oi.ts[k]) > 7200 else float(oi.values[k])
            assert perp_stats._value_at(oi, t + dt) == (v if v is not None and v > 0 else None)


def test_the_label_percentile_is_numpys_bit_for_bit():
    from hydra_engine.ml.labels import _percentile
    rng = np.random.default_rng(5)
    for n in (2, 3, 4, 5, 20, 21, 24, 100, 451, 452, 476, 1000):
        for pct in (95.0, 50.0, 5.0, 99.9, 0.0, 100.0, 37.3):
            for kind in range(6):
                x = rng.lognormal(size=n) * 10.0 ** rng.integers(-6, 3)
                if kind == 1:
                    x = np.round(x, 1)                       # ties
                elif kind == 2:
                    x[rng.integers(n)] = np.nan
                elif kind == 3:
                    x[rng.integers(n)] = np.inf
                elif kind == 4:
                    x[:] = x[0]
                elif kind == 5:
                    x = -x
                with np.errstate(invalid="ignore"):   # numpy warns on inf - inf; the answer is what counts
                    want, got = float(np.percentile(x, pct)), _percentile(x, pct)
                assert (np.isnan(want) and np.isnan(got)) or np.float64(want).tobytes() == np.float64(got).tobytes(), \
                    (n, pct, kind, want, got)


def _regime_label_before(market, symbol, start, hours=24):
    """``labels.regime_label`` as it stood before the latency work (29c0181), for comparison."""
    import math

    from hydra_engine.ml import labels as lb
    bars = market.bars.get(symbol)
    if bars is None or len(bars) < 3 * hours:
        return None
    t0 = int(start.timestamp())
    t1 = t0 + hours * 3600
    closed = bars.ts + bars.interval_s
    if closed[-1] < t1:
        return None
    k0 = int(np.searchsorted(closed, t0, side="right")) - 1
    if k0 < 2 * hours:
        return None
    win = np.asarray(bars.close[(closed > t0) & (closed <= t1)], dtype=float)
    if len(win) < hours // 2:
        return None
    r = np.diff(np.log(np.concatenate(([float(bars.close[k0])], win))))
    vol = float(np.std(r) * math.sqrt(365 * 24))
    past = np.diff(np.log(np.asarray(bars.close[:k0 + 1], dtype=float)))
    c1, c2 = np.concatenate(([0.0], np.cumsum(past))), np.concatenate(([0.0], np.cumsum(past * past)))
    m = (c1[hours:] - c1[:-hours]) / hours
    hist = np.sqrt(np.maximum((c2[hours:] - c2[:-hours]) / hours - m * m, 0.0)) * math.sqrt(365 * 24)
    vol95 = float(np.percentile(hist, lb.VOL_PERCENTILE)) if len(hist) >= hours else math.inf
    fs = market.point_series("funding_rate", symbol)
    funding = math.nan
    if fs is not None and len(fs):
        inside = fs.values[(fs.ts > t0) & (fs.ts <= t1)]
        before = fs.values[fs.ts <= t0]
        funding = float(np.mean(inside)) if len(inside) else (float(before[-1]) if len(before) else math.nan)
    oi = market.point_series("open_interest", symbol)
    oi_delta, liq_velocity = math.nan, 0.0
    taker = market.point_series("taker_buy_ratio", symbol)
    if oi is not None and len(oi):
        a, b = lb._oi_at(oi, t0), lb._oi_at(oi, t1)
        if a and b:
            oi_delta = b / a - 1.0
        liq_velocity = max(sum(perp_stats._flush(oi, bars, taker, t0 + h * 3600)) for h in range(1, hours + 1))
    return vol, vol95, funding, oi_delta, liq_velocity, float(np.mean(r)), float(np.sum(r))


def test_regime_label_decides_on_the_values_it_computed_before(market, shared_data, monkeypatch):
    """The label's inputs (volatility, its 95th percentile, funding, OI change, flush velocity, mean and sum
    of returns) are captured from the fast code and compared with the code before, bit for bit."""
    from datetime import date

    from hydra_engine.data.replay import ReplayMarketData
    from hydra_engine.ml import labels as lb
    seen: list = []
    real_percentile = lb._percentile
    monkeypatch.setattr(lb, "_percentile", lambda x, p: seen.append(real_percentile(x, p)) or seen[-1])
    may = ReplayMarketData(shared_data, ["BTCUSDT"], start=date(2021, 3, 20), end=date(2021, 5, 25))
    cases = [(may, "BTCUSDT", datetime(2021, 4, 25, tzinfo=UTC) + timedelta(hours=7 * k)) for k in range(90)]
    cases += [(market, s, START + timedelta(days=30, hours=5 * k)) for s in PERPS for k in range(60)]
    labels = set()
    for m, sym, start in cases:
        snap = m.snapshot(start + timedelta(hours=24 + (start.hour % 3)))
        seen.clear()
        got = lb.regime_label(snap, sym, start)
        want = _regime_label_before(snap, sym, start)
        if want is None:
            assert got is None
            continue
        vol, vol95, funding, oi_delta, liq, mean, trend = want
        assert seen == [vol95], (sym, start)
        labels.add(got)
        # the same decision tree on the values from before must give the same label
        expect = (lb.PerpRegime.CASCADE_RISK if liq > lb.CASCADE_VELOCITY else
                  lb.PerpRegime.SQUEEZE_SHORT if funding > lb.SQUEEZE_FUNDING and oi_delta > lb.SQUEEZE_OI and mean < 0 else
                  lb.PerpRegime.SQUEEZE_LONG if funding < -lb.SQUEEZE_FUNDING and oi_delta > lb.SQUEEZE_OI and mean > 0 else
                  lb.PerpRegime.HIGH_VOLATILITY if vol > vol95 else
                  lb.PerpRegime.TRENDING_UP if trend > lb.TREND_SUM else
                  lb.PerpRegime.TRENDING_DOWN if trend < -lb.TREND_SUM else lb.PerpRegime.RANGING)
        assert got is expect, (sym, start)
    assert len(labels) >= 4   # the cases cover most of the label's branches


def test_the_batched_flush_proxy_equals_the_hour_by_hour_one_on_hostile_open_interest(market):
    """Open interest with drops on and beside the 2 % line, gaps, NaN, zeros, negatives and infinities."""
    from hydra_engine.ports import PointSeries
    snap = market.snapshot(START + timedelta(days=60))
    bars, taker = snap.bars["BTCUSDT"], snap.point_series("taker_buy_ratio", "BTCUSDT")
    rng = np.random.default_rng(9)
    ts = np.sort(rng.choice(bars.ts[-400:] + 3600, size=300, replace=False)).astype(np.int64)
    steps = rng.choice([1.0, 0.98, 0.9801, 0.97999, 0.95, 1.03, 0.5], size=len(ts))
    vals = 1e5 * np.cumprod(steps)
    for bad in (np.nan, 0.0, -5.0, np.inf, 1e-310):
        vals[rng.integers(len(vals), size=6)] = bad
    oi = PointSeries("open_interest", "BTCUSDT", ts, vals)
    hours = [int(x) + off for x in ts for off in (0, 1, 1800, 3600, 5400)]
    fast = perp_stats._flush_many(oi, bars, taker, hours)
    slow = [perp_stats._flush(oi, bars, taker, t) for t in hours]
    bad = [(h, f, s) for h, f, s in zip(hours, fast, slow) if f != s]
    assert not bad, bad[:5]
    assert sum(f != (0.0, 0.0) for f in slow) >= 3   # real flushes among them: not a vacuous check
