"""The local web dashboard (Flask): ``python hydra_engine.py dashboard``.

Read-only: it reads the session logs under ``engine.log_dir`` (backtest folders inside it too) and the
store's kill switch and engine state (SQLite opened ``mode=ro``). It serves on 127.0.0.1 unless told
otherwise. Pages:

* ``/`` — every session, newest first, running ones marked;
* ``/session/<path>`` — one session: kill state, equity with regime shading and drawdown, open positions,
  a price chart per traded symbol with entries, exits and stop/target levels, the trade list, decisions
  and vetoes by rule, strategy weights over time, the signal modifiers' trace (the cross-asset graph)
  when one ran. A running session's page reloads itself every ``refresh_s`` seconds;
* ``/plotly.min.js`` — plotly's JavaScript, from the installed package (no CDN: it works offline).
"""
from __future__ import annotations

import html
from pathlib import Path

from .data import SessionCache, kill_state, list_sessions, live_positions, read_store_state


def create_app(log_dir: Path, *, store_url: str, root: Path, refresh_s: int = 10):
    from flask import Flask, Response, abort

    from .. import plots
    from ..review import fmt_usd, veto_table

    app = Flask("hydra_dashboard")
    cache = SessionCache()
    rendered: dict = {}
    log_dir = Path(log_dir).resolve()

    @app.get("/plotly.min.js")
    def plotly_js():
        from plotly.offline import get_plotlyjs
        return Response(get_plotlyjs(), mimetype="application/javascript",
                        headers={"Cache-Control": "max-age=86400"})

    @app.get("/")
    def index():
        rows = []
        for e in list_sessions(log_dir):
            ret = "" if e.return_pct is None else f"{e.return_pct:+.2f}%"
            rows.append(f"<tr><td><a href='/session/{html.escape(e.rel)}'>{html.escape(e.session_id)}</a></td>"
                        f"<td>{html.escape(e.mode)}</td><td>{html.escape(e.started_at)}</td>"
                        f"<td>{'<b>running</b>' if e.running else html.escape(str(e.ended_at))}</td>"
                        f"<td>{ret}</td><td>{html.escape(e.rel)}</td></tr>")
        body = (f"<h1>HYDRA sessions</h1><p class='note'>{html.escape(str(log_dir))}</p>"
                "<table id='sessions'><thead><tr><th>session</th><th>mode</th><th>started</th><th>ended</th>"
                "<th>return</th><th>file</th></tr></thead><tbody>"
                + ("".join(rows) or "<tr><td colspan=6>no session logs yet</td></tr>") + "</tbody></table>")
        return _page("HYDRA sessions", body)

    @app.get("/session/<path:rel>")
    def session(rel: str):
        path = (log_dir / rel).resolve()
        if log_dir not in path.parents or not path.name.startswith("session-") or path.suffix != ".json" \
                or not path.is_file():
            abort(404)
        version = cache.version(path)   # taken first: a page built from newer files is only re-built later
        try:
            doc = cache.get(path)
        except (OSError, ValueError) as exc:
            return _page("unreadable session", f"<h1>cannot read {html.escape(rel)}</h1><p>{html.escape(str(exc))}</p>"), 500
        s = doc.get("session") or {}
        running = s.get("ended_at") is None
        store = read_store_state(store_url, root)
        kill = kill_state(store, doc)
        summary = doc.get("summary") or {}
        last = (doc.get("cycles") or [{}])[-1]
        head = (f"<h1>{html.escape(s.get('session_id', '?'))}</h1>"
                f"<p>mode <b>{html.escape(str(s.get('mode')))}</b> · strategies {html.escape(', '.join(s.get('strategies') or []))}"
                f" · started {html.escape(str(s.get('started_at')))} · "
                + ("<b id='running'>running</b> (this page reloads every "
                   f"{refresh_s} s)" if running else f"ended {html.escape(str(s.get('ended_at')))}")
                + f"</p><p>last cycle #{last.get('cycle', '-')} at {html.escape(str(last.get('ts', '-')))} · regime "
                f"<b>{html.escape(str(last.get('regime', '-')))}</b> · equity {fmt_usd(float(last['equity_usd'])) if last.get('equity_usd') else 'n/a'}"
                + (f" · return {summary['return_pct']:+.2f}%" if summary.get("return_pct") is not None else "")
                + f"</p><p id='kill' class='{'killed' if kill.get('killed') else 'armed'}'>kill switch: "
                f"{html.escape(kill['text'])}</p>")
        parts = [head, _positions_html(doc, store, fmt_usd)]
        hit = rendered.get(path)
        if hit and hit[0] == version:   # the charts and tables of files that have not changed since
            return _page(s.get("session_id", "session"), "".join(parts + hit[1]), refresh_s if running else None)
        heavy = _heavy_parts(doc, summary)
        rendered[path] = (version, heavy)
        while len(rendered) > 4:
            rendered.pop(next(iter(rendered)))
        return _page(s.get("session_id", "session"), "".join(parts + heavy), refresh_s if running else None)

    return app


def _heavy_parts(doc: dict, summary: dict) -> list[str]:
    """Everything of a session page that comes from its log alone (cached while the files do not change)."""
    from .. import plots
    from ..review import veto_table
    parts = ["<h2>Equity and drawdown</h2>", plots.figure_html(plots.equity_figure(doc), "equity-chart")]
    prices = plots.price_frame(doc)
    symbols = plots.traded_symbols(doc)
    if symbols:
        parts.append("<h2>Prices and trades</h2>")
        for sym in symbols:
            parts.append(plots.figure_html(plots.price_figure(doc, sym, prices),
                                           f"price-{sym.replace('/', '-')}"))
    parts.append(_trades_html(doc))
    parts.append(veto_table(doc.get("cycle_details", []), summary).html().replace("<table>", "<table id='vetoes'>", 1))
    parts.append(_decisions_html(doc))
    parts.append("<h2>Strategy weights</h2>" + plots.figure_html(plots.weights_figure(doc), "weights-chart"))
    parts.append(_modifiers_html(doc))
    return parts


def _positions_html(doc: dict, store: dict, fmt_usd) -> str:
    from .. import plots
    from_log = plots.open_positions_from_log(doc)
    live = live_positions(store, doc)
    rows = []
    for sym, p in sorted(from_log.items()):
        trail = ""
        stop, target = p.get("stop"), p.get("target")
        if live and sym in live:   # the store's plan: the stop may have trailed since the entry
            lp = live[sym]
            stop, target = lp.get("stop_price", stop), lp.get("target_price", target)
            trail = f"{lp['trailing_stop_pct']}%" if lp.get("trailing_stop_pct") else ""
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            sym, p.get("strategy") or "", f"{p['qty']:g}", f"{p['entry_price']:,.2f}",
            "n/a" if p["mark"] is None else f"{p['mark']:,.2f}", _level(stop, p["entry_price"]),
            _level(target, p["entry_price"]), trail or "-",
            "n/a" if p["unrealised_usd"] is None else fmt_usd(p["unrealised_usd"]), p.get("opened_at") or "")) + "</tr>")
    return ("<h2>Open positions</h2><table id='positions'><thead><tr><th>symbol</th><th>strategy</th><th>qty</th>"
            "<th>entry</th><th>mark</th><th>stop</th><th>target</th><th>trail</th><th>unrealised</th><th>opened</th>"
            "</tr></thead><tbody>" + ("".join(rows) or "<tr><td colspan=10>no open position</td></tr>")
            + "</tbody></table>")


def _level(value, entry: float) -> str:
    """A stop or target; a level 10x away or more is a plugin's "no level" (sma_crossover exits on its own
    crossover), shown as it is and marked so."""
    if value is None:
        return "n/a"
    v = float(value)
    far = entry > 0 and (v >= 10 * entry or v <= entry / 10)
    return f"{v:,.2f}" + (" (out of reach: the plugin exits itself)" if far else "")


def _trades_html(doc: dict) -> str:
    cols = ("strategy", "symbol", "side", "qty", "entry_time", "entry_price", "exit_time", "exit_price", "pnl_usd",
            "r_multiple", "regime_at_entry", "exit_reason")
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(t.get(c, '')))}</td>" for c in cols) + "</tr>"
                   for t in doc.get("trades", []))
    return (f"<h2>Trades ({len(doc.get('trades', []))})</h2><table id='trades'><thead><tr>"
            + "".join(f"<th>{c}</th>" for c in cols) + "</tr></thead><tbody>"
            + (rows or "<tr><td colspan=12>no closed trade</td></tr>") + "</tbody></table>")


def _decisions_html(doc: dict, last: int = 100) -> str:
    rows = []
    for c in reversed(doc.get("cycle_details", [])):
        for d in c.get("decisions") or []:
            rows.append("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in (
                c.get("cycle"), c.get("ts"), d.get("strategy"), d.get("symbol"),
                "APPROVED" if d.get("approved") else "VETO", d.get("layer"), d.get("rule"), d.get("reason"),
                d.get("qty"))) + "</tr>")
        if len(rows) >= last:
            break
    return (f"<h2>Decisions (the last {last})</h2><table id='decisions'><thead><tr><th>cycle</th><th>time</th>"
            "<th>strategy</th><th>symbol</th><th>verdict</th><th>layer</th><th>rule</th><th>reason</th><th>qty</th>"
            "</tr></thead><tbody>" + ("".join(rows) or "<tr><td colspan=9>no proposal yet</td></tr>")
            + "</tbody></table>")


def _modifiers_html(doc: dict) -> str:
    from .. import plots
    trace = plots.modifier_trace(doc)
    if not trace:
        return ("<h2>Signal modifiers (cross-asset graph)</h2><p class='note' id='modifiers'>no signal modifier "
                "ran in this session</p>")
    keys = ["cycle", "ts"] + [k for k in trace[0] if k not in ("cycle", "ts")]
    return ("<h2>Signal modifiers (cross-asset graph)</h2><table id='modifiers'><thead><tr>"
            + "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(str(a.get(k, '')))}</td>" for k in keys) + "</tr>"
                      for a in trace) + "</tbody></table>")


_CSS = ("body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1300px;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0;font-size:90%}td,th{padding:3px 8px;border-bottom:1px solid #ddd;"
        "text-align:left}th{background:#f4f4f4}.note{color:#666}.killed{color:#fff;background:#c00;padding:4px}"
        ".armed{color:#060}a{color:#1f5fa8}")


def _page(title: str, body: str, refresh_s: int | None = None) -> str:
    refresh = f"<meta http-equiv='refresh' content='{refresh_s}'>" if refresh_s else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'>{refresh}<title>{html.escape(title)}</title>"
            f"<script src='/plotly.min.js'></script><style>{_CSS}</style></head><body>"
            f"<p><a href='/'>all sessions</a></p>{body}</body></html>")


__all__ = ["create_app"]
