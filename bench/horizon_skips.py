#!/usr/bin/env python3
"""Event-horizon replay: how many of a backtest's ticks are skipped (issue #24 item 1, RESULTS.md §13).

The `backtest` command's HYDRA run (replay data, simulated broker, every layer, journal, document, store)
over the span with ``[horizon] enabled = true``, counting the ticks the driver caught up instead of
visiting (``horizon.catch_up``); ``--off`` runs tick by tick for the wall-time control.

  python bench/horizon_skips.py [--start 2020-01-01 --end 2025-01-01] [--shipped]
                                [--strategies liquidation_cascade] [--perps] [--off]

Default: hydra.toml restricted to the components that publish promises (the RiskManager, the HMM
detector and its refitter, the strategies named by --strategies), the perp module off (a perp venue
settles funding: it never promises) and no signal modifier. ``--shipped``: hydra.toml unchanged.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, stamp  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--start", default="2020-01-01")
    ap.add_argument("--end", default="2025-01-01")
    ap.add_argument("--shipped", action="store_true", help="hydra.toml as shipped (every plugin, perps)")
    ap.add_argument("--strategies", default="liquidation_cascade")
    ap.add_argument("--perps", action="store_true")
    ap.add_argument("--off", action="store_true", help="tick by tick (the control)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from hydra_engine import horizon
    from hydra_engine.app import build_sim_session, run_session
    from hydra_engine.backtest import _defer_snapshots, backtest_settings
    from hydra_engine.config import load_settings
    with tempfile.TemporaryDirectory(prefix="hydra-hz-") as tmp:
        out = Path(tmp)
        s = backtest_settings(load_settings(ROOT / "hydra.toml"), SHARED_DATA, date.fromisoformat(args.start),
                              date.fromisoformat(args.end), out)
        if not args.shipped:
            s = s.model_copy(update={
                "strategies": s.strategies.model_copy(update={"enabled": args.strategies.split(",")}),
                "perps": s.perps.model_copy(update={"enabled": args.perps}),
                "modifiers": s.modifiers.model_copy(update={"enabled": []})})
        if args.off:
            s = s.model_copy(update={"horizon": s.horizon.model_copy(update={"enabled": False})})
        session = build_sim_session(s, mode="backtest", data_dir=SHARED_DATA, log_dir=out)
        _defer_snapshots(session.session_log)
        e = session.engine
        spans: list[int] = []
        real = horizon.catch_up
        horizon.catch_up = lambda engine, ticks: (spans.append(len(ticks)), real(engine, ticks))
        t0 = time.perf_counter()
        summary = run_session(session, progress=False)
        run_s = time.perf_counter() - t0
        horizon.catch_up = real
    cycles = summary["cycles"]
    r = {"bench": "horizon_skips", "span": f"{args.start}..{args.end}", "shipped": args.shipped,
         "strategies": [st.name for st in e.strategies], "perps": s.perps.enabled, "risk": type(e.risk).__name__,
         "detector": getattr(e.regime_detector, "name", "?"), "refitter": e.regime_refitter is not None,
         "horizon": "off" if args.off else "on", "cycles": cycles, "skipped": sum(spans), "spans": len(spans),
         "skipped_pct": round(100 * sum(spans) / cycles, 1) if cycles else 0.0, "longest_span": max(spans, default=0),
         "run_s": round(run_s, 1), "closed_trades": summary["closed_trades"],
         "final_equity_usd": summary["final_equity_usd"], **stamp()}
    print(json.dumps(r))


if __name__ == "__main__":
    main()
