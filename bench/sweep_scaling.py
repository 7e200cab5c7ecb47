#!/usr/bin/env python3
"""Sweep scaling (issue #24): the same N-configuration sweep of one-year backtests on a dask LocalCluster of
1 and of 2 worker processes; wall time, tasks/s and the scaling ratio.

    python bench/sweep_scaling.py                                  # 100 configs, 2024, workers 1 then 2
    python bench/sweep_scaling.py --workers 2,1 --detector hmm --grid 3   # 9 configs with the shipped HMM

The configurations are a GRID × GRID grid over liquidation_cascade.stop_pct and risk.max_position_pct on the
shipped hydra.toml (universe, perp module, risk) with --plugins enabled (default liquidation_cascade alone;
``--plugins shipped``: every enabled plugin, ~12 s CPU per one-year task), over ../shared/data. The sweep's results of every
worker count are asserted identical (a distributed run may not change a number). Wall time includes starting
the LocalCluster and every worker's first data read; nothing is cached between the runs (fresh cluster).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import SHARED_DATA, emit, stamp  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--start", default="2024-01-01")
    ap.add_argument("--end", default="2025-01-01")
    ap.add_argument("--grid", type=int, default=10, help="values per parameter (configs = grid²)")
    ap.add_argument("--workers", default="1,2", help="worker counts, in the order run")
    ap.add_argument("--detector", default="trend_vol_rule", choices=["trend_vol_rule", "hmm"])
    ap.add_argument("--plugins", default="liquidation_cascade",
                    help="strategies.enabled, comma-separated; 'shipped' keeps hydra.toml's list (every plugin)")
    ap.add_argument("--symbols", default="shipped",
                    help="universe.symbols, comma-separated (perp module off); 'shipped': hydra.toml's, perps on")
    ap.add_argument("--data", default=str(SHARED_DATA))
    args = ap.parse_args()

    from hydra_engine.config import load_settings
    from hydra_engine.sweep import run_sweep

    g = args.grid
    stops = [round(1.0 + 0.25 * k, 2) for k in range(g)]
    sizes = [round(1.0 + 2.0 * k / max(g - 1, 1), 3) for k in range(g)]
    params = {"strategies.params.liquidation_cascade.stop_pct": {"values": stops},
              "risk.max_position_pct": {"values": sizes}}
    base = load_settings()
    overrides = {"engine": base.engine.model_copy(update={"regime_detector": args.detector})}
    if args.detector == "trend_vol_rule":
        overrides["engine"] = overrides["engine"].model_copy(update={"regime_refit_days": 0})
    if args.plugins != "shipped":
        overrides["strategies"] = base.strategies.model_copy(update={"enabled": args.plugins.split(",")})
    if args.symbols != "shipped":
        overrides["universe"] = base.universe.model_copy(update={"symbols": args.symbols.split(",")})
        overrides["perps"] = base.perps.model_copy(update={"enabled": False})
    settings = base.model_copy(update=overrides)
    reference = None
    runs = []
    for n in [int(x) for x in args.workers.split(",")]:
        with tempfile.TemporaryDirectory(prefix="hydra-sweep-bench-") as tmp:
            t0 = time.perf_counter()
            res = run_sweep(settings, data_dir=Path(args.data), start=date.fromisoformat(args.start),
                            end=date.fromisoformat(args.end), params=params, out=Path(tmp) / "sweep",
                            workers=n, progress=False)
            wall = time.perf_counter() - t0
        assert not res["failed"], res["failed"][:2]
        numbers = [{k: v for k, v in r.items() if k not in ("runtime_s", "worker")} for r in res["rows"]]
        if reference is None:
            reference = numbers
        assert numbers == reference, "a different worker count changed a result"
        task_s = sum(r["runtime_s"] for r in res["rows"])
        out = {"bench": "sweep_scaling", **stamp(), "workers": n, "configs": res["configs"], "tasks": res["tasks"],
               "span": f"{args.start}..{args.end}", "detector": args.detector, "plugins": args.plugins, "symbols": args.symbols, "wall_s": round(wall, 2),
               "sweep_s": res["elapsed_s"], "tasks_per_s": round(res["tasks"] / wall, 3),
               "mean_task_s": round(task_s / res["tasks"], 3),
               "cycles_per_task": res["rows"][0]["cycles"], "trades_min_max": [
                   min(r["trades"] for r in res["rows"]), max(r["trades"] for r in res["rows"])]}
        runs.append(out)
        emit(out)
    if len(runs) >= 2:
        one = next((r for r in runs if r["workers"] == 1), runs[0])
        for r in runs:
            if r is not one:
                emit({"bench": "sweep_scaling_ratio", "workers": r["workers"],
                      "speedup_vs_1": round(one["wall_s"] / r["wall_s"], 3),
                      "efficiency": round(one["wall_s"] / r["wall_s"] / r["workers"], 3)})


if __name__ == "__main__":
    main()
