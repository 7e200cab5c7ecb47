"""Performance metrics for a session: pure functions on pandas/numpy, plus :func:`compute_all`.

Conventions (why they are what they are):

* **Daily returns.** HYDRA cycles at any frequency, but risk-adjusted ratios are only comparable on
  one clock, so an equity curve becomes daily returns from the *last equity of each UTC day*.
  Days without any observation are dropped, not forward-filled: we never invent a zero-return day.
  The curve's first point is the opening capital, so the first day's return is measured from it —
  unless that day holds nothing but the opening point, in which case it carries no return (a plain
  close-per-day series therefore yields exactly ``close.pct_change().dropna()``).
* **Annualisation** is a parameter, ``periods_per_year``. Left out, it follows the book: 365 when the
  session's symbols include crypto or the curve has returns on weekend days (crypto cycles every calendar
  day, even in a span without a weekend), 252 when it has returns on exchange days only (an equity-only
  book) -- 365 there would read ~257 returns a year as 1.4 years' worth.
* **The return metrics are empyrical-reloaded's** (``empyrical.cum_returns_final``, ``annual_return``,
  ``annual_volatility``, ``sharpe_ratio``, ``downside_risk``, ``sortino_ratio``,
  ``conditional_value_at_risk``), whose definitions are HYDRA's conventions: zero risk-free rate; sample
  std, ddof=1; Sortino's downside deviation is the root-mean-square of the negative part over *all* days;
  CAGR uses ``n_days / periods_per_year`` years; CVaR 95 % averages the worst ``floor((n-1)·5 %)+1`` days.
  HYDRA's own code stays where the definitions differ: (1) returns with *no dispersion* (a flat book)
  have a volatility of exactly 0 and undefined ratios here, where float residue (~1e-18) in the library's
  std would print a Sharpe in the quadrillions; (2) the daily :func:`max_drawdown` counts the opening
  capital as a peak, so a loss on the first day is a drawdown (empyrical starts its running peak at the
  first day's close and misses it); (3) the headline drawdown and Calmar use the every-cycle curve
  (below), which no daily-returns library sees; (4) ``cvar`` rounds ``1 − level`` to 12 places first
  (``1 - 0.95`` is 0.05000000000000004 in binary, which moves the cut-off on some lengths).
* **Maximum drawdown in** :func:`compute_all` is measured on the full-resolution equity curve (every
  cycle), the same curve the risk layer's drawdown kill switch watches; on a one-point-per-day curve it
  equals the daily figure, with intraday points it can only be deeper. Calmar uses that figure.
* Undefined values (a ratio with no dispersion, win rate with no trades) are NaN in the pure
  functions and ``None`` in :func:`compute_all`, whose result is JSON-safe.
"""
from __future__ import annotations

import math
from collections import Counter
from decimal import Decimal
from typing import Iterable

import empyrical as ep
import numpy as np
import pandas as pd

DEFAULT_PERIODS_PER_YEAR = 365  # crypto trades every calendar day; 252 for equities-only books


def periods_per_year_of(returns: pd.Series, symbols: Iterable[str] = ()) -> float:
    """365 when the book holds crypto (Alpaca's crypto symbols are the ones with a slash: "BTC/USD"),
    which trades every calendar day even when the span has no weekend, or when some daily return falls
    on a Saturday or Sunday; else 252 (exchange days only)."""
    if any("/" in str(s) for s in symbols):
        return 365.0
    if len(returns) and (pd.DatetimeIndex(returns.index).day_of_week >= 5).any():
        return 365.0
    return 252.0 if len(returns) else float(DEFAULT_PERIODS_PER_YEAR)


# ---------------------------------------------------------------- equity curve → daily returns
def _utc_index(values: Iterable) -> pd.DatetimeIndex:
    idx = pd.DatetimeIndex(pd.to_datetime(list(values), utc=False, format="ISO8601"))
    if idx.tz is None:
        raise ValueError("timestamps must be timezone-aware UTC (ISO-8601 with Z)")
    return idx.tz_convert("UTC")


def equity_curve(doc: dict) -> pd.Series:
    """Equity per cycle from a session document, anchored at ``started_at`` with the starting equity
    (so the first cycle's gain or loss is counted)."""
    rows = [(c["ts"], float(c["equity_usd"])) for c in doc.get("cycles", []) if c.get("equity_usd") is not None]
    session = doc.get("session") or {}
    start_eq = session.get("starting_equity_usd") or (doc.get("summary") or {}).get("starting_equity_usd")
    started = session.get("started_at")
    if start_eq is not None and started and (not rows or pd.Timestamp(started) <= pd.Timestamp(rows[0][0])):
        rows.insert(0, (started, float(start_eq)))
    if not rows:
        return pd.Series(dtype=float, index=pd.DatetimeIndex([], tz="UTC"))
    ts, eq = zip(*rows)
    return pd.Series(eq, index=_utc_index(ts), dtype=float).sort_index(kind="stable")


def daily_returns(equity: pd.Series) -> pd.Series:
    """Simple returns between UTC-day closes (see module docstring for the first day)."""
    if equity.empty:
        return pd.Series(dtype=float, index=pd.DatetimeIndex([], tz="UTC"))
    if equity.index.tz is None:
        raise ValueError("equity curve index must be timezone-aware UTC")
    equity = equity.tz_convert("UTC").sort_index(kind="stable")
    closes = equity.groupby(equity.index.floor("D")).last()
    values = closes.to_numpy(dtype=float)
    if (equity.index.floor("D") == closes.index[0]).sum() > 1:  # the opening point is the day's base
        values = np.concatenate([[equity.iloc[0]], values])
        index = closes.index
    else:
        index = closes.index[1:]
    return pd.Series(values[1:] / values[:-1] - 1.0, index=index)


# ---------------------------------------------------------------- return metrics (empyrical-compatible)
def total_return(returns: pd.Series) -> float:
    return float(ep.cum_returns_final(np.asarray(returns, float))) if len(returns) else float("nan")


def cagr(returns: pd.Series, periods_per_year: float = DEFAULT_PERIODS_PER_YEAR) -> float:
    """Compound annual growth: (1 + total) ** (periods_per_year / n_days) − 1."""
    if len(returns) < 1:
        return float("nan")
    return float(ep.annual_return(np.asarray(returns, float), annualization=periods_per_year))


def _std(r: np.ndarray) -> float:
    # identical values have exactly zero dispersion; float residue (~1e-18) must not fake a huge ratio
    return 0.0 if r.max() == r.min() else float(r.std(ddof=1))


def annual_volatility(returns: pd.Series, periods_per_year: float = DEFAULT_PERIODS_PER_YEAR) -> float:
    r = np.asarray(returns, float)
    if len(r) < 2:
        return float("nan")
    return 0.0 if _std(r) == 0.0 else float(ep.annual_volatility(r, annualization=periods_per_year))


def _ratio(num: float, den: float) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.divide(np.float64(num), np.float64(den)))


def sharpe_ratio(returns: pd.Series, periods_per_year: float = DEFAULT_PERIODS_PER_YEAR) -> float:
    """Annualised mean / std of daily returns, zero risk-free rate (crypto has no natural one)."""
    r = np.asarray(returns, float)
    if len(r) < 2:
        return float("nan")
    if _std(r) == 0.0:   # no dispersion: undefined (nan, or ±inf for a constant non-zero return)
        return _ratio(r.mean(), 0.0) * math.sqrt(periods_per_year)
    return float(ep.sharpe_ratio(r, annualization=periods_per_year))


def downside_risk(returns: pd.Series, periods_per_year: float = DEFAULT_PERIODS_PER_YEAR) -> float:
    r = np.asarray(returns, float)
    if len(r) < 1:
        return float("nan")
    return float(ep.downside_risk(r, annualization=periods_per_year))


def sortino_ratio(returns: pd.Series, periods_per_year: float = DEFAULT_PERIODS_PER_YEAR) -> float:
    """Annualised mean over annualised downside deviation (target 0): penalises only losing days."""
    r = np.asarray(returns, float)
    if len(r) < 2:
        return float("nan")
    down = downside_risk(r, periods_per_year)
    if down == 0.0:   # no losing day: +inf (or nan when flat), as the ratio says
        return _ratio(r.mean() * periods_per_year, down)
    return float(ep.sortino_ratio(r, annualization=periods_per_year))


def max_drawdown(returns: pd.Series) -> float:
    """Worst peak-to-trough fall of the compounded returns (≤ 0), counting the start as a peak."""
    r = np.asarray(returns, float)
    if len(r) < 1:
        return float("nan")
    wealth = np.concatenate([[1.0], np.cumprod(1.0 + r)])
    return float(np.min(wealth / np.maximum.accumulate(wealth) - 1.0))


def calmar_ratio(returns: pd.Series, periods_per_year: float = DEFAULT_PERIODS_PER_YEAR,
                 max_dd: float | None = None) -> float:
    """CAGR / |max drawdown|; NaN without a drawdown. ``max_dd`` overrides the daily drawdown."""
    dd = max_drawdown(returns) if max_dd is None else max_dd
    if not dd < 0:
        return float("nan")
    value = cagr(returns, periods_per_year) / abs(dd)
    return float("nan") if math.isinf(value) else value


def cvar(returns: pd.Series, level: float = 0.95) -> float:
    """Expected shortfall: mean of the worst (1 − level) share of daily returns (negative = loss)."""
    r = np.asarray(returns, float)
    r = r[~np.isnan(r)]
    if len(r) == 0:
        return float("nan")
    # round: 1 - 0.95 is 0.05000000000000004 in binary
    return float(ep.conditional_value_at_risk(r, cutoff=round(1.0 - level, 12)))


# ---------------------------------------------------------------- drawdown on the full curve
def drawdown_curve(equity: pd.Series) -> pd.Series:
    """Fractional distance below the running peak at every point (0 at a new high)."""
    return equity / equity.cummax() - 1.0


def drawdown_episode(equity: pd.Series) -> dict:
    """The deepest drawdown: depth, peak, trough, recovery (None if still under water) and duration
    from peak to recovery (or to the last point), in days."""
    if equity.empty:
        return {"max_drawdown": float("nan"), "peak": None, "trough": None, "recovery": None,
                "duration_days": float("nan"), "recovered": False}
    dd = drawdown_curve(equity)
    pos = int(np.argmin(dd.to_numpy()))
    trough = dd.index[pos]
    depth = float(dd.iloc[pos])
    if depth >= 0:
        return {"max_drawdown": 0.0, "peak": None, "trough": None, "recovery": None,
                "duration_days": 0.0, "recovered": True}
    values = equity.to_numpy(dtype=float)
    peak_pos = pos - int(np.argmax(values[pos::-1]))  # the last time at the high before the trough
    back = np.nonzero(values[pos:] >= values[peak_pos])[0]
    peak, recovery = equity.index[peak_pos], (equity.index[pos + back[0]] if len(back) else None)
    end = recovery if recovery is not None else equity.index[-1]
    return {"max_drawdown": depth, "peak": peak, "trough": trough, "recovery": recovery,
            "duration_days": (end - peak).total_seconds() / 86400.0, "recovered": recovery is not None}


# ---------------------------------------------------------------- trades
def trade_stats(trades: list[dict]) -> dict:
    """Count, win rate, profit factor and realised reward:risk of closed round trips.

    A trade wins when its net P&L (after fees) is > 0; break-evens count in ``trades`` only."""
    pnl = np.array([float(t["pnl_usd"]) for t in trades], float)
    # a null R (no initial risk on record) is unknown, not 0 R: left out of the R averages
    r = np.array([math.nan if t.get("r_multiple") is None else float(t["r_multiple"]) for t in trades], float)
    fees = float(sum(Decimal(str(t.get("fees_usd") or 0)) for t in trades))
    win, loss = pnl > 0, pnl < 0
    gp, gl = float(pnl[win].sum()), abs(float(pnl[loss].sum()))
    mean = lambda a: float(a.mean()) if len(a) else float("nan")  # noqa: E731
    avg_win, avg_loss = mean(pnl[win]), mean(pnl[loss])
    known_r = ~np.isnan(r)
    avg_win_r, avg_loss_r = mean(r[win & known_r]), mean(r[loss & known_r])
    return {
        "trades": len(trades), "wins": int(win.sum()), "losses": int(loss.sum()),
        "win_rate": mean(win.astype(float)), "pnl_usd": float(pnl.sum()), "fees_usd": fees,
        "gross_profit_usd": gp, "gross_loss_usd": gl,
        "profit_factor": gp / gl if gl > 0 else (float("inf") if gp > 0 else float("nan")),
        "expectancy_usd": mean(pnl), "avg_r": mean(r[known_r]), "avg_win_r": avg_win_r, "avg_loss_r": avg_loss_r,
        "avg_win_usd": avg_win, "avg_loss_usd": avg_loss,
        "payoff_ratio": _ratio(avg_win, abs(avg_loss)) if len(pnl[loss]) else float("nan"),
    }


def group_trade_stats(trades: list[dict], key: str) -> dict[str, dict]:
    """:func:`trade_stats` per value of ``key`` (``strategy``, ``regime_at_entry``, ``exit_reason``…)."""
    groups: dict[str, list[dict]] = {}
    for t in trades:
        groups.setdefault(str(t.get(key) or "?"), []).append(t)
    return {k: trade_stats(v) for k, v in sorted(groups.items())}


# ---------------------------------------------------------------- exposure and turnover
def position_intervals(trades: list[dict], fills: list[dict], open_symbols: Iterable[str] = ()
                       ) -> list[tuple[pd.Timestamp | None, pd.Timestamp | None]]:
    """Periods a position was held: each closed trade from entry to exit, and each position still open
    at the end from its symbol's first fill after that symbol's last exit (``None``: from the start,
    for a position carried in or adopted without a fill in this session) to ``None`` (the end).

    Built from the trades, not by netting fill quantities to zero: Alpaca keeps its crypto fee in coins,
    so a round trip's buy and sell never net to 0 (the book would read "in market" to the end), and a
    position carried in from an earlier session starts the fills with its exit."""
    out: list[tuple[pd.Timestamp | None, pd.Timestamp | None]] = []
    last_exit: dict[str, pd.Timestamp] = {}
    for t in trades:
        entry, exit_ = pd.Timestamp(t["entry_time"]), pd.Timestamp(t["exit_time"])
        out.append((entry, exit_))
        last_exit[t["symbol"]] = max(exit_, last_exit.get(t["symbol"], exit_))
    opened: dict[str, pd.Timestamp] = {}
    for f in fills:   # entries not closed by a trade yet
        ts, sym = pd.Timestamp(f["ts"]), f["symbol"]
        if sym not in last_exit or ts > last_exit[sym]:
            opened[sym] = min(ts, opened.get(sym, ts))
    for sym in set(open_symbols) | set(opened):
        out.append((opened.get(sym, last_exit.get(sym)), None))
    return out


def exposure(intervals: list[tuple], start: pd.Timestamp, end: pd.Timestamp) -> float:
    """Fraction of [start, end] covered by the union of the intervals (open-ended ones run to ``end``)."""
    span = (end - start).total_seconds()
    if span <= 0:
        return float("nan")
    clipped = sorted((max(a, start) if a is not None else start, min(b if b is not None else end, end))
                     for a, b in intervals)
    covered, cur_a, cur_b = 0.0, None, None
    for a, b in clipped:
        if b <= a:
            continue
        if cur_b is None or a > cur_b:
            covered += (cur_b - cur_a).total_seconds() if cur_b is not None else 0.0
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    covered += (cur_b - cur_a).total_seconds() if cur_b is not None else 0.0
    return covered / span


def traded_notional(fills: list[dict]) -> float:
    return float(sum(abs(Decimal(str(f["qty"])) * Decimal(str(f["price"]))) for f in fills))


def turnover(fills: list[dict], equity: pd.Series) -> float:
    """Traded notional (both legs of every round trip) / average equity over the session."""
    avg = float(equity.mean()) if len(equity) else float("nan")
    return _ratio(traded_notional(fills), avg) if fills else 0.0


# ---------------------------------------------------------------- decisions
def veto_counts(cycle_details: list[dict]) -> dict[str, int]:
    """Refused proposals per rule, from the journal's decisions (approved is false)."""
    c = Counter(d.get("rule") or "?" for cd in cycle_details for d in cd.get("decisions", []) if not d.get("approved"))
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


# ---------------------------------------------------------------- everything at once
def json_safe(obj):
    """NaN/inf → None, timestamps → ISO-8601 Z, recursively (the result goes to JSON and HTML)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, pd.Timestamp):
        return obj.tz_convert("UTC").isoformat().replace("+00:00", "Z")
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def compute_all(doc: dict, periods_per_year: float | None = None) -> dict:
    """Every metric for one session document (as returned by ``tradelog.load_session``), JSON-safe.
    ``periods_per_year`` None: :func:`periods_per_year_of` the session's symbols and daily returns."""
    eq = equity_curve(doc)
    rets = daily_returns(eq)
    trades, fills = doc.get("trades", []), doc.get("fills", [])
    session = doc.get("session") or {}
    if periods_per_year is None:
        periods_per_year = periods_per_year_of(rets, session.get("symbols") or ())
    # the cycles' own timestamps are market time in every mode (a replay's wall-clock start is not)
    if len(eq):
        start, end = eq.index[0], eq.index[-1]
    else:
        start = pd.Timestamp(session["started_at"]) if session.get("started_at") else None
        end = pd.Timestamp(session["ended_at"]) if session.get("ended_at") else None
    episode = drawdown_episode(eq)
    intervals = position_intervals(trades, fills, ((doc.get("summary") or {}).get("open_positions") or {}).keys())
    regimes = Counter(c.get("regime") or "?" for c in doc.get("cycles", []))
    n_cycles = sum(regimes.values())
    out = {
        "periods_per_year": periods_per_year, "start": start, "end": end, "days": len(rets),
        "losing_days": int((rets < 0).sum()),
        "cycles": n_cycles,
        "starting_equity_usd": float(eq.iloc[0]) if len(eq) else None,
        "final_equity_usd": float(eq.iloc[-1]) if len(eq) else None,
        "total_return": float(eq.iloc[-1] / eq.iloc[0] - 1.0) if len(eq) else float("nan"),
        "cagr": cagr(rets, periods_per_year),
        "annual_volatility": annual_volatility(rets, periods_per_year),
        "sharpe": sharpe_ratio(rets, periods_per_year),
        "sortino": sortino_ratio(rets, periods_per_year),
        "max_drawdown": episode["max_drawdown"],
        "max_drawdown_duration_days": episode["duration_days"],
        "max_drawdown_peak": episode["peak"], "max_drawdown_trough": episode["trough"],
        "max_drawdown_recovery": episode["recovery"], "max_drawdown_recovered": episode["recovered"],
        "calmar": calmar_ratio(rets, periods_per_year, max_dd=episode["max_drawdown"]) if len(rets) else float("nan"),
        "cvar_95": cvar(rets, 0.95),
        "exposure": exposure(intervals, start, end) if start is not None and end is not None else float("nan"),
        "traded_notional_usd": traded_notional(fills),
        "turnover": turnover(fills, eq),
        "trades": trade_stats(trades),
        "per_strategy": group_trade_stats(trades, "strategy"),
        "per_regime": group_trade_stats(trades, "regime_at_entry"),
        "exit_reasons": group_trade_stats(trades, "exit_reason"),
        "regime_time": {k: v / n_cycles for k, v in sorted(regimes.items())} if n_cycles else {},
        "vetoes_by_rule": veto_counts(doc.get("cycle_details", [])),
    }
    return json_safe(out)
