#!/usr/bin/env python3
"""Backtest throughput: the full pipeline (the `backtest` command's HYDRA run: replay data, simulated
broker, every layer, the fsynced journal, the session document and the SQLite store) over five years of
hourly data from the shared data set, 2020-01-01 .. 2025-01-01, default universe and configuration.

  python bench/backtest_throughput.py [--start 2020-01-01 --end 2025-01-01] [--detector hmm|trend_vol_rule]
                                      [--profile FILE.html]

Reports wall time (split into setup = data load + wiring, and run), cycles/s, bars/s (every bar of every
symbol that closed inside the span, i.e. the bars the engine consumed) and peak RSS (ru_maxrss).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, emit, peak_rss_mb, stamp  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--start", default="2020-01-01")
    ap.add_argument("--end", default="2025-01-01")
    ap.add_argument("--detector", default=None, choices=["hmm", "trend_vol_rule"], help="default: hydra.toml's")
    ap.add_argument("--profile", default=None)
    args = ap.parse_args()
    t_import = time.perf_counter()
    from hydra_engine.app import build_sim_session, run_session
    from hydra_engine.backtest import _defer_snapshots, backtest_settings
    from hydra_engine.config import load_settings
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hydra-bt-") as tmp:
        out = Path(tmp)
        s = backtest_settings(load_settings(ROOT / "hydra.toml"), SHARED_DATA, date.fromisoformat(args.start),
                              date.fromisoformat(args.end), out)
        if args.detector:
            s = s.model_copy(update={"engine": s.engine.model_copy(update={"regime_detector": args.detector})})
        session = build_sim_session(s, mode="backtest", data_dir=SHARED_DATA, log_dir=out)
        _defer_snapshots(session.session_log)    # exactly what `hydra backtest` does
        market = session.engine.market
        lo, hi = int(session.clock.ticks[0].timestamp()), int(session.clock.ticks[-1].timestamp())
        bars = int(sum(((b.close_ts >= lo) & (b.close_ts <= hi)).sum() for b in market._bars.values()))
        t1 = time.perf_counter()
        profiler = None
        if args.profile:
            from pyinstrument import Profiler
            profiler = Profiler(interval=0.001)
            profiler.start()
        summary = run_session(session, progress=False)
        t2 = time.perf_counter()
        if profiler:
            profiler.stop()
            Path(args.profile).write_text(profiler.output_html())
            print(profiler.output_text(unicode=False, color=False)[:15000])
        journal_mb = Path(summary["journal"]).stat().st_size / 2**20
        doc_mb = Path(summary["log"]).stat().st_size / 2**20
    cycles = summary["cycles"]
    r = {"bench": "backtest_throughput", "span": f"{args.start}..{args.end}", "data": str(SHARED_DATA),
         "detector": getattr(session.engine.regime_detector, "name", "?"), "cycles": cycles, "bars": bars,
         "symbols": len(market._bars), "import_s": round(t0 - t_import, 2), "setup_s": round(t1 - t0, 2),
         "run_s": round(t2 - t1, 2), "wall_s": round(t2 - t0, 2),
         "cycles_per_s": round(cycles / (t2 - t1), 1), "bars_per_s": round(bars / (t2 - t1), 1),
         "ms_per_cycle": round((t2 - t1) / cycles * 1e3, 3), "peak_rss_mb": round(peak_rss_mb(), 1),
         "closed_trades": summary["closed_trades"], "orders": summary["orders"],
         "final_equity_usd": summary["final_equity_usd"], "journal_mb": round(journal_mb, 1),
         "document_mb": round(doc_mb, 2), "profiled": bool(args.profile), **stamp()}
    emit(r)
    print(f"{cycles} cycles, {bars} bars: setup {r['setup_s']} s, run {r['run_s']} s -> {r['cycles_per_s']} "
          f"cycles/s, {r['bars_per_s']} bars/s, peak RSS {r['peak_rss_mb']} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
