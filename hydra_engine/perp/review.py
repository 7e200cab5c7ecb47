"""The perp module in ``review`` (issue #20 (e)): per primitive (strategy), over the trades on perpetuals
in the session log -- trades, win rate, net P&L, average R, funding received, funding paid, net funding
and liquidations (trades whose exit reason is ``liquidation``). Read from the log alone.

Which trades are perp trades: the session header's ``perp_symbols`` (written by the composition root when
``[perps]`` is on); a log without it (older, or a live session) falls back to the symbols with a
reduce-only order or non-zero funding on a trade. Funding on a trade is ``funding_usd`` (+ received,
- paid), already inside ``pnl_usd``; it is reported, not added again.
"""
from __future__ import annotations

from decimal import Decimal

from .. import metrics as M

ZERO = Decimal(0)


def perp_symbols(doc: dict) -> set[str]:
    session = doc.get("session") or {}
    named = session.get("perp_symbols")
    if named:
        return set(named)
    out = {o["symbol"] for o in doc.get("orders", []) if o.get("reduce_only")}
    out |= {t["symbol"] for t in doc.get("trades", []) if Decimal(str(t.get("funding_usd") or 0)) != 0}
    return out


def primitive_stats(doc: dict) -> dict[str, dict]:
    """Per strategy over the perp trades, plus an ``all perps`` row; amounts in USD (USDT read as USD)."""
    symbols = perp_symbols(doc)
    trades = [t for t in doc.get("trades", []) if t.get("symbol") in symbols]
    groups: dict[str, list[dict]] = {}
    for t in trades:
        groups.setdefault(str(t.get("strategy") or "?"), []).append(t)
    out = {}
    for name, ts in [*sorted(groups.items()), *([("all perps", trades)] if trades else [])]:
        st = M.trade_stats(ts)
        funding = [Decimal(str(t.get("funding_usd") or 0)) for t in ts]
        received = sum((f for f in funding if f > 0), ZERO)
        paid = -sum((f for f in funding if f < 0), ZERO)
        out[name] = {"trades": st["trades"], "win_rate": st["win_rate"], "pnl_usd": st["pnl_usd"],
                     "avg_r": st["avg_r"], "funding_received_usd": float(received), "funding_paid_usd": float(paid),
                     "funding_net_usd": float(received - paid),
                     "liquidations": sum(1 for t in ts if t.get("exit_reason") == "liquidation")}
    return out


def venue_fill_stats(doc: dict) -> dict[str, dict]:
    """Per venue named on the fills (``Fill.venue``, issue #20): fills, fees and traded notional in USD (USDT
    read as USD). A fill logged before fills named their venue counts under ``(not recorded)``."""
    out: dict[str, dict] = {}
    for f in doc.get("fills", []):
        v = out.setdefault(str(f.get("venue") or "(not recorded)"), {"fills": 0, "fees_usd": ZERO, "notional_usd": ZERO})
        v["fills"] += 1
        v["fees_usd"] += Decimal(str(f.get("fee_usd") or 0))
        v["notional_usd"] += Decimal(str(f.get("qty") or 0)) * Decimal(str(f.get("price") or 0))
    return {k: {"fills": v["fills"], "fees_usd": float(v["fees_usd"]), "notional_usd": float(v["notional_usd"])}
            for k, v in sorted(out.items())}


def perp_review(doc: dict):
    """(tables, metrics) for ``review.build_review``: the fills per venue when the session spans venues
    (the header names them, or the fills name more than one), and the per-primitive table when it traded a
    perpetual; nothing for a one-venue session without perps."""
    from ..review import Table, fmt_num, fmt_pct, fmt_usd
    tables, metrics = [], {}
    venues = venue_fill_stats(doc)
    if venues and (len(venues) > 1 or (doc.get("session") or {}).get("venues")):
        tables.append(Table("Fills per venue", ["venue", "fills", "fees", "notional"],
                            [[k, str(v["fills"]), fmt_usd(v["fees_usd"]), fmt_usd(v["notional_usd"])]
                             for k, v in venues.items()], "each fill names the venue that executed it"))
        metrics["fills_per_venue"] = M.json_safe(venues)
    stats = primitive_stats(doc)
    if not stats:
        return tables, metrics
    rows = [[k, str(v["trades"]), fmt_pct(v["win_rate"], 1), fmt_usd(v["pnl_usd"]), fmt_num(v["avg_r"]),
             fmt_usd(v["funding_received_usd"]), fmt_usd(v["funding_paid_usd"]), fmt_usd(v["funding_net_usd"]),
             str(v["liquidations"])] for k, v in stats.items()]
    table = Table("Perpetuals per primitive", ["strategy", "trades", "win rate", "P&L", "avg R", "funding received",
                                               "funding paid", "funding net", "liquidations"], rows,
                  "closed perp trades only; funding is already inside P&L; liquidation = exit reason 'liquidation'")
    return [*tables, table], {**metrics, "perp_primitives": M.json_safe(stats)}


__all__ = ["perp_symbols", "primitive_stats", "perp_review", "venue_fill_stats"]
