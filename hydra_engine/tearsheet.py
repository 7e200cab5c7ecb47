"""The tearsheet: one self-contained, interactive HTML file (plotly, its JavaScript inlined) per session.

``review`` writes it as ``tearsheet.html`` beside ``report.html`` and the PNGs. Sections (in order, each
with a sentence on what it is for):

1. metrics against a benchmark — buy-and-hold, equal weight, of the session's symbols that have a price at
   its first cycle (the journal's prices, no fees: an upper bound of doing nothing clever); alpha and beta
   against it (empyrical);
2. equity and drawdown with the regime shaded; 3. monthly returns (heatmap) and yearly returns;
4. rolling Sharpe and volatility; 5. the worst drawdowns with their dates and recovery;
6. the distribution of daily returns; 7. per-strategy, per-symbol and per-venue breakdowns;
8. profit by regime; 9. exit reasons; 10. the trade list; 11. price charts with the trades.

Every number comes from :mod:`hydra_engine.metrics` (empyrical where its definitions are HYDRA's, see that
module) on the session log alone; the charts are thinned for drawing, the tables never are.
"""
from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics as M
from . import plots

MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def benchmark_equity(doc: dict) -> pd.Series:
    """Equal-weight buy-and-hold of the session's symbols priced at its first cycle, scaled to the starting
    equity, at every cycle (prices carried forward over a symbol's gaps). Empty without a journal."""
    prices = plots.price_frame(doc)
    symbols = [s for s in (doc.get("session") or {}).get("symbols") or [] if s in prices]
    eq = M.equity_curve(doc)
    if prices.empty or not symbols or not len(eq):
        return pd.Series(dtype=float)
    px = prices[symbols].ffill()
    first = px.iloc[0]
    held = [s for s in symbols if pd.notna(first[s]) and first[s] > 0]
    if not held:
        return pd.Series(dtype=float)
    growth = (px[held] / first[held]).mean(axis=1)
    bench = growth * float(eq.iloc[0])
    bench.index = bench.index.tz_convert("UTC") if bench.index.tz else bench.index.tz_localize("UTC")
    # anchored like the equity curve: the session's start at the starting equity
    return pd.concat([pd.Series([float(eq.iloc[0])], index=[eq.index[0]]), bench]).sort_index(kind="stable")


def _metrics(eq: pd.Series, ppy: float) -> dict:
    r = M.daily_returns(eq)
    ep_ = M.drawdown_episode(eq)
    return {"total return": M.total_return(r) if len(r) else float("nan"), "CAGR": M.cagr(r, ppy),
            "annual volatility": M.annual_volatility(r, ppy), "Sharpe": M.sharpe_ratio(r, ppy),
            "Sortino": M.sortino_ratio(r, ppy), "max drawdown (every cycle)": ep_["max_drawdown"],
            "Calmar": M.calmar_ratio(r, ppy, max_dd=ep_["max_drawdown"]) if len(r) else float("nan"),
            "CVaR 95% (daily)": M.cvar(r), "best day": float(r.max()) if len(r) else float("nan"),
            "worst day": float(r.min()) if len(r) else float("nan"),
            "positive days": float((r > 0).mean()) if len(r) else float("nan")}


_PCT = {"total return", "CAGR", "annual volatility", "max drawdown (every cycle)", "CVaR 95% (daily)", "best day",
        "worst day", "positive days", "exposure", "alpha (annual)"}


def _fmt(key: str, v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{100 * v:.2f}%" if key in _PCT else f"{v:.2f}"


def worst_drawdowns(eq: pd.Series, n: int = 5) -> list[dict]:
    """The ``n`` deepest peak-to-trough episodes of the every-cycle curve that do not overlap: peak, trough,
    recovery (the first point back at the peak, or None), depth and the days each part took."""
    if len(eq) < 2:
        return []
    values = eq.to_numpy(float)
    peak_val = np.maximum.accumulate(values)
    dd = values / peak_val - 1.0
    episodes, i = [], 0
    while i < len(values):
        if dd[i] < 0:
            start = i - 1                         # the peak: the last point before the fall
            j = i
            while j < len(values) and dd[j] < 0:
                j += 1
            trough = start + 1 + int(np.argmin(dd[start + 1:j]))
            rec = j if j < len(values) else None
            episodes.append({"peak": eq.index[start], "trough": eq.index[trough],
                             "recovery": eq.index[rec] if rec is not None else None, "depth": float(dd[trough]),
                             "fall_days": (eq.index[trough] - eq.index[start]).total_seconds() / 86400,
                             "recovery_days": ((eq.index[rec] - eq.index[trough]).total_seconds() / 86400
                                               if rec is not None else None)})
            i = j
        else:
            i += 1
    return sorted(episodes, key=lambda e: e["depth"])[:n]


def venue_of(doc: dict) -> dict[str, str]:
    """Each traded symbol's venue as the log tells it: perpetual futures (a reduce-only order or funding on
    a trade) are ``perp``; everything else the session's broker (``sim`` or ``alpaca``)."""
    broker = (doc.get("session") or {}).get("broker", "?")
    perp = {o["symbol"] for o in doc.get("orders", []) if o.get("reduce_only")}
    perp |= {t["symbol"] for t in doc.get("trades", []) if str(t.get("funding_usd", "0")) not in ("0", "0.0", "None")}
    return {s: ("perp" if s in perp else broker) for s in plots.traded_symbols(doc)}


def _table(headers: list[str], rows: list[list], tid: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return (f"<table{f' id={chr(39)}{tid}{chr(39)}' if tid else ''}><thead><tr>{head}</tr></thead>"
            f"<tbody>{body or f'<tr><td colspan={len(headers)}>(none)</td></tr>'}</tbody></table>")


def _stats_rows(groups: dict) -> list[list]:
    from .review import fmt_num, fmt_pct, fmt_usd
    return [[k, v["trades"], fmt_pct(v["win_rate"], 1), fmt_usd(v["pnl_usd"]), fmt_num(v["avg_r"]),
             fmt_usd(v["fees_usd"]) if "fees_usd" in v else ""] for k, v in groups.items()]


def _bar(groups: dict, title: str):
    import plotly.graph_objects as go
    keys = list(groups)
    pnl = [groups[k]["pnl_usd"] for k in keys]
    fig = go.Figure(go.Bar(x=keys, y=pnl, marker_color=["#2ca02c" if p >= 0 else "#d62728" for p in pnl],
                           text=[f"{groups[k]['trades']} trades" for k in keys]))
    fig.update_layout(height=300, title=title, yaxis_title="net P&L (USD)", margin={"l": 60, "r": 20, "t": 40, "b": 40})
    return fig


def build_tearsheet(doc: dict, periods_per_year: float | None = None, source: str = "") -> str:
    """The whole HTML document."""
    import plotly.graph_objects as go
    from plotly.offline import get_plotlyjs
    from plotly.subplots import make_subplots

    from .review import fmt_num, fmt_pct, fmt_usd

    import empyrical as ep
    m = M.compute_all(doc, periods_per_year)
    ppy = m["periods_per_year"]
    s = doc.get("session") or {}
    eq = M.equity_curve(doc)
    bench = benchmark_equity(doc)
    rets = M.daily_returns(eq)
    sections: list[tuple[str, str, str]] = []   # (title, what it is for, html)

    ours = _metrics(eq, ppy)
    ours["exposure"] = m["exposure"]
    theirs = _metrics(bench, ppy) if len(bench) else {}
    if len(bench):
        theirs["exposure"] = 1.0
        b_rets = M.daily_returns(bench)
        both = pd.concat([rets, b_rets], axis=1, join="inner").dropna()
        if len(both) > 2 and both.iloc[:, 1].std() > 0:
            alpha, beta = ep.alpha_beta(both.iloc[:, 0], both.iloc[:, 1], annualization=ppy)
            ours["alpha (annual)"], ours["beta"] = float(alpha), float(beta)
    rows = [[k, _fmt(k, v), _fmt(k, theirs.get(k)) if theirs else "n/a"] for k, v in ours.items()]
    bench_note = (f"benchmark: equal-weight buy-and-hold of {', '.join(sorted(c for c in (s.get('symbols') or []) if c in plots.price_frame(doc)))} "
                  "from the first cycle's prices, no fees" if len(bench) else
                  "no benchmark: the session's journal (its prices) is missing")
    sections.append(("Metrics against the benchmark",
                     "Is the strategy worth running at all? Its risk-adjusted numbers beside doing nothing clever "
                     f"({ppy:g} periods a year, daily returns, zero risk-free rate).",
                     _table(["metric", "HYDRA", "buy & hold"], rows, "metrics") + f"<p class='note'>{html.escape(bench_note)}</p>"))
    sections.append(("Equity and drawdown",
                     "Where the money was made and lost, and under which regime (shaded).",
                     plots.figure_html(plots.equity_figure(doc, benchmark=bench if len(bench) else None), "ts-equity")))

    # monthly heatmap and yearly returns
    if len(rets):
        monthly = ep.aggregate_returns(rets, "monthly")
        years = sorted({y for y, _ in monthly.index})
        z = [[monthly.get((y, mo), np.nan) * 100 for mo in range(1, 13)] for y in years]
        heat = go.Figure(go.Heatmap(z=z, x=MONTHS, y=[str(y) for y in years], colorscale="RdYlGn", zmid=0,
                                    text=[[("" if np.isnan(v) else f"{v:.2f}%") for v in row] for row in z],
                                    texttemplate="%{text}", hovertemplate="%{y} %{x}: %{text}<extra></extra>"))
        heat.update_layout(height=120 + 40 * len(years), title="Monthly returns (%)", margin={"l": 60, "r": 20, "t": 40, "b": 30})
        yearly = ep.aggregate_returns(rets, "yearly") * 100
        ybar = go.Figure(go.Bar(x=[str(y) for y in yearly.index], y=yearly.to_numpy(),
                                marker_color=["#2ca02c" if v >= 0 else "#d62728" for v in yearly]))
        ybar.update_layout(height=280, title="Yearly returns (%)", margin={"l": 60, "r": 20, "t": 40, "b": 30})
        sections.append(("Monthly and yearly returns", "Is the result steady or one lucky month?",
                         plots.figure_html(heat, "ts-monthly") + plots.figure_html(ybar, "ts-yearly")))
        window = 63 if len(rets) >= 126 else max(5, len(rets) // 3)
        if len(rets) > window:
            roll_sharpe = ep.roll_sharpe_ratio(rets, window, annualization=ppy)
            roll_vol = ep.roll_annual_volatility(rets, window, annualization=ppy) * 100
            fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06)
            fig.add_scatter(x=roll_sharpe.index, y=roll_sharpe.to_numpy(), name=f"Sharpe ({window} days)", row=1, col=1)
            fig.add_scatter(x=roll_vol.index, y=roll_vol.to_numpy(), name=f"volatility % ({window} days)", row=2, col=1)
            fig.update_layout(height=420, title=f"Rolling Sharpe and volatility ({window}-day window)",
                              margin={"l": 60, "r": 20, "t": 40, "b": 30})
            sections.append(("Rolling Sharpe and volatility",
                             "Does the edge last, or did it live in one stretch? (flat stretches: no trades)",
                             plots.figure_html(fig, "ts-rolling")))
    dds = worst_drawdowns(eq)
    sections.append(("Worst drawdowns", "How deep it fell, how long the fall took and how long until it was made back "
                     "(every cycle's equity, the curve the drawdown kill switch watches).",
                     _table(["#", "peak", "trough", "recovered", "depth", "fall (days)", "recovery (days)"],
                            [[i + 1, str(d["peak"]), str(d["trough"]), str(d["recovery"]) if d["recovery"] is not None
                              else "not recovered", fmt_pct(d["depth"]), fmt_num(d["fall_days"], 1),
                              fmt_num(d["recovery_days"], 1) if d["recovery_days"] is not None else "-"]
                             for i, d in enumerate(dds)], "drawdowns")))
    if len(rets):
        hist = go.Figure(go.Histogram(x=rets.to_numpy() * 100, nbinsx=60, marker_color="#1f77b4"))
        hist.add_vline(x=(m["cvar_95"] or 0) * 100, line={"color": "#d62728", "dash": "dash"},
                       annotation_text="CVaR 95%")
        hist.update_layout(height=300, title="Daily returns (%)", xaxis_title="daily return (%)", yaxis_title="days",
                           margin={"l": 60, "r": 20, "t": 40, "b": 40})
        sections.append(("Distribution of daily returns", "Fat tails and skew that a Sharpe ratio hides "
                         f"({len(rets)} days; most are 0 when the book is flat).",
                         plots.figure_html(hist, "ts-hist")))
    trades = doc.get("trades", [])
    venues = venue_of(doc)
    per_venue = M.group_trade_stats([{**t, "venue": venues.get(t["symbol"], "?")} for t in trades], "venue")
    heads = ["group", "trades", "win rate", "P&L", "avg R", "fees"]
    groups_html = ""
    for name, groups in (("strategy", m["per_strategy"]), ("symbol", M.json_safe(M.group_trade_stats(trades, "symbol"))),
                         ("venue", M.json_safe(per_venue))):
        groups_html += f"<h3>per {name}</h3>" + _table([name, *heads[1:]], _stats_rows(groups), f"per-{name}")
        if groups:
            groups_html += plots.figure_html(_bar(groups, f"Net P&L per {name}"), f"ts-per-{name}")
    sections.append(("Breakdowns", "Which strategy, symbol and venue carry the result, and which cost money.",
                     groups_html))
    regimes = sorted(set(m["per_regime"]) | set(m["regime_time"]))
    empty = M.json_safe(M.trade_stats([]))
    reg_rows = [[r, fmt_pct(m["regime_time"].get(r), 1), *(_stats_rows({r: m["per_regime"].get(r, empty)})[0][1:5])]
                for r in regimes]
    sections.append(("Profit by regime", "Does each strategy earn in the regimes it is meant for? (regime at entry; "
                     "time = share of cycles in that regime)",
                     _table(["regime", "time in regime", "trades", "win rate", "P&L", "avg R"], reg_rows, "per-regime")
                     + (plots.figure_html(_bar({r: v for r, v in m["per_regime"].items()}, "Net P&L by regime at entry"),
                                          "ts-regime") if m["per_regime"] else "")))
    sections.append(("Exit reasons", "How trades end: stops hit, targets reached, time limits, strategy exits, kills.",
                     _table(["reason", "trades", "win rate", "P&L", "avg R", "fees"], _stats_rows(m["exit_reasons"]),
                            "exit-reasons")))
    cols = ["strategy", "symbol", "side", "qty", "entry_time", "entry_price", "exit_time", "exit_price", "pnl_usd",
            "fees_usd", "r_multiple", "regime_at_entry", "exit_reason"]
    sections.append((f"Trades ({len(trades)})", "Every closed round trip, after fees.",
                     _table(cols, [[t.get(c, "") for c in cols] for t in trades], "trade-list")))
    symbols = sorted(plots.traded_symbols(doc), key=lambda x: -sum(t["symbol"] == x for t in trades))
    if symbols:
        prices = plots.price_frame(doc)
        charts = "".join(plots.figure_html(plots.price_figure(doc, sym, prices), f"ts-price-{sym.replace('/', '-')}")
                         for sym in symbols[:12])
        more = f"<p class='note'>{len(symbols) - 12} more symbols not drawn</p>" if len(symbols) > 12 else ""
        sections.append(("Prices with trades", "Were entries and exits where the plan said? ▲/▼ entries, × exits "
                         "with their reason, dashed stop (red) and target (green) from entry to exit.", charts + more))

    nav = "".join(f"<li><a href='#s{i}'>{html.escape(t)}</a></li>" for i, (t, _, _) in enumerate(sections))
    body = "".join(f"<section id='s{i}'><h2>{html.escape(t)}</h2><p class='why'>{html.escape(why)}</p>{content}</section>"
                   for i, (t, why, content) in enumerate(sections))
    title = f"HYDRA tearsheet: {s.get('session_id', '?')}"
    head = (f"<h1>{html.escape(title)}</h1><p class='note'>mode {html.escape(str(s.get('mode')))} · "
            f"{html.escape(str(m['start']))} → {html.escape(str(m['end']))} · {m['cycles']} cycles · "
            f"equity {fmt_usd(m['starting_equity_usd'])} → {fmt_usd(m['final_equity_usd'])} · fees "
            f"{html.escape(str(s.get('fee_bps', '?')))} bps, slippage {html.escape(str(s.get('slippage_bps', '?')))} bps"
            + (f" · log {html.escape(source)}" if source else "") + "</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script><style>{_CSS}</style></head><body>"
            f"{head}<nav><ol>{nav}</ol></nav>{body}</body></html>")


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0;font-size:90%}td,th{padding:3px 9px;border-bottom:1px solid #ddd;"
        "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}"
        ".note{color:#666;font-size:90%}.why{color:#444;font-style:italic}section{margin-top:2em}"
        "nav ol{columns:3;font-size:90%}")


def write_tearsheet(doc: dict, path: Path, periods_per_year: float | None = None, source: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(build_tearsheet(doc, periods_per_year, source), encoding="utf-8")
    return path


__all__ = ["build_tearsheet", "write_tearsheet", "benchmark_equity", "worst_drawdowns", "venue_of"]
