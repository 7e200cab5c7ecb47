"""The LLM news gate's evidence in ``hydra review`` (issue #22), from the session log alone.

* **Blocked entries and what they would have returned.** Every decision refused by ``llm_news`` is
  matched with its proposal in the same cycle (side, entry, stop, target, expected holding). The trade
  is walked forward over the journal's later cycle prices: it ends at the first close beyond its stop or
  target (at that level), else after its expected holding (at most ``MAX_WALK``), else at the last price
  in the log. Repeated refusals of the same strategy/symbol/side in consecutive cycles are one trade.
  Costs are not deducted and fills are at cycle closes: an estimate of what the gate kept out, not a
  replay of it.
* **Agreement** (the specification's "LLM agreement > 70 %"): each bullish or bearish verdict (``exit``
  counts as bearish; ``hold`` has no direction) against the symbol's move over the next ``horizon``
  hours, from the first cycle price at or after the verdict to the first at or after the horizon. The
  control is the base rate: how often the move was up over the same windows (what "always bullish"
  would score). With no verdict in the log it is stated as unmeasured.
"""
from __future__ import annotations

import math
from bisect import bisect_left
from datetime import datetime, timedelta

AGREEMENT_TARGET = 0.70
DEFAULT_HORIZON_H = 4.0
MAX_WALK = timedelta(days=7)
MAX_ROWS = 20


def _t(text: str) -> datetime:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00"))


def _prices(details: list[dict]) -> dict[str, tuple[list[datetime], list[float]]]:
    out: dict[str, tuple[list[datetime], list[float]]] = {}
    for cd in details:
        ts = _t(cd["ts"])
        for symbol, price in (cd.get("prices") or {}).items():
            if isinstance(price, (int, float)) and math.isfinite(price) and price > 0:
                times, values = out.setdefault(symbol, ([], []))
                if not times or ts > times[-1]:
                    times.append(ts)
                    values.append(float(price))
    return out


def _price_at(series, at: datetime) -> tuple[datetime, float] | None:
    times, values = series
    i = bisect_left(times, at)
    return (times[i], values[i]) if i < len(times) else None


def _walk(series, start: datetime, side: str, entry: float, stop: float | None, target: float | None,
          holding: timedelta) -> tuple[float, str, datetime]:
    """(return as a fraction, why it ended, when) of a trade entered at ``entry`` after ``start``."""
    times, values = series
    sign = 1.0 if side in ("buy", "long") else -1.0
    i = bisect_left(times, start) + 1          # the entry's own cycle is the fill; later closes manage it
    until = start + min(holding, MAX_WALK)
    last_price, last_t, why = entry, start, "end of log"
    for k in range(i, len(times)):
        t, p = times[k], values[k]
        if stop is not None and (p - stop) * sign <= 0:
            return sign * (stop - entry) / entry, "stop", t
        if target is not None and (p - target) * sign >= 0:
            return sign * (target - entry) / entry, "target", t
        last_price, last_t = p, t
        if t >= until:
            why = "time"
            break
    return sign * (last_price - entry) / entry, why, last_t


def _num(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def blocked_trades(details: list[dict]) -> list[dict]:
    prices = _prices(details)
    out, previous = [], set()
    for cd in details:
        keys_now = set()
        proposals = {(p.get("strategy"), p.get("symbol")): p for p in cd.get("proposals", [])}
        for d in cd.get("decisions", []):
            if d.get("rule") != "llm_news" or d.get("approved"):
                continue
            p = proposals.get((d.get("strategy"), d.get("symbol")))
            if p is None:
                continue
            key = (d.get("strategy"), d.get("symbol"), p.get("side"))
            keys_now.add(key)
            if key in previous:
                continue                      # the same trade, refused again the next cycle
            entry, series = _num(p.get("entry_price")), prices.get(d.get("symbol"))
            row = {"ts": cd["ts"], "strategy": key[0], "symbol": key[1], "side": key[2], "reason": d.get("reason", ""),
                   "return": None, "ended": "no price", "state": (d.get("gate") or {}).get("state", "")}
            if entry and series:
                holding = timedelta(seconds=_num(p.get("expected_holding")) or MAX_WALK.total_seconds())
                r, why, _ = _walk(series, _t(cd["ts"]), str(key[2]), entry, _num(p.get("stop_price")),
                                  _num(p.get("target_price")), holding)
                row.update({"return": r, "ended": why})
            out.append(row)
        previous = keys_now
    return out


def agreement(details: list[dict], horizon_h: float = DEFAULT_HORIZON_H) -> dict:
    prices = _prices(details)
    horizon = timedelta(hours=horizon_h)
    verdicts = [v for cd in details for v in cd.get("llm_verdicts", []) if v.get("action")]
    per_symbol: dict[str, list[int]] = {}
    agree = measured = up = 0
    for v in verdicts:
        direction = {"bullish": 1, "bearish": -1, "exit": -1}.get(v["action"])
        series = prices.get(v["symbol"])
        if direction is None or series is None:
            continue
        made = _t(v["made_at"])
        a, b = _price_at(series, made), _price_at(series, made + horizon)
        if a is None or b is None or b[0] - a[0] < horizon or b[1] == a[1]:
            continue                              # no complete window in the log, or no move to agree with
        move = 1 if b[1] > a[1] else -1
        measured += 1
        agree += move == direction
        up += move == 1
        s = per_symbol.setdefault(v["symbol"], [0, 0])
        s[0] += move == direction
        s[1] += 1
    return {"verdicts": len(verdicts), "measured": measured, "agreement": agree / measured if measured else None,
            "base_rate_up": up / measured if measured else None, "horizon_h": horizon_h,
            "per_symbol": {k: {"measured": n, "agreement": a / n} for k, (a, n) in sorted(per_symbol.items())}}


def llm_review(doc: dict, horizon_h: float = DEFAULT_HORIZON_H):
    """``(tables, notes, metrics)`` for a session run with the LLM gate; nothing when it ran without it."""
    from ..review import Table, fmt_pct
    meta = (doc.get("session") or {}).get("llm")
    if not meta:
        return [], [], {}
    details = doc.get("cycle_details", [])
    blocks = blocked_trades(details)
    refusals = sum(1 for cd in details for d in cd.get("decisions", [])
                   if d.get("rule") == "llm_news" and not d.get("approved"))
    agr = agreement(details, horizon_h)
    notes = []
    if meta.get("note"):
        notes.append(f"LLM news gate: {meta['note']} -- blocks and agreement unmeasured")
    elif meta.get("mode") == "replay":
        notes.append("LLM news gate: verdicts recorded over past news by a model trained later may reflect what "
                     "followed; only verdicts recorded live are out of sample")
    measured = [b["return"] for b in blocks if b["return"] is not None]
    rows = [[b["ts"], b["symbol"], str(b["side"]), fmt_pct(b["return"]), b["ended"], b["reason"][:90]]
            for b in blocks[:MAX_ROWS]]
    summary = (f"{refusals} refusals = {len(blocks)} blocked trade(s); {len(measured)} priced: mean "
               f"{fmt_pct(sum(measured) / len(measured)) if measured else 'n/a'}, "
               f"{sum(r > 0 for r in measured)} would have gained, {sum(r <= 0 for r in measured)} would not "
               "(before costs; closes only)" + (f"; first {MAX_ROWS} shown" if len(blocks) > MAX_ROWS else ""))
    tables = [Table("LLM news gate: blocked entries (what they would have returned)",
                    ["time", "symbol", "side", "return", "ended", "verdict"], rows, summary)]
    if agr["measured"]:
        ok = "meets" if agr["agreement"] > AGREEMENT_TARGET else "misses"
        arows = [["all", str(agr["measured"]), fmt_pct(agr["agreement"], 1), fmt_pct(agr["base_rate_up"], 1)]]
        arows += [[k, str(v["measured"]), fmt_pct(v["agreement"], 1), ""] for k, v in agr["per_symbol"].items()]
        note = (f"direction vs the move over the next {horizon_h:g} h; {ok} the specification's > "
                f"{AGREEMENT_TARGET:.0%}; control: the share of up moves ('always bullish' scores that)")
    else:
        arows = []
        note = (f"unmeasured: {'no directional verdict' if agr['verdicts'] == 0 else 'no complete window'} "
                "in this session's log")
    tables.append(Table("LLM agreement (verdict direction vs the next hours' move)",
                        ["symbol", "verdicts", "agreement", "up moves (control)"], arows, note))
    return tables, notes, {"blocks": len(blocks), "refusals": refusals, "blocked_returns": measured, "agreement": agr}
