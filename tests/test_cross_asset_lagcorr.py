"""The cross-asset graph's batched lag tests and incremental panel equal the code they replaced (issue #24).

* ``_lagcorr_tests`` (every pair x lag correlation test of an estimate at once) against ``_lag_test`` as
  it was (one ``np.corrcoef`` per test, kept verbatim below as ``_lag_test_reference``), and
  ``estimate_graph`` against its replaced per-test loop (``_estimate_graph_reference``): rho, p and n of
  every test, the graph's edges and its ``tests`` list, bit for bit;
* ``Panel.update`` (re-applies only bars the previous update did not) against the replaced update
  (``_update_reference``, every bar of the window each new session): the panel's dictionaries, in order;

on every session of 2020-2024 (the five-year backtest's span) of /work/shared/data, and on seeded edge
cases: NaN patterns that give every pair its own n, constant and all-NaN columns, inf, perfect
correlation, windows shorter than 10 returns, empty windows; revised, shifted, shrunk and NaN bars.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import signals.cross_asset as ca
from hydra_engine.data.replay import ReplayMarketData
from hydra_engine.ports import BarSeries, MarketSnapshot


# --------------------------------------------------------------------------- the replaced code, verbatim
def _lag_test_reference(x: np.ndarray, y: np.ndarray, k: int, method: str) -> tuple[float, float, int]:
    """(rho, p, n) of x leading y by k sessions."""
    a, b = x[:-k], y[k:]
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 10:
        return math.nan, 1.0, n
    a, b = a[ok], b[ok]
    rho = float(np.corrcoef(a, b)[0, 1])
    if not math.isfinite(rho):
        return math.nan, 1.0, n
    if method == "granger":
        from statsmodels.tsa.stattools import grangercausalitytests
        both = np.column_stack([y, x])
        both = both[np.isfinite(both).all(axis=1)]
        res = grangercausalitytests(both, maxlag=[k])
        return rho, float(res[k][0]["ssr_ftest"][1]), n
    t = rho * math.sqrt((n - 2) / max(1e-12, 1 - rho * rho))
    return rho, float(2 * ca._stdtr(n - 2, -abs(t))), n


def _estimate_graph_reference(rets, nodes, p, *, as_of=""):
    """The lead-lag graph of ``rets`` (sessions x nodes), see the module docstring."""
    import networkx as nx
    g = nx.DiGraph(as_of=as_of, method=p.method, window=len(rets), alpha=p.alpha)
    g.add_nodes_from(nodes)
    tests = []
    for i, a in enumerate(nodes):
        for j, b in enumerate(nodes):
            if i == j:
                continue
            for k in range(1, p.max_lag + 1):
                rho, pv, n = _lag_test_reference(rets[:, i], rets[:, j], k, p.method)
                if n >= p.min_obs and math.isfinite(rho):
                    tests.append((a, b, k, rho, pv, n))
    if not tests:
        return g
    q = ca._bh(np.array([t[4] for t in tests]))
    g.graph["tests"] = [(a, b, k, round(rho, 6), pv, float(qv), n) for (a, b, k, rho, pv, n), qv in zip(tests, q)]
    for (a, b, k, rho, pv, n), qv in sorted(zip(tests, q), key=lambda e: e[1]):
        if qv <= p.alpha and not g.has_edge(a, b):   # most significant lag first
            g.add_edge(a, b, lag=k, rho=round(rho, 4), p=float(pv), q=float(qv), n=n)
    return g


def _update_reference(self, market: MarketSnapshot) -> bool:
    """Take the snapshot's sessions in; True when a new session arrived."""
    axis = market.bars.get(ca.AXIS)
    if axis is None or not len(axis):
        return False
    newest = int(axis.ts[-1])
    if newest == self.newest:
        return False
    self.newest = newest
    for ts in axis.ts[-(len(axis)):].tolist():
        self.axis.setdefault(ca._ny_date(int(ts)), ca.session_close_s(int(ts)))
    for node in self.nodes:
        bars = market.bars.get(node)
        if bars is None or not len(bars):
            continue
        store = self.closes[node]
        if bars.interval_s >= 86_400:
            for ts, c in zip(bars.ts.tolist(), bars.close.tolist()):
                if math.isfinite(c) and c > 0:
                    store[ca._ny_date(int(ts))] = c
        else:   # intraday: the last close at or before each session's 16:00 New York close
            closed = bars.ts + bars.interval_s
            first = int(closed[0])
            for day, close_s in self.axis.items():
                if close_s < first or day in store:
                    continue
                k = int(np.searchsorted(closed, close_s, side="right")) - 1
                if k >= 0 and close_s - int(closed[k]) <= 3 * 3600:
                    store[day] = float(bars.close[k])
    return True


def _predicted_reference(self, follower: str) -> tuple[float, list[str]]:
    """(e, the edges' descriptions): the move the leaders predict for ``follower``."""
    g = self.graph
    if g is None or follower not in g:
        return 0.0, []
    total, why = 0.0, []
    for leader, _, d in g.in_edges(follower, data=True):
        z = self.leader_move(leader, d["lag"])
        if z is None:
            continue
        total += d["rho"] * z
        why.append(f"{leader}->{follower} lag {d['lag']}d rho {d['rho']:+.3f} (q {d['q']:.3g}): {leader} moved "
                   f"{z:+.2f} sd")
    return total, why


def _returns_reference(self, window: int) -> tuple[list[int], np.ndarray]:
    """(session ordinals, log returns [sessions x nodes], NaN where missing) over the last ``window``."""
    days = sorted(self.axis)[-(window + 1):]
    levels = np.array([[self.closes[n].get(d, np.nan) for n in self.nodes] for d in days], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        rets = np.diff(np.log(levels), axis=0)
    return days[1:], rets


# --------------------------------------------------------------------------- helpers
def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _assert_tests_equal(rets: np.ndarray, max_lag: int) -> int:
    m = rets.shape[1]
    new = ca._lagcorr_tests(rets, max_lag)
    old = [_lag_test_reference(rets[:, i], rets[:, j], k, "lagcorr") for i, j, k in ca._pairs_lags(m, max_lag)]
    assert len(new) == len(old) == m * (m - 1) * max_lag
    for (i, j, k), a, b in zip(ca._pairs_lags(m, max_lag), new, old):
        assert a[2] == b[2] and _same(a[0], b[0]) and a[1] == b[1], ((i, j, k), a, b)
    return sum(math.isfinite(a[0]) for a in new)


def _assert_graphs_equal(new, old) -> None:
    assert new.graph == old.graph
    assert list(new.nodes) == list(old.nodes)
    assert list(new.edges(data=True)) == list(old.edges(data=True))


def _panel_state(panel: ca.Panel):
    return (panel.newest, list(panel.axis.items()), {n: list(d.items()) for n, d in panel.closes.items()})


# --------------------------------------------------------------------------- real data, every session
@pytest.fixture(scope="module")
def sessions(shared_data):
    """Each session's snapshot 2020-2024 (21:00 UTC, every calendar day: weekends bring no new session)."""
    m = ReplayMarketData(shared_data, ["SPY", "TLT", "GLD", "BTC/USD", "HYG"], data_only=["VIX"])
    return m, [t.to_pydatetime() for t in pd.date_range("2020-01-01T21:00Z", "2024-12-31T21:00Z", freq="1D")]


def test_panel_and_every_estimate_equal_the_replaced_code_2020_2024(sessions, monkeypatch):
    """Panel after every snapshot, new update against the replaced one (dictionaries with their order);
    then the session's lag tests (every fifth session: the replaced tests cost ~3 ms an estimate) and its
    graph (every tenth, offset) against the replaced code."""
    m, times = sessions
    skipped = _counting(monkeypatch)
    p = ca.GraphParams()
    new, old = ca.Panel(p.nodes), ca.Panel(p.nodes)
    estimates = finite = edges = 0
    for now in times:
        snap = m.snapshot(now)
        fresh = new.update(snap)
        assert fresh == _update_reference(old, snap)
        assert _panel_state(new) == _panel_state(old), now
        if not fresh:
            continue
        days, rets = new.returns(p.window)
        ref_days, ref_rets = _returns_reference(old, p.window)
        assert days == ref_days and rets.tobytes() == ref_rets.tobytes() and rets.shape == ref_rets.shape
        assert rets.flags.c_contiguous and rets.dtype == ref_rets.dtype
        if estimates % 5 == 0:
            finite += _assert_tests_equal(rets, p.max_lag)
        if estimates % 10 == 1:
            g_new = ca.estimate_graph(rets, p.nodes, p, as_of=str(days[-1]))
            _assert_graphs_equal(g_new, _estimate_graph_reference(rets, p.nodes, p, as_of=str(days[-1])))
            edges += g_new.number_of_edges()
        estimates += 1
    assert estimates > 1200 and finite > 18_000 and edges > 100   # the span was really tested
    assert sum(k > 400 for k in skipped) > 5000                   # and the skip with it
    assert sum(1 for d in new.closes["BTC/USD"]) > 1000              # the intraday node filled as well


def test_graph_cache_refresh_over_hourly_cycles_equals_the_replaced_update(sessions, monkeypatch):
    """Hourly snapshots (as the backtest asks: most bring no new session) through two GraphCaches, one
    with the replaced Panel.update, over two months of 2020 (the kill-switch months)."""
    m, _ = sessions
    hours = [t.to_pydatetime() for t in pd.date_range("2020-02-01T00:00Z", "2020-04-01T00:00Z", freq="1h")]
    new = ca.GraphCache(ca.GraphParams())
    old = ca.GraphCache(ca.GraphParams())
    sessions_seen, edges = set(), 0
    for now in hours:
        snap = m.snapshot(now)
        g_new = new.refresh(snap)
        with monkeypatch.context() as mp:
            mp.setattr(ca.Panel, "update", _update_reference)
            mp.setattr(ca, "_lagcorr_tests", lambda r, k: [_lag_test_reference(r[:, i], r[:, j], kk, "lagcorr")
                                                           for i, j, kk in ca._pairs_lags(r.shape[1], k)])
            g_old = old.refresh(snap)
        assert _panel_state(new.panel) == _panel_state(old.panel)
        assert new.days == old.days and new.rets.tobytes() == old.rets.tobytes()
        _assert_graphs_equal(g_new, g_old)
        sessions_seen.add(new.panel.newest)
        for node in new.params.nodes + ("ETH/USD",):   # the memoised prediction, asked every cycle
            got = new.predicted(node)
            assert got == _predicted_reference(new, node), (now, node)
            got[1].append("a caller's edit")             # never reaches the memo
            assert new.predicted(node) == _predicted_reference(new, node)
            edges += bool(got[0])
    assert len(sessions_seen) > 35 and len(hours) > 1400 and edges > 1000


# --------------------------------------------------------------------------- edge cases (seeded)
@pytest.mark.parametrize("n_rows", (0, 1, 3, 9, 10, 11, 12, 13, 40, 251, 397))
def test_lag_tests_equal_the_replaced_code_on_edge_cases(n_rows):
    rng = np.random.default_rng(n_rows)
    cases = []
    base = rng.normal(0, 0.01, size=(max(n_rows, 1), 6))[:n_rows]
    cases.append(base)
    holes = base.copy()
    holes[rng.random(holes.shape) < 0.15] = np.nan          # every pair gets its own mask, so its own n
    cases.append(holes)
    odd = base.copy()
    if n_rows:
        odd[:, 1] = 0.003                                    # a constant column: rho NaN (0/0)
        odd[:, 2] = np.nan                                   # a column with no data
        odd[: n_rows // 2, 3] = np.inf                       # inf is not finite: masked out
        odd[:, 4] = 2.5 * np.roll(odd[:, 0], 1)              # rho 1 (clipped), t capped by 1e-12
        odd[:, 5] = -odd[:, 0]                               # rho -1
    cases.append(odd)
    cases.append(np.round(base * 1e4) / 1e4)                 # ties and repeated values
    cases.append(base[:, :2])                                # two nodes
    cases.append(base[:, :1])                                # one node: no pairs
    for rets in cases:
        for max_lag in (1, 3, 10):
            _assert_tests_equal(rets, max_lag)
            nodes = tuple(f"N{i}" for i in range(rets.shape[1]))
            p = ca.GraphParams(nodes=nodes, min_obs=20, max_lag=max_lag)
            _assert_graphs_equal(ca.estimate_graph(rets, nodes, p, as_of="x"),
                                 _estimate_graph_reference(rets, nodes, p, as_of="x"))


def test_lag_tests_on_an_empty_window():
    out = ca._lagcorr_tests(np.empty((0, 6)), 3)
    assert len(out) == 90 and all(math.isnan(r) and pv == 1.0 and n == 0 for r, pv, n in out)
    assert _assert_tests_equal(np.empty((0, 6)), 3) == 0


def _bars(symbol: str, ts, close, interval_s: int = 86_400) -> BarSeries:
    ts = np.asarray(ts, dtype=np.int64)
    close = np.asarray(close, dtype=float)
    return BarSeries(symbol, interval_s, ts, close, close, close, close, np.ones(len(ts)))


def _counting(monkeypatch) -> list[int]:
    """Record what each ``Panel._unapplied`` call returned (0: every bar applied again)."""
    seen: list[int] = []
    real = ca.Panel._unapplied

    def unapplied(self, key, ts, close):
        seen.append(real(self, key, ts, close))
        return seen[-1]
    monkeypatch.setattr(ca.Panel, "_unapplied", unapplied)
    return seen


def test_panel_update_equals_the_replaced_code_on_revised_shifted_and_bad_bars(monkeypatch):
    """Snapshots whose windows overlap, shift back, shrink, revise a close inside the overlap, carry NaN,
    zero or duplicate-day bars, change dtype, or lack a node: the same panel as the replaced update."""
    rng = np.random.default_rng(7)
    day0 = 1_577_941_200   # 2020-01-02 05:00 UTC (midnight New York)
    days = day0 + 86_400 * np.arange(120)
    closes = {n: 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 120))) for n in ca.NODES}
    hours = day0 + 3600 * np.arange(120 * 24)
    btc = 9000 * np.exp(np.cumsum(rng.normal(0, 0.002, len(hours))))

    def snap(lo, hi, revise=None, drop=(), dtype=float, dup=False):
        bars = {}
        for n in ca.NODES:
            if n in drop:
                continue
            if n == "BTC/USD":
                h0, h1 = lo * 24, hi * 24
                bars[n] = _bars(n, hours[h0:h1], btc[h0:h1], 3600)
                continue
            c = closes[n][lo:hi].astype(dtype).copy()
            t = days[lo:hi].copy()
            if revise is not None and n in revise:
                c[revise[n]] = c[revise[n]] * 1.01
            if dup and len(t) > 3:
                t[-2] = t[-3] + 3600                    # two bars on one New York day: the later one wins
            bars[n] = BarSeries(n, 86_400, t, c, c, c, c, np.ones(len(t)))
        return MarketSnapshot(now=None, bars=bars)

    closes["TLT"][[5, 30, 31, 77]] = [np.nan, 0.0, -1.0, np.inf]
    steps = [snap(0, 20), snap(0, 20), snap(1, 21), snap(2, 22, revise={"GLD": 10}), snap(3, 23),
             snap(10, 40), snap(5, 41), snap(20, 45, drop=("HYG",)), snap(21, 46), snap(22, 47, dup=True),
             snap(23, 48), snap(24, 49, dtype=np.float32), snap(25, 50), snap(30, 52, revise={"SPY": -1}),
             snap(31, 53), snap(31, 33), snap(60, 90), snap(61, 91, drop=("BTC/USD",)), snap(62, 92),
             snap(63, 93, revise={"VIX": 0, "TLT": 5}), *(snap(k, k + 25) for k in range(64, 95))]
    skipped = _counting(monkeypatch)
    new, old = ca.Panel(ca.NODES), ca.Panel(ca.NODES)
    for window in (1, 5, 250):   # nothing seen yet: no sessions
        assert [x.tolist() if isinstance(x, np.ndarray) else x for x in new.returns(window)] == \
            [x.tolist() if isinstance(x, np.ndarray) else x for x in _returns_reference(old, window)]
        assert new.returns(window)[1].shape == _returns_reference(old, window)[1].shape
    for s in steps:
        assert new.update(s) == _update_reference(old, s)
        assert _panel_state(new) == _panel_state(old)
        for window in (1, 5, 30, 250):
            (d_new, r_new), (d_old, r_old) = new.returns(window), _returns_reference(old, window)
            assert d_new == d_old and r_new.shape == r_old.shape and r_new.tobytes() == r_old.tobytes()
    assert len(new.axis) > 100 and len(new.closes["BTC/USD"]) > 50
    assert skipped.count(0) > 12 and sum(k > 0 for k in skipped) > 100   # both ways were taken


def test_estimate_graph_on_other_dtypes_and_shapes_equals_the_replaced_code():
    """float32 and integer returns take the batched tests (converted to float64 as corrcoef does); a
    ``rets`` with more columns than nodes the per-test loop, as before; object returns still raise."""
    rng = np.random.default_rng(5)
    base = rng.normal(0, 0.01, size=(200, 4))
    base[:, 1] = 0.6 * np.roll(base[:, 0], 1) + 0.4 * base[:, 1]   # A leads B by one session: an edge
    nodes = ("A", "B", "C", "D")
    p = ca.GraphParams(nodes=nodes, min_obs=20)
    edges = 0
    for rets, names in ((base.astype(np.float32), nodes), ((base * 1e4).astype(np.int64), nodes),
                        (base, nodes[:3])):
        g = ca.estimate_graph(rets, names, p)
        _assert_graphs_equal(g, _estimate_graph_reference(rets, names, p))
        edges += g.number_of_edges()
    assert edges >= 3
    for f in (ca.estimate_graph, _estimate_graph_reference):
        with pytest.raises(TypeError):
            f(base.astype(object), nodes, p)
