"""The cross-asset modifier's fast paths (issue #24) equal what they replaced, on real shared data.

* ``_lag_test``'s p-value through ``scipy.special.stdtr`` against ``scipy.stats.t.sf`` (the replaced call);
* the memoised ``_ny_date`` / ``session_close_s`` against the uncached functions;
* the memoised ``GraphCache.leader_move`` against the uncached computation;

each over every weekly estimate of 2020-2024 (the five-year backtest's span) on /work/shared/data, and the
graph, its every pair x lag test and the modifier's output with all three against the replaced code.
"""
from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import signals.cross_asset as ca
from hydra_engine.data.replay import ReplayMarketData
from hydra_engine.domain import UTC, Regime, RegimeReading, Signal
from hydra_engine.plugin_kinds import SignalContext


def _lag_test_replaced(x, y, k, method):
    """``_lag_test`` as it was before the fast path (scipy.stats.t.sf)."""
    a, b = x[:-k], y[k:]
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 10:
        return math.nan, 1.0, n
    a, b = a[ok], b[ok]
    rho = float(np.corrcoef(a, b)[0, 1])
    if not math.isfinite(rho):
        return math.nan, 1.0, n
    t = rho * math.sqrt((n - 2) / max(1e-12, 1 - rho * rho))
    return rho, float(2 * stats.t.sf(abs(t), n - 2)), n


def _leader_move_replaced(cache, node, lag):
    return ca.GraphCache._leader_move(cache, node, lag)


@pytest.fixture(scope="module")
def weekly(shared_data):
    m = ReplayMarketData(shared_data, ["SPY", "TLT", "GLD", "BTC/USD", "HYG"], data_only=["VIX"])
    return m, [t.to_pydatetime() for t in pd.date_range("2020-01-06T21:00Z", "2024-12-30T21:00Z", freq="7D")]


def test_stdtr_equals_t_sf_on_every_lag_test_of_five_years(weekly, monkeypatch):
    m, times = weekly
    cache = ca.GraphCache(ca.GraphParams())
    pairs = 0
    for now in times:
        cache.refresh(m.snapshot(now))
        rets = cache.rets
        if rets is None or not len(rets):
            continue
        for i in range(rets.shape[1]):
            for j in range(rets.shape[1]):
                if i != j:
                    for k in (1, 2, 3):
                        new = ca._lag_test(rets[:, i], rets[:, j], k, "lagcorr")
                        old = _lag_test_replaced(rets[:, i], rets[:, j], k, "lagcorr")
                        assert new[2] == old[2] and (new[0] == old[0] or math.isnan(new[0]) and math.isnan(old[0]))
                        assert new[1] == old[1], (now, i, j, k, new, old)
                        pairs += 1
    assert pairs > 20_000


def test_memoised_dates_equal_the_functions(shared_data):
    spy = ReplayMarketData(shared_data, ["SPY"]).history("SPY")
    ts = [int(t) for t in spy.ts.tolist()] + [int(t) + 3600 * h for t in spy.ts[-400:].tolist() for h in range(24)]
    for t in ts:
        assert ca._ny_date(t) == ca._ny_date.__wrapped__(t)
        assert ca.session_close_s(t) == ca.session_close_s.__wrapped__(t)
    assert len(set(ca._ny_date(t) for t in spy.ts.tolist())) == len(spy.ts)   # one session per daily bar


def test_graph_and_modifier_equal_the_replaced_code_over_five_years(weekly, monkeypatch):
    """The estimate (edges, every test), each leader's move and the modifier's scaled signals and trace,
    new code against the replaced one, at every weekly session close of 2020-2024."""
    m, times = weekly

    def run(replaced: bool):
        if replaced:
            monkeypatch.setattr(ca, "_lag_test", _lag_test_replaced)
            monkeypatch.setattr(ca, "_lagcorr_tests", lambda r, k: [   # the batched tests: one by one again
                _lag_test_replaced(r[:, i], r[:, j], kk, "lagcorr") for i, j, kk in ca._pairs_lags(r.shape[1], k)])
            monkeypatch.setattr(ca.GraphCache, "leader_move", _leader_move_replaced)
            monkeypatch.setattr(ca, "_ny_date", ca._ny_date.__wrapped__)
            monkeypatch.setattr(ca, "session_close_s", ca.session_close_s.__wrapped__)
        else:
            monkeypatch.undo()
        mod = ca.CrossAssetModifier({"min_effect": 0.0})
        out = []
        for now in times:
            snap = m.snapshot(now)
            sigs = [Signal(symbol=s, score=sc, confidence=0.5, source="probe", created_at=now,
                           half_life=pd.Timedelta(days=1).to_pytimedelta(), thesis="probe")
                    for s in ("SPY", "TLT", "GLD", "HYG", "BTC/USD") for sc in (0.4, -0.4)]
            res = mod.modify(sigs, SignalContext(now, snap, RegimeReading(Regime.UNKNOWN, 0.0, "t", now)))
            g = mod.cache.graph
            moves = {(n, k): mod.cache.leader_move(n, k) for n in mod.params.nodes for k in (1, 2, 3)}
            out.append((sorted(g.edges(data=True)) if g is not None else None,
                        g.graph.get("tests") if g is not None else None, moves,
                        [(s.symbol, s.score, s.confidence) for s in res.signals], list(res.trace)))
        return out

    new, old = run(False), run(True)
    assert len(new) == len(old) > 250
    assert sum(len(o[4]) for o in old) > 100   # the modifier scaled signals, with reasons
    for a, b, now in zip(new, old, times):
        assert a == b, now
