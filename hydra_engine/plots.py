"""Interactive (plotly) charts of one session document, shared by the dashboard and the tearsheet.

Every function takes a session document as ``tradelog.load_session`` returns it (``cycles``,
``cycle_details`` from the journal, ``trades``, ``fills``, ``orders``) and returns a
``plotly.graph_objects.Figure``. Long sessions are thinned for drawing (``max_points``: the last point
of each bucket is kept, so the final equity and every regime change stay exact); the numbers in the
tables never come from the thinned series.
"""
from __future__ import annotations

from collections import defaultdict

import pandas as pd

from . import metrics as M

REGIME_COLOURS = {"TRENDING_UP": "rgba(44,160,44,0.13)", "TRENDING_DOWN": "rgba(214,39,40,0.10)",
                  "MEAN_REVERTING": "rgba(31,119,180,0.10)", "HIGH_VOL": "rgba(255,127,14,0.16)",
                  "CRASH": "rgba(214,39,40,0.25)", "RECOVERY": "rgba(148,103,189,0.14)",
                  "UNKNOWN": "rgba(127,127,127,0.10)"}


def thin(series: pd.Series, max_points: int = 4000) -> pd.Series:
    """At most ~``max_points`` points: the last of each bucket (the final value stays exact)."""
    n = len(series)
    if n <= max_points:
        return series
    step = -(-n // max_points)
    keep = list(range(step - 1, n, step))
    if keep[-1] != n - 1:
        keep.append(n - 1)
    return series.iloc[[0, *keep]]


def regime_spans(doc: dict) -> list[tuple[pd.Timestamp, pd.Timestamp, str]]:
    """(start, end, regime) for each run of cycles under one regime."""
    spans: list[tuple] = []
    for c in doc.get("cycles", []):
        ts, reg = pd.Timestamp(c["ts"]), c.get("regime") or "UNKNOWN"
        if spans and spans[-1][2] == reg:
            spans[-1][1] = ts
        else:
            if spans:
                spans[-1][1] = ts
            spans.append([ts, ts, reg])
    return [tuple(s) for s in spans]


def _shade(fig, spans, *, row=None, max_shapes: int = 400) -> None:
    """Regime shading as rectangles behind the data (the shortest runs merged away past ``max_shapes``)."""
    if len(spans) > max_shapes:   # thousands of one-cycle flickers would make the page crawl: keep the longest
        longest = sorted(spans, key=lambda s: s[1] - s[0], reverse=True)[:max_shapes]
        spans = sorted(longest)
    seen = set()
    for start, end, reg in spans:
        kw = {"row": row, "col": 1} if row else {}
        fig.add_vrect(x0=start, x1=end, fillcolor=REGIME_COLOURS.get(reg, "rgba(127,127,127,0.1)"),
                      line_width=0, layer="below", **kw)
        seen.add(reg)
    for reg in sorted(seen):   # a legend entry per regime shown
        fig.add_scatter(x=[None], y=[None], mode="markers", marker={"size": 12, "symbol": "square",
                        "color": REGIME_COLOURS.get(reg, "grey")}, name=f"regime {reg}", showlegend=True)


def equity_figure(doc: dict, *, benchmark: pd.Series | None = None, max_points: int = 4000):
    """Equity (and a benchmark, when given) over drawdown, with regime shading."""
    from plotly.subplots import make_subplots
    eq = M.equity_curve(doc)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.04)
    if len(eq):
        shown = thin(eq, max_points)
        fig.add_scatter(x=shown.index, y=shown.to_numpy(), name="equity (USD)", line={"color": "#1f77b4"},
                        row=1, col=1)
        if benchmark is not None and len(benchmark):
            b = thin(benchmark, max_points)
            fig.add_scatter(x=b.index, y=b.to_numpy(), name="buy & hold of the session's symbols",
                            line={"color": "#7f7f7f", "dash": "dot"}, row=1, col=1)
        dd = thin(100 * M.drawdown_curve(eq), max_points)
        fig.add_scatter(x=dd.index, y=dd.to_numpy(), name="drawdown (%)", fill="tozeroy",
                        line={"color": "#d62728"}, row=2, col=1)
        _shade(fig, regime_spans(doc), row=1)
    fig.update_yaxes(title_text="equity (USD)", row=1, col=1)
    fig.update_yaxes(title_text="drawdown (%)", row=2, col=1)
    fig.update_layout(height=520, margin={"l": 60, "r": 20, "t": 30, "b": 30}, legend={"orientation": "h"},
                      title="Equity and drawdown (regime shaded)")
    return fig


def price_frame(doc: dict) -> pd.DataFrame:
    """Each cycle's prices (the journal's ``prices``), one column per symbol."""
    rows = [(c["ts"], c.get("prices") or {}) for c in doc.get("cycle_details", [])]
    if not rows:
        return pd.DataFrame()
    idx = pd.DatetimeIndex(pd.to_datetime([r[0] for r in rows], format="ISO8601"))
    return pd.DataFrame([r[1] for r in rows], index=idx)


def plan_levels(doc: dict) -> dict[tuple[str, str], dict]:
    """(symbol, entry time) -> the stop and target of the approved proposal behind each entry order."""
    levels: dict[tuple[str, str], dict] = {}
    for c in doc.get("cycle_details", []):
        if not c.get("orders"):
            continue
        proposals = {(p["strategy"], p["symbol"]): p for p in c.get("proposals", [])}
        for o in c["orders"]:
            p = proposals.get((o.get("strategy"), o.get("symbol")))
            if o.get("purpose") == "entry" and p:
                levels[(o["symbol"], c["ts"])] = {"stop": p.get("stop_price"), "target": p.get("target_price"),
                                                  "coid": o.get("client_order_id")}
    return levels


def traded_symbols(doc: dict) -> list[str]:
    seen: dict[str, None] = {}
    for t in doc.get("trades", []):
        seen[t["symbol"]] = None
    for f in doc.get("fills", []):
        seen[f["symbol"]] = None
    return list(seen)


def price_figure(doc: dict, symbol: str, prices: pd.DataFrame | None = None, max_points: int = 3000):
    """One symbol's price with entries (▲ long / ▼ short), exits (×, with the reason) and each trade's
    stop and target as dashed segments from entry to exit."""
    import plotly.graph_objects as go
    prices = price_frame(doc) if prices is None else prices
    fig = go.Figure()
    if symbol in prices:
        s = thin(prices[symbol].dropna(), max_points)
        fig.add_scatter(x=s.index, y=s.to_numpy(), name=symbol, line={"color": "#444"})
    trades = [t for t in doc.get("trades", []) if t["symbol"] == symbol]
    levels = plan_levels(doc)
    entries_by_time = sorted((ts, lv) for (sym, ts), lv in levels.items() if sym == symbol)
    for side, marker, colour in (("buy", "triangle-up", "#2ca02c"), ("sell", "triangle-down", "#d62728")):
        mine = [t for t in trades if t["side"] == side]
        if mine:
            fig.add_scatter(x=[t["entry_time"] for t in mine], y=[float(t["entry_price"]) for t in mine],
                            mode="markers", marker={"symbol": marker, "size": 12, "color": colour},
                            name=f"entry ({'long' if side == 'buy' else 'short'})",
                            text=[f"{t['strategy']} entry {t['entry_price']}" for t in mine])
    if trades:
        fig.add_scatter(x=[t["exit_time"] for t in trades], y=[float(t["exit_price"]) for t in trades],
                        mode="markers+text", marker={"symbol": "x", "size": 11, "color": "#000"},
                        text=[t["exit_reason"] for t in trades], textposition="top center", name="exit")
        for t in trades:
            lv = next((lv for ts, lv in reversed(entries_by_time) if ts <= t["entry_time"]), None)
            if not lv:
                continue
            for key, colour in (("stop", "#d62728"), ("target", "#2ca02c")):
                if lv.get(key) is not None and 0 < float(lv[key]) < 1e12:
                    fig.add_scatter(x=[t["entry_time"], t["exit_time"]], y=[float(lv[key])] * 2, mode="lines",
                                    line={"color": colour, "dash": "dash", "width": 1}, name=key,
                                    legendgroup=key, showlegend=False)
    open_marks = open_positions_from_log(doc).get(symbol)
    if open_marks:
        fig.add_scatter(x=[open_marks["opened_at"]], y=[open_marks["entry_price"]], mode="markers",
                        marker={"symbol": "star", "size": 13, "color": "#1f77b4"}, name="open position")
        for key, colour in (("stop", "#d62728"), ("target", "#2ca02c")):
            if open_marks.get(key) is not None:
                fig.add_hline(y=open_marks[key], line={"color": colour, "dash": "dot"},
                              annotation_text=f"{key} {open_marks[key]:,.2f}")
    fig.update_layout(height=360, margin={"l": 60, "r": 20, "t": 40, "b": 30}, title=f"{symbol}: price and trades",
                      legend={"orientation": "h"})
    return fig


def open_positions_from_log(doc: dict) -> dict[str, dict]:
    """Positions the log leaves open: net fills per symbol since it was last flat, with the entry's plan
    (stop, target) and the last price seen. The store's live state, when there is one, says more (trail)."""
    net: dict[str, float] = defaultdict(float)
    cost: dict[str, float] = defaultdict(float)
    opened: dict[str, str] = {}
    entry_coids = {o["client_order_id"]: o for o in doc.get("orders", []) if o.get("purpose") == "entry"}
    for f in sorted(doc.get("fills", []), key=lambda f: f["ts"]):
        q = float(f["qty"]) * (1 if f["side"] == "buy" else -1)
        sym = f["symbol"]
        before = net[sym]
        net[sym] += q
        if abs(net[sym]) < 1e-12:
            net[sym], cost[sym] = 0.0, 0.0
            opened.pop(sym, None)
        elif before == 0 or (before > 0) == (q > 0):     # opening or adding
            cost[sym] += q * float(f["price"])
            opened.setdefault(sym, f["ts"])
    levels = plan_levels(doc)
    last_prices = (doc.get("cycle_details") or [{}])[-1].get("prices") or {}
    out = {}
    for sym, qty in net.items():
        if qty == 0:
            continue
        plan = next((lv for (s, ts), lv in sorted(levels.items(), key=lambda kv: kv[0][1], reverse=True)
                     if s == sym and lv.get("coid") in entry_coids), {})
        entry = cost[sym] / qty if qty else 0.0
        mark = last_prices.get(sym)
        out[sym] = {"symbol": sym, "qty": qty, "entry_price": entry, "opened_at": opened.get(sym),
                    "mark": mark, "stop": plan.get("stop"), "target": plan.get("target"),
                    "unrealised_usd": qty * (mark - entry) if mark is not None else None,
                    "strategy": entry_coids.get(plan.get("coid"), {}).get("strategy")}
    return out


def weights_figure(doc: dict, max_points: int = 2000):
    """Strategy weights over time (the journal's ``weights`` each cycle)."""
    import plotly.graph_objects as go
    rows = [(c["ts"], c.get("weights") or {}) for c in doc.get("cycle_details", []) if c.get("weights")]
    fig = go.Figure()
    if rows:
        df = pd.DataFrame([r[1] for r in rows], index=pd.to_datetime([r[0] for r in rows], format="ISO8601"))
        for col in df:
            s = thin(df[col], max_points)
            fig.add_scatter(x=s.index, y=s.to_numpy(), name=col, mode="lines", line={"shape": "hv"})
    fig.update_layout(height=300, margin={"l": 60, "r": 20, "t": 40, "b": 30}, title="Strategy weights over time",
                      yaxis={"range": [0, 1.05], "title": "weight"}, legend={"orientation": "h"})
    return fig


def modifier_trace(doc: dict, last: int = 200) -> list[dict]:
    """The signal modifiers' adjustments (the cross-asset graph's edges) of the last cycles that had any."""
    out: list[dict] = []
    for c in reversed(doc.get("cycle_details", [])):
        for a in c.get("modifiers") or []:
            out.append({"cycle": c.get("cycle"), "ts": c.get("ts"), **a})
        if len(out) >= last:
            break
    return out[:last]


def figure_html(fig, div_id: str | None = None) -> str:
    """A figure as a ``<div>`` (plotly.js loaded once by the page)."""
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


__all__ = ["equity_figure", "price_figure", "weights_figure", "price_frame", "regime_spans", "thin",
           "open_positions_from_log", "plan_levels", "traded_symbols", "modifier_trace", "figure_html"]
