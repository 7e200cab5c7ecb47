"""Every gap said at the start (issue #17): a coverage table before a backtest or replay runs.

Per symbol and data kind (bars, funding, open interest, and the plugins' event feeds): the part of the
requested span the data covers, and for each enabled strategy the inputs it loses. A strategy none of whose
symbols has bar data in the span gets a ``note:``; the same table and notes go to ``metrics.json``. Rows the
replay refused (bad prices, duplicates, out-of-order rows, a stray leading fragment) are counted here too,
so they reach the console and not only the session JSON.
"""
from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np

from .domain import UTC


def _iso(s: float | None) -> str | None:
    return None if s is None else datetime.fromtimestamp(int(s), UTC).strftime("%Y-%m-%d")


def _row(symbol: str, kind: str, times: np.ndarray, a: float, b: float, source: str = "", **extra) -> dict:
    inside = times[(times >= a) & (times < b)] if len(times) else times
    first, last = (float(inside[0]), float(inside[-1])) if len(inside) else (None, None)
    share = 0.0 if first is None else min(1.0, max(0.0, (last - first) / (b - a))) if b > a else 0.0
    # the share of the span between the first and the last value inside it; "from"/"to" say where it sits
    status = "none" if first is None else ("full" if (first - a) < 5 * 86400 and (b - last) < 5 * 86400 else "partial")
    return {"symbol": symbol, "kind": kind, "from": _iso(first), "to": _iso(last), "share": round(share, 4),
            "status": status, "values": int(len(inside)), "source": source, **extra}


def coverage_report(market, strategies, start: datetime, end: datetime) -> dict:
    """The coverage of ``market`` (a ReplayMarketData) over [start, end) for ``strategies``."""
    a, b = start.timestamp(), end.timestamp()
    rows: list[dict] = []
    index: dict[tuple[str, str], dict] = {}
    sources = getattr(market, "bar_source_notes", {}) or {}
    for symbol, bars in market._bars.items():
        r = _row(symbol, "bars", bars.close_ts, a, b, sources.get(symbol, ""))
        rows.append(r)
        index[("bars", symbol)] = r
    for (kind, symbol), p in market._points.items():
        r = _row(symbol, kind, p.ts, a, b)
        rows.append(r)
        index[(kind, symbol)] = r
    for symbol, ib in (getattr(market, "_intraday", None) or {}).items():   # 15-minute candles (issue #18)
        r = _row(symbol, "intraday", ib.close_ts, a, b)
        rows.append(r)
        index[("intraday", symbol)] = r
    for feed in getattr(market, "event_feeds", ()):
        times = np.array(sorted(e.happened_at.timestamp() for e in feed.all_events), dtype=float) \
            if hasattr(feed, "all_events") else np.array([], dtype=float)
        r = _row(feed.name, "events", times, a, b)
        rows.append(r)
        for kind in feed.kinds:
            index[("events", kind)] = r
    losses: dict[str, list[str]] = {}
    notes: list[str] = []
    for strat in strategies:
        lost = []
        for need in strat.data_needs:
            r = index.get((need.kind, need.symbol))
            if r is None:   # the catalog may know the series while this run's universe leaves it out
                lost.append(f"{need.kind} {need.symbol}: " + ("not in this run's universe (the data has it)"
                                                              if _catalogued(market, need.kind, need.symbol)
                                                              else "not in the data"))
            elif r["status"] != "full":
                lost.append(f"{need.kind} {need.symbol}: " + ("none in the span" if r["status"] == "none"
                                                              else f"only {r['from']} .. {r['to']}"))
        losses[strat.name] = lost
        bar_symbols = [n.symbol for n in strat.data_needs if n.kind == "bars"] or list(getattr(strat, "assets", ()))
        if bar_symbols and all((index.get(("bars", s)) or {}).get("status", "none") == "none" for s in bar_symbols):
            notes.append(f"strategy {strat.name}: none of its symbols ({', '.join(bar_symbols)}) has bar data in "
                         f"{_iso(a)} .. {_iso(b)}: it cannot trade in this span")
    quality = {k: v for k, v in vars(market.quality).items() if v}
    dropped = sum(sum(v.values()) for v in quality.values())
    if dropped:
        notes.append("refused rows: " + "; ".join(f"{k.replace('_', ' ')}: " + ", ".join(f"{s} {n}" for s, n in v.items())
                                                  for k, v in quality.items()))
    return {"span": [_iso(a), _iso(b)], "rows": rows, "strategy_losses": losses, "notes": notes,
            "data_quality": quality}


def format_coverage(rep: dict) -> str:
    lines = [f"data coverage {rep['span'][0]} .. {rep['span'][1]} (end exclusive):",
             f"  {'symbol':<26} {'kind':<14} {'from':<10} {'to':<10} {'span':>6}  source"]
    for r in rep["rows"]:
        lines.append(f"  {r['symbol']:<26} {r['kind']:<14} {r['from'] or '-':<10} {r['to'] or '-':<10} "
                     f"{100 * r['share']:>5.0f}%  {r['source']}{'' if r['status'] == 'full' else '  <- ' + r['status']}")
    for name, lost in rep["strategy_losses"].items():
        lines.append(f"  strategy {name}: " + ("all inputs cover the span" if not lost else "loses " + "; ".join(lost)))
    return "\n".join(lines)


def tick_span(ticks) -> tuple[datetime, datetime]:
    """The days a run's clock covers: midnight (UTC) of its first tick to midnight after its last."""
    first, last = ticks[0].astimezone(UTC), ticks[-1].astimezone(UTC)
    day = lambda t: datetime(t.year, t.month, t.day, tzinfo=UTC)   # noqa: E731
    return day(first), day(last) + timedelta(days=1)


def announce(market, strategies, start: datetime, end: datetime, say=None) -> dict:
    """The coverage report over [start, end); ``say(text)`` (e.g. ``print``) hears the table and its notes."""
    rep = coverage_report(market, strategies, start, end)
    if say is not None:
        say(format_coverage(rep))
        for note in rep["notes"]:
            say(f"note: {note}")
    return rep


def _catalogued(market, kind: str, symbol: str) -> bool:
    """Whether the data folder holds a catalogued source for this series (then a missing row means the
    run's configuration did not load it, not that the data lacks it)."""
    from .data.catalog import BAR_SOURCES, POINT_SOURCES
    folder = getattr(market, "folder", None)
    if folder is None:
        return False
    if kind == "bars":
        paths = [BAR_SOURCES[symbol].path] if symbol in BAR_SOURCES else []
    else:
        paths = [p.path for p in POINT_SOURCES if p.kind == kind and p.symbol == symbol]
    return any((folder / path).exists() for path in paths)
