"""Monitoring the signal scorer's live predictions against realised outcomes (ML spec "Model Monitoring").

From a session's journal (``cycle_details``) and closed trades: each trade whose entry the scorer scored
(the approved decision's proposal carries ``ml_score``) is one prediction; its outcome is whether the
trade made money after costs. Rolling accuracy (prediction >= 0.5 vs outcome) over the last ``window``
scored trades, and the calibration buckets of the specification (0.5, 0.6, ... 0.9, ten wide). Alerts at
the specification's levels: accuracy below the expected 0.65 minus 0.05; a bucket with more than ten
trades whose observed win rate is more than 0.10 from the bucket's middle.
"""
from __future__ import annotations

from datetime import datetime

EXPECTED_ACCURACY = 0.65
ACCURACY_DROP = 0.05
CALIBRATION_TOLERANCE = 0.10
MIN_BUCKET = 10


def _ts(x) -> datetime | None:
    try:
        return datetime.fromisoformat(str(x).replace("Z", "+00:00"))
    except ValueError:
        return None


def scored_outcomes(cycle_details: list[dict], trades: list[dict]) -> list[tuple[float, int]]:
    """(ml_score, won) per closed trade whose entry proposal was scored, in entry order."""
    scored: dict[tuple[str, str], list[tuple[datetime, float]]] = {}
    for cd in cycle_details:
        ts = _ts(cd.get("ts"))
        approved = {(d.get("strategy"), d.get("symbol")) for d in cd.get("decisions") or [] if d.get("approved")}
        for p in cd.get("proposals") or []:
            key = (p.get("strategy"), p.get("symbol"))
            if p.get("ml_score") is not None and key in approved and ts is not None:
                scored.setdefault(key, []).append((ts, float(p["ml_score"])))
    out = []
    for t in sorted(trades, key=lambda t: str(t.get("entry_time"))):
        entry = _ts(t.get("entry_time"))
        cands = [s for ts, s in scored.get((t.get("strategy"), t.get("symbol")), []) if entry and ts <= entry]
        if cands:
            out.append((cands[-1], 1 if float(t.get("pnl_usd") or 0) > 0 else 0))
    return out


def monitor(pairs: list[tuple[float, int]], window: int = 50) -> dict:
    recent = pairs[-window:]
    res: dict = {"scored_trades": len(pairs), "window": len(recent), "accuracy": None, "buckets": [], "alerts": []}
    if not recent:
        return res
    acc = sum((p >= 0.5) == bool(y) for p, y in recent) / len(recent)
    res["accuracy"] = round(acc, 4)
    if len(recent) >= MIN_BUCKET and acc < EXPECTED_ACCURACY - ACCURACY_DROP:
        res["alerts"].append(f"accuracy {acc:.2f} over the last {len(recent)} scored trades is below "
                             f"{EXPECTED_ACCURACY - ACCURACY_DROP:.2f}: retrain (spec alert level)")
    for lo in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        inb = [y for p, y in recent if lo <= p < lo + 0.1 or (lo == 0.9 and p == 1.0)]
        if not inb:
            continue
        actual = sum(inb) / len(inb)
        res["buckets"].append({"bucket": f"{lo:.1f}-{lo + 0.1:.1f}", "n": len(inb), "observed": round(actual, 4)})
        if len(inb) > MIN_BUCKET and abs(actual - (lo + 0.05)) > CALIBRATION_TOLERANCE:
            res["alerts"].append(f"calibration drift in {lo:.1f}-{lo + 0.1:.1f}: observed {actual:.2f} over "
                                 f"{len(inb)} trades, expected about {lo + 0.05:.2f}")
    return res
