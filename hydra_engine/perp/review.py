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


def perp_review(doc: dict):
    """(tables, metrics) for ``review.build_review``; nothing when the session traded no perpetual."""
    from ..review import Table, fmt_num, fmt_pct, fmt_usd
    stats = primitive_stats(doc)
    if not stats:
        return [], {}
    rows = [[k, str(v["trades"]), fmt_pct(v["win_rate"], 1), fmt_usd(v["pnl_usd"]), fmt_num(v["avg_r"]),
             fmt_usd(v["funding_received_usd"]), fmt_usd(v["funding_paid_usd"]), fmt_usd(v["funding_net_usd"]),
             str(v["liquidations"])] for k, v in stats.items()]
    table = Table("Perpetuals per primitive", ["strategy", "trades", "win rate", "P&L", "avg R", "funding received",
                                               "funding paid", "funding net", "liquidations"], rows,
                  "closed perp trades only; funding is already inside P&L; liquidation = exit reason 'liquidation'")
    return [table], {"perp_primitives": M.json_safe(stats)}


__all__ = ["perp_symbols", "primitive_stats", "perp_review"]
