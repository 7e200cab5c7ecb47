"""Strategy 5 evidence (issue #19 item 5): does the cross-asset graph's modifier improve the other strategies?

The shipped ``hydra.toml`` backtested on ../shared/data with ``[modifiers] enabled = ["cross_asset"]`` and
with ``[]`` -- nothing else differs -- one calendar year at a time (each year its own session, run in
sequence), and the per-strategy results of both, plus the TLT trades (strategy ``cross_asset``) alone.

Walk-forward, not whole-span tuning: no parameter is fitted here. The graph is re-estimated every session on
the 250 sessions before it (past-only); the thresholds are the shipped defaults, fixed before this run; the
regime HMM refits every 90 days on the history known then (``engine.regime_refit_days``, as shipped).
The perp module is switched off and its five perp plugins dropped in both arms: they trade BTCUSDT/ETHUSDT,
which are no graph node, so the modifier never scales their signals (this keeps each run to minutes on the
shared 2-core machine). Costs: the shipped 10 bps fee + 5 bps slippage per side.

Run: python bench/cross_asset_modifier_ab.py [SHARED_DATA] [YEAR | YEAR:ARM ...]   (writes bench/out/issue19/)
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from hydra_engine.backtest import run_backtest  # noqa: E402
from hydra_engine.config import load_settings  # noqa: E402
from hydra_engine.tradelog import load_session  # noqa: E402

OUT = ROOT / "bench" / "out" / "issue19"
PERP_PLUGINS = {"funding_squeeze", "liquidation_reversal", "oi_divergence", "crowding_fade", "funding_carry"}


ARMS = ("off", "on", "on-granger")   # off: [] | on: the shipped modifier (lagcorr) | on-granger: method = "granger"


def arm_settings(arm: str):
    s = load_settings(ROOT / "hydra.toml")
    enabled = [n for n in s.strategies.enabled if n not in PERP_PLUGINS]
    params = dict(s.modifiers.params)
    if arm == "on-granger":
        params["cross_asset"] = {**params.get("cross_asset", {}), "method": "granger"}
    return s.model_copy(update={
        "strategies": s.strategies.model_copy(update={"enabled": enabled}),
        "modifiers": s.modifiers.model_copy(update={"enabled": [] if arm == "off" else ["cross_asset"],
                                                    "params": params}),
        "perps": s.perps.model_copy(update={"enabled": False}),
        "engine": s.engine.model_copy(update={"log_dir": tempfile.mkdtemp(prefix="hydra-ab-")}),
        "storage": s.storage.model_copy(update={"url": f"sqlite:///{tempfile.mkdtemp(prefix='hydra-ab-db-')}/h.db"}),
    })


def stats(trades: list[dict]) -> dict:
    pnl = [float(t["pnl_usd"]) for t in trades]
    rs = [float(t["r_multiple"]) for t in trades if t.get("r_multiple") is not None]
    return {"trades": len(trades), "wins": sum(p > 0 for p in pnl),
            "win_rate": round(sum(p > 0 for p in pnl) / len(pnl), 4) if pnl else None,
            "avg_r": round(sum(rs) / len(rs), 4) if rs else None, "pnl_usd": round(sum(pnl), 2),
            "fees_usd": round(sum(float(t.get("fees_usd") or 0) for t in trades), 2)}


def run_year(shared: Path, year: int, arm: str) -> dict:
    start = max(date(year, 1, 1), date(2020, 10, 1))   # 60+ sessions of HYG/SPY/VIX before the first cycle
    out = Path(tempfile.mkdtemp(prefix=f"hydra-ab-{year}-"))
    t0 = time.perf_counter()
    res = run_backtest(arm_settings(arm), data_dir=shared, start=start, end=date(year + 1, 1, 1), out=out,
                       progress=False, baselines=False)
    wall = time.perf_counter() - t0
    doc = load_session(out / res["session_log"])
    trades = doc["trades"]
    by = {}
    for t in trades:
        by.setdefault(t["strategy"], []).append(t)
    scaled = sum(len(c.get("modifiers") or []) for c in doc["cycle_details"])
    m = res["metrics"]["hydra"]
    return {"year": year, "modifier": arm, "start": str(start), "cycles": res["cycles"],
            "wall_s": round(wall, 1), "total_return": m.get("total_return"), "sharpe": m.get("sharpe"),
            "max_drawdown": m.get("max_drawdown"), "all": stats(trades),
            "per_strategy": {k: stats(v) for k, v in sorted(by.items())}, "modifier_scalings": scaled,
            "tlt_trades": [{k: t.get(k) for k in ("entry_time", "exit_time", "side", "entry_price", "exit_price", "qty",
                                                   "pnl_usd", "r_multiple", "exit_reason")}
                           for t in by.get("cross_asset", [])]}


def main(argv: list[str]) -> None:
    shared = Path(argv[0]) if argv else ROOT.parent / "shared" / "data"
    runs = []
    for a in argv[1:]:     # YEAR (every arm) or YEAR:ARM
        year, _, arm = a.partition(":")
        runs += [(int(year), x) for x in ((arm,) if arm else ARMS)]
    runs = runs or [(y, arm) for y in (2021, 2022, 2023, 2024) for arm in ARMS]
    if bad := [arm for _, arm in runs if arm not in ARMS]:
        raise SystemExit(f"arm {bad[0]!r}: expected one of {ARMS}")
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "modifier_ab.jsonl"
    for year, arm in runs:
        row = run_year(shared, year, arm)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{year} modifier {row['modifier']}: {row['all']} return {row['total_return']} "
              f"wall {row['wall_s']} s, {row['cycles']} cycles, {row['modifier_scalings']} scalings", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
