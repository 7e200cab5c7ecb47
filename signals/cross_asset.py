"""Cross-asset regime signal graph (strategy bible, strategy 5): which series lead which, as a graph, and
the signal modifier built on it. The TLT trade is the strategy plugin ``strategies/cross_asset.py``.

**The panel.** Session closes of the graph's nodes (SPY, TLT, GLD, BTC/USD, HYG, VIX by default) on the US
session axis of SPY's daily bars: a daily series by its session date; an intraday one (BTC/USD, hourly)
by its last close at or before the session's 16:00 New York close. A :class:`Panel` only ever receives
snapshots, so it holds nothing after the cycle; it keeps what it has seen (the replay's hourly BTC bars
reach back only ``engine.history_bars`` hours, so BTC's daily history grows as the session runs).

**The estimate** (:func:`estimate_graph`), on the last ``window`` sessions before the cycle (past-only):
for every ordered pair A -> B and lag k = 1..``max_lag`` sessions, the correlation of A's return k
sessions earlier with B's return (``method = "lagcorr"``, a t-test) or statsmodels' Granger F-test of
B on its own k lags plus A's (``method = "granger"``); the p-values of all pair x lag tests are corrected
together with Benjamini-Hochberg (false-discovery rate ``alpha``), and each pair keeps its most
significant lag. The result is a networkx ``DiGraph``: an edge A -> B with ``lag`` (sessions), ``rho``
(the lagged correlation: its sign says whether B follows A or moves against it), ``p``, ``q`` and ``n``.
Hourly lags: only where two nodes have hourly bars (none among the defaults in the replay data: the
equities are daily), so the shipped graph is a daily one.

**The modifier.** For a signal on a node B with leaders (edges A -> B): each leader's newest move
(its return ``lag - 1`` sessions before the last, in its own standard deviations) times ``rho`` is the
move it predicts for B; summed over the leaders, ``e``. With ``|e| >= min_effect``: a signal pointing the
way the leaders predict is scaled up by ``1 + gain*|e|`` (at most ``max_factor``), one pointing against
them down by ``1 / (1 + gain*|e|)`` (at least ``min_factor``). Each scaling is written to the cycle
report with the edges that caused it. The graph is re-estimated once per new session and cached: the
per-cycle cost is a dictionary look-up.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, ClassVar, Mapping, Sequence
from zoneinfo import ZoneInfo

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:   # networkx and scipy.stats are imported where used: plugin discovery imports this
    import networkx as nx   # module for every session, and the two cost ~1.2 s of start-up (issue #24)

from hydra_engine.plugin_kinds import Adjustment, Modified, SignalContext, SignalModifier, scale
from hydra_engine.ports import MarketSnapshot

NODES = ("SPY", "TLT", "GLD", "BTC/USD", "HYG", "VIX")
AXIS = "SPY"
NEW_YORK = ZoneInfo("America/New_York")
SESSION_CLOSE_S = 16 * 3600


class GraphParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    nodes: tuple[str, ...] = NODES
    window: int = Field(250, ge=30, le=2000, description="sessions in the estimation window")
    min_obs: int = Field(120, ge=20, description="fewer aligned returns: the pair is not tested")
    max_lag: int = Field(3, ge=1, le=10, description="lags tested, in sessions")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Benjamini-Hochberg false-discovery rate")
    method: str = Field("lagcorr", pattern="^(lagcorr|granger)$")
    vol_lookback: int = Field(60, ge=10, description="sessions for a leader's standard deviation")
    gain: float = Field(2.0, ge=0)
    min_effect: float = Field(0.05, ge=0, description="|predicted move| below which nothing is scaled")
    max_factor: float = Field(1.5, ge=1.0, le=3.0)
    min_factor: float = Field(0.5, gt=0, le=1.0)


# --------------------------------------------------------------------------- the panel of session closes
@functools.lru_cache(maxsize=65536)   # pure in its epoch second; Panel.update asks every session of the history
def session_close_s(day_ts: int) -> int:
    """Epoch second of 16:00 New York on the session whose daily bar opens at ``day_ts`` (midnight NY)."""
    d = datetime.fromtimestamp(day_ts, NEW_YORK).date()
    return int(datetime(d.year, d.month, d.day, 16, tzinfo=NEW_YORK).timestamp())


@functools.lru_cache(maxsize=65536)
def _ny_date(ts: int) -> int:
    d = datetime.fromtimestamp(ts + 6 * 3600, NEW_YORK).date()   # +6 h: a UTC-midnight stamp stays on its day
    return d.toordinal()


class Panel:
    """Session closes per node, gathered from snapshots only (see the module docstring)."""

    def __init__(self, nodes: Sequence[str]):
        self.nodes = tuple(nodes)
        self.closes: dict[str, dict[int, float]] = {n: {} for n in self.nodes}   # node -> {session ordinal: close}
        self.axis: dict[int, int] = {}     # session ordinal -> its 16:00 NY close (epoch s)
        self.newest = -1
        self._applied: dict[str | None, tuple[np.ndarray, np.ndarray | None]] = {}   # see _unapplied

    def _unapplied(self, key: str | None, ts: np.ndarray, close: np.ndarray | None) -> int:
        """How many leading bars of (``ts``, ``close``) the last update of ``key`` (a node, or None for the
        session axis) already applied, in the same order: the previous arrays' suffix from ``ts[0]`` on
        when it equals the new arrays' prefix value for value (bytes), else 0.

        Applying them again is a no-op (issue #24: each new session re-read every bar of the window): the
        axis takes a day with ``setdefault``; a daily node's ``store[day] = close`` over a sequence whose
        prefix O is a suffix of the sequence applied last leaves, for each day of O, the last close of that
        day in O -- what it already holds -- so skipping O changes nothing. Anything else: all bars again."""
        prev = self._applied.get(key)
        self._applied[key] = (ts.copy(), None if close is None else close.copy())
        if prev is None:
            return 0
        p_ts, p_close = prev
        p = int(np.searchsorted(p_ts, ts[0], side="left"))
        n = len(p_ts) - p
        if n <= 0 or n > len(ts) or not np.array_equal(p_ts[p:], ts[:n]):
            return 0
        if close is not None and (close.dtype != p_close.dtype or len(p_close) != len(p_ts)
                                  or p_close[p:].tobytes() != close[:n].tobytes()):
            return 0
        return n

    def update(self, market: MarketSnapshot) -> bool:
        """Take the snapshot's sessions in; True when a new session arrived."""
        axis = market.bars.get(AXIS)
        if axis is None or not len(axis):
            return False
        newest = int(axis.ts[-1])
        if newest == self.newest:
            return False
        self.newest = newest
        for ts in axis.ts[self._unapplied(None, axis.ts, None):].tolist():
            self.axis.setdefault(_ny_date(int(ts)), session_close_s(int(ts)))
        for node in self.nodes:
            bars = market.bars.get(node)
            if bars is None or not len(bars):
                continue
            store = self.closes[node]
            if bars.interval_s >= 86_400:
                k0 = self._unapplied(node, bars.ts, bars.close)
                for ts, c in zip(bars.ts[k0:].tolist(), bars.close[k0:].tolist()):
                    if math.isfinite(c) and c > 0:
                        store[_ny_date(int(ts))] = c
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

    def returns(self, window: int) -> tuple[list[int], np.ndarray]:
        """(session ordinals, log returns [sessions x nodes], NaN where missing) over the last ``window``."""
        days = sorted(self.axis)[-(window + 1):]
        if days and self.nodes:   # node by node (6 look-up lists, not ~250), the same values in the same places
            levels = np.ascontiguousarray(np.array([[store.get(d, np.nan) for d in days] for store in
                                                    (self.closes[n] for n in self.nodes)], dtype=float).T)
        else:
            levels = np.array([[self.closes[n].get(d, np.nan) for n in self.nodes] for d in days], dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            rets = np.diff(np.log(levels), axis=0)
        return days[1:], rets


# --------------------------------------------------------------------------- estimating the graph
def _bh(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values)."""
    n = len(pvalues)
    if not n:
        return pvalues
    order = np.argsort(pvalues)
    ranked = pvalues[order] * n / np.arange(1, n + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(q, 1.0)
    return out


def _lag_test(x: np.ndarray, y: np.ndarray, k: int, method: str) -> tuple[float, float, int]:
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
    return rho, float(2 * _stdtr(n - 2, -abs(t))), n


def _stdtr(df: int, x: float) -> float:
    """Student's t CDF at ``x``: exactly what ``scipy.stats.t.sf(-x, df)`` computes (its ``_sf`` is
    ``special.stdtr(df, -x)``), without the distribution object's per-call argument machinery (~60 us of
    each lag test; issue #24). ``tests/test_cross_asset_fast.py`` holds the two equal on real returns."""
    from scipy.special import stdtr
    return stdtr(df, x)


def _pairs_lags(m: int, max_lag: int) -> list[tuple[int, int, int]]:
    """(i, j, k) of every ordered pair i -> j of ``m`` nodes and lag k = 1..``max_lag``, in the test order."""
    return [(i, j, k) for i in range(m) for j in range(m) if i != j for k in range(1, max_lag + 1)]


def _lagcorr_tests(rets: np.ndarray, max_lag: int) -> list[tuple[float, float, int]]:
    """``_lag_test(rets[:, i], rets[:, j], k, "lagcorr")`` for every (i, j, k) of :func:`_pairs_lags` over
    the columns of ``rets`` (sessions x nodes), in that order, bit for bit, with a few numpy calls per lag
    instead of one ``np.corrcoef`` per test (issue #24: the ~90 tests of each estimate were most of the
    modifier's cost).

    ``np.corrcoef(a, b)[0, 1]`` is, in numpy's own steps (``cov``, then ``corrcoef``): ``X`` = the (2, n)
    float64 rows a, b; ``X -= X.mean(axis=1)[:, None]``; ``c = np.dot(X, X.T) * (1 / (n - 1))``;
    ``c[0, 1] / sqrt(c[0, 0]) / sqrt(c[1, 1])`` clipped to [-1, 1]. Here the rows of a batch of tests (one
    lag's tests without a missing value; or the tests with missing values, by n) are one (tests, 2, n)
    array, centred with one ``mean`` over its last axis (the same per-row reduction), and each test's
    (2, n) block, C-contiguous like corrcoef's ``X``, goes through the same ``np.dot(X, X.T)`` (the BLAS
    call corrcoef makes); the rest -- the clip, the t statistic and ``stdtr`` (one 'dd->d' loop either
    way) -- is elementwise IEEE arithmetic, identical per element. ``tests/test_cross_asset_lagcorr.py``
    holds this equal to the replaced code on every session's estimate of 2020-2024 and on NaN, inf,
    constant, short and empty windows."""
    from scipy.special import stdtr
    rets = np.asarray(rets, dtype=float)
    m = rets.shape[1] if rets.ndim == 2 else 0
    tests = _pairs_lags(m, max_lag)
    out: list = [(math.nan, 1.0, 0)] * len(tests)
    if not tests:
        return out
    z = np.ascontiguousarray(rets.T)                 # node x session
    fin = np.isfinite(z)
    batches: list[tuple[np.ndarray, np.ndarray]] = []   # (test indices, rows (tests, 2, n))
    holes: dict[int, list] = {}                      # n -> [(test index, a, b)]: tests with missing values
    for k in range(1, max_lag + 1):
        ts = np.array([t for t, (_, _, kk) in enumerate(tests) if kk == k])
        ii = np.array([tests[t][0] for t in ts])
        jj = np.array([tests[t][1] for t in ts])
        width = max(len(rets) - k, 0)                # len(x[:-k]) == len(y[k:])
        ok = fin[ii, :width] & fin[jj, k:]
        ns = ok.sum(axis=1).tolist()
        for t, n in zip(ts.tolist(), ns):
            out[t] = (math.nan, 1.0, n)
        if width < 10:
            continue
        full = np.array([n == width for n in ns])
        if full.any():
            rows = np.empty((int(full.sum()), 2, width))
            rows[:, 0] = z[ii[full], :width]
            rows[:, 1] = z[jj[full], k:]
            batches.append((ts[full], rows))
        for g in np.flatnonzero(~full).tolist():
            if ns[g] >= 10:
                keep = ok[g]
                holes.setdefault(ns[g], []).append((int(ts[g]), z[ii[g], :width][keep], z[jj[g], k:][keep]))
    for n, group in holes.items():
        rows = np.empty((len(group), 2, n))
        for g, (_, a, b) in enumerate(group):
            rows[g, 0] = a
            rows[g, 1] = b
        batches.append((np.array([t for t, _, _ in group]), rows))
    for ts, rows in batches:
        n = rows.shape[2]
        rows -= rows.mean(axis=2)[:, :, None]
        c = np.array([np.dot(x, x.T) for x in rows])   # each x: (2, n) C-contiguous, as in np.cov
        c *= np.true_divide(1, n - 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = c[:, 0, 1] / np.sqrt(c[:, 0, 0]) / np.sqrt(c[:, 1, 1])
        np.clip(rho, -1, 1, out=rho)
        good = np.isfinite(rho)
        r = rho[good]
        t_stat = r * np.sqrt((n - 2) / np.maximum(1e-12, 1 - r * r))
        pv = 2 * stdtr(n - 2, -np.abs(t_stat))
        for t, rr, pp in zip(ts[good].tolist(), r.tolist(), pv.tolist()):
            out[t] = (rr, pp, n)
    return out


def estimate_graph(rets: np.ndarray, nodes: Sequence[str], p: GraphParams, *, as_of: str = "") -> nx.DiGraph:
    """The lead-lag graph of ``rets`` (sessions x nodes), see the module docstring."""
    import networkx as nx
    g = nx.DiGraph(as_of=as_of, method=p.method, window=len(rets), alpha=p.alpha)
    g.add_nodes_from(nodes)
    tests = []
    if (p.method == "lagcorr" and isinstance(rets, np.ndarray) and rets.ndim == 2 and rets.shape[1] == len(nodes)
            and rets.dtype.kind in "fiu"):   # anything else: the per-test loop, as before
        # every pair x lag test at once, bit for bit _lag_test's (see _lagcorr_tests)
        for (i, j, k), (rho, pv, n) in zip(_pairs_lags(len(nodes), p.max_lag), _lagcorr_tests(rets, p.max_lag)):
            if n >= p.min_obs and math.isfinite(rho):
                tests.append((nodes[i], nodes[j], k, rho, pv, n))
    else:
        for i, j, k in _pairs_lags(len(nodes), p.max_lag):
            rho, pv, n = _lag_test(rets[:, i], rets[:, j], k, p.method)
            if n >= p.min_obs and math.isfinite(rho):
                tests.append((nodes[i], nodes[j], k, rho, pv, n))
    if not tests:
        return g
    q = _bh(np.array([t[4] for t in tests]))
    g.graph["tests"] = [(a, b, k, round(rho, 6), pv, float(qv), n) for (a, b, k, rho, pv, n), qv in zip(tests, q)]
    for (a, b, k, rho, pv, n), qv in sorted(zip(tests, q), key=lambda e: e[1]):
        if qv <= p.alpha and not g.has_edge(a, b):   # most significant lag first
            g.add_edge(a, b, lag=k, rho=round(rho, 4), p=float(pv), q=float(qv), n=n)
    return g


def describe_graph(g: nx.DiGraph) -> list[str]:
    lines = [f"cross-asset graph as of {g.graph.get('as_of', '?')} ({g.graph.get('method')}, "
             f"{g.graph.get('window')} sessions, BH alpha {g.graph.get('alpha')}): {g.number_of_nodes()} nodes, "
             f"{g.number_of_edges()} edges"]
    for a, b, d in sorted(g.edges(data=True), key=lambda e: e[2]["q"]):
        lines.append(f"  {a:>8} -> {b:<8} lag {d['lag']}d  rho {d['rho']:+.3f}  q {d['q']:.4f}  n {d['n']}")
    return lines


def draw_graph(g: nx.DiGraph, path) -> None:
    """A PNG of the graph: nodes, edges labelled with lag and rho (green: follows, red: moves against)."""
    import matplotlib
    import networkx as nx
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 6))
    pos = nx.circular_layout(g)
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color="#dde6f2", node_size=1800)
    nx.draw_networkx_labels(g, pos, ax=ax, font_size=10)
    colors = ["#2a7" if d["rho"] > 0 else "#c33" for _, _, d in g.edges(data=True)]
    widths = [1 + 12 * abs(d["rho"]) for _, _, d in g.edges(data=True)]
    nx.draw_networkx_edges(g, pos, ax=ax, edge_color=colors, width=widths, arrows=True, arrowsize=18,
                           connectionstyle="arc3,rad=0.12", node_size=1800)
    nx.draw_networkx_edge_labels(g, pos, ax=ax, font_size=8, label_pos=0.35,
                                 edge_labels={(a, b): f"{d['lag']}d {d['rho']:+.2f}" for a, b, d in g.edges(data=True)})
    ax.set_title(f"cross-asset lead-lag graph as of {g.graph.get('as_of', '')}")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class GraphCache:
    """The panel and the graph of the newest session (re-estimated once per session, off the hot path)."""

    params: GraphParams
    panel: Panel = None
    graph: nx.DiGraph | None = None
    days: list[int] = field(default_factory=list)
    rets: np.ndarray | None = None

    def __post_init__(self):
        self.panel = Panel(self.params.nodes)
        # the estimate's libraries load with the cache, i.e. when a session builds the modifier (start-up),
        # not inside its first cycle's estimate; plugin discovery alone imports neither
        import networkx  # noqa: F401
        from scipy import stats  # noqa: F401

    def refresh(self, market: MarketSnapshot) -> nx.DiGraph | None:
        if self.panel.update(market) or self.graph is None and self.panel.axis:
            self.days, self.rets = self.panel.returns(self.params.window)
            as_of = datetime.fromordinal(self.days[-1]).date().isoformat() if self.days else ""
            self.graph = estimate_graph(self.rets, self.params.nodes, self.params, as_of=as_of) if len(self.rets) else None
        return self.graph

    def leader_move(self, node: str, lag: int) -> float | None:
        """The leader's return ``lag - 1`` sessions before the newest, in its standard deviations (once per
        (node, lag) and estimate: a pure function of ``rets``, which changes only with a new session)."""
        memo = self.__dict__.get("_moves")
        if memo is None or memo[0] is not self.rets:   # a new estimate (or rets set from outside)
            memo = self._moves = (self.rets, {})
        moves = memo[1]
        key = (node, lag)
        if key not in moves:
            moves[key] = self._leader_move(node, lag)
        return moves[key]

    def _leader_move(self, node: str, lag: int) -> float | None:
        if self.rets is None or not len(self.rets):
            return None
        i = self.params.nodes.index(node)
        col = self.rets[:, i]
        k = len(col) - lag
        if k < 0 or not math.isfinite(col[k]):
            return None
        hist = col[max(0, k - self.params.vol_lookback):k]
        hist = hist[np.isfinite(hist)]
        sd = float(np.std(hist, ddof=1)) if len(hist) > 5 else math.nan
        return float(col[k]) / sd if math.isfinite(sd) and sd > 0 else None

    def predicted(self, follower: str) -> tuple[float, list[str]]:
        """(e, the edges' descriptions): the move the leaders predict for ``follower`` (once per follower and
        estimate: a pure function of ``graph`` and ``rets``, which ``refresh`` replaces -- never edits -- with
        a new session; issue #24: the same edges were described again every cycle)."""
        memo = self.__dict__.get("_predicted")
        if memo is None or memo[0] is not self.graph or memo[1] is not self.rets:
            memo = self._predicted = (self.graph, self.rets, {})
        hit = memo[2].get(follower)
        if hit is None:
            hit = memo[2][follower] = self._predicted_now(follower)
        return hit[0], list(hit[1])

    def _predicted_now(self, follower: str) -> tuple[float, list[str]]:
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


def utc_day(ordinal: int) -> datetime:
    d = datetime.fromordinal(ordinal)
    return d.replace(tzinfo=timezone.utc)


# --------------------------------------------------------------------------- the modifier plugin
class CrossAssetModifier(SignalModifier):
    """Scales signals on a graph node by what its leaders just did (module docstring)."""

    name: ClassVar[str] = "cross_asset"
    interface_version: ClassVar[int] = 1

    def __init__(self, params: Mapping | None = None):
        self.params = GraphParams(**dict(params or {}))
        self.cache = GraphCache(self.params)

    def modify(self, signals, ctx: SignalContext) -> Modified:
        p = self.params
        if not any(s.symbol in p.nodes for s in signals):
            return Modified(tuple(signals))
        self.cache.refresh(ctx.market)
        out, trace = [], []
        for s in signals:
            if s.symbol not in p.nodes or s.score == 0:
                out.append(s)
                continue
            e, why = self.cache.predicted(s.symbol)
            if abs(e) < p.min_effect or not why:
                out.append(s)
                continue
            agree = (e > 0) == (s.score > 0)
            factor = min(p.max_factor, 1 + p.gain * abs(e)) if agree else max(p.min_factor, 1 / (1 + p.gain * abs(e)))
            out.append(scale(s, factor))
            trace.append(Adjustment(s.symbol, s.source, round(factor, 4),
                                    f"leaders predict {s.symbol} {'up' if e > 0 else 'down'} ({e:+.3f}), "
                                    f"{'with' if agree else 'against'} the {'long' if s.score > 0 else 'short'} "
                                    f"signal: " + "; ".join(why)))
        return Modified(tuple(out), tuple(trace))


# --------------------------------------------------------------------------- the risk-off rule (the TLT trade)
@dataclass(frozen=True)
class RiskOff:
    on: bool
    z: dict
    reason: str


def risk_off(closes: Mapping[str, np.ndarray], *, lookback: int = 3, vol_lookback: int = 60,
             hyg_z: float = -1.0, spy_z: float = -1.0, vix_z: float = 1.0) -> RiskOff:
    """Risk-off is confirmed at the newest close when, over the last ``lookback`` sessions, credit weakens
    (HYG's log move <= ``hyg_z`` of its own sd x sqrt(lookback)), equities fall (SPY <= ``spy_z``) and
    volatility rises (VIX's log move >= ``vix_z``); the sds over the ``vol_lookback`` sessions before.
    ``closes``: each of HYG, SPY, VIX's session closes, oldest first, on one session axis."""
    z = {}
    for sym in ("HYG", "SPY", "VIX"):
        c = np.asarray(closes.get(sym, ()), dtype=float)
        if len(c) < vol_lookback + lookback + 1 or not np.isfinite(c[-(vol_lookback + lookback + 1):]).all():
            return RiskOff(False, z, f"{sym}: fewer than {vol_lookback + lookback + 1} sessions")
        r = np.diff(np.log(c[-(vol_lookback + lookback + 1):]))
        sd = float(np.std(r[:-lookback], ddof=1))
        z[sym] = float(np.sum(r[-lookback:]) / (sd * math.sqrt(lookback))) if sd > 0 else 0.0
    on = z["HYG"] <= hyg_z and z["SPY"] <= spy_z and z["VIX"] >= vix_z
    reason = (f"{lookback}-session moves: HYG {z['HYG']:+.2f} sd (<= {hyg_z:g}), SPY {z['SPY']:+.2f} sd (<= {spy_z:g}), "
              f"VIX {z['VIX']:+.2f} sd (>= {vix_z:g})")
    return RiskOff(on, z, ("risk-off confirmed: " if on else "no risk-off: ") + reason)


def aligned_closes(market: MarketSnapshot, symbols: Sequence[str], n: int) -> dict[str, np.ndarray] | None:
    """The last ``n`` session closes of ``symbols`` on SPY's session axis (daily bars, matched by New York
    date), or None when one is missing."""
    axis = market.bars.get(AXIS)
    if axis is None or len(axis) < n:
        return None
    days = [_ny_date(int(t)) for t in axis.ts[-n:].tolist()]
    out = {}
    for sym in symbols:
        bars = market.bars.get(sym)
        if bars is None or not len(bars):
            return None
        if sym == AXIS:
            out[sym] = np.asarray(axis.close[-n:], dtype=float)
            continue
        m = dict(zip((_ny_date(int(t)) for t in bars.ts[-(n + 10):].tolist()), bars.close[-(n + 10):].tolist()))
        out[sym] = np.array([m.get(d, np.nan) for d in days], dtype=float)
    return out
