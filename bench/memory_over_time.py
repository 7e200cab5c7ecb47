#!/usr/bin/env python3
"""Memory over time: RSS sampled through a 100,000-cycle simulation on the seeded one-minute series
(shared/bench-peers/gen_data.py, single_100000) through the benchmark engine core (bench/hydra_peer.py).

  python bench/memory_over_time.py [--log none|session|session+store] [--cycles 100000] [--every 1000]

--log none           engine core only (no journal, no document, no database)
--log session        plus the session log (journal fsynced per cycle; document written at the end, as
                     `hydra backtest` does) — shows the in-memory growth of the document
--log session+store  plus the SQLite store (batched cycle rows)
Market data keeps 500 bars per symbol in each snapshot (views on the replay arrays); the check is that
RSS stays flat after warm-up. Reports RSS at 1k/10k/50k/100k cycles, growth per 10k cycles after 10k,
and what grows (document cycle summaries, closed trades, broker orders).
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import current_rss_mb, emit, peak_rss_mb, stamp  # noqa: E402
from peer_compare import load_frames  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", choices=["none", "session", "session+store"], default="session")
    ap.add_argument("--cycles", type=int, default=100_000)
    ap.add_argument("--every", type=int, default=1000)
    ap.add_argument("--case", default="single_100000")
    args = ap.parse_args()
    import hydra_peer as H
    from hydra_engine.backtest import _defer_snapshots
    from hydra_engine.store import Store
    from hydra_engine.tradelog import SessionLog

    frames = load_frames(args.case)
    engine, clock, _ = H.build(frames)
    del frames
    tmp = tempfile.TemporaryDirectory(prefix="hydra-mem-")
    if args.log != "none":
        log = SessionLog(Path(tmp.name), datetime.now(timezone.utc), {"session_id": "bench-mem"})
        _defer_snapshots(log)
        engine.session_log = log
    if args.log == "session+store":
        engine.store = Store(f"sqlite:///{tmp.name}/hydra.db")
        engine.store_batch = 500
    gc.collect()
    samples = [(0, round(current_rss_mb(), 1))]
    t0 = time.perf_counter()
    for k, now in enumerate(clock.ticks[: args.cycles], 1):
        engine.run_cycle(now)
        if k % args.every == 0:
            samples.append((k, round(current_rss_mb(), 1)))
    wall = time.perf_counter() - t0
    at = dict(samples)
    n = samples[-1][0]
    base = at.get(10_000, samples[min(len(samples) - 1, 10)][1])
    growth = (samples[-1][1] - base) / max(1, (n - 10_000)) * 10_000 if n > 10_000 else None
    doc = engine.session_log.doc if engine.session_log else None
    r = {"bench": "memory_over_time", "log": args.log, "case": args.case, "cycles": n, "wall_s": round(wall, 1),
         "rss_mb_at": {str(c): at[c] for c in (0, 1000, 10_000, 50_000, 100_000) if c in at},
         "rss_end_mb": samples[-1][1], "rss_max_mb": max(m for _, m in samples),
         "growth_mb_per_10k_cycles_after_10k": round(growth, 2) if growth is not None else None,
         "peak_rss_mb": round(peak_rss_mb(), 1),
         "doc_cycles_in_memory": len(doc["cycles"]) if doc else 0,
         "closed_trades": len(engine.closed_trades), "broker_orders": len(engine.broker._orders),
         "samples": samples, **stamp()}
    if engine.session_log:
        engine.session_log.close(datetime.now(timezone.utc), engine.summary())
        r["document_mb"] = round(os.path.getsize(engine.session_log.path) / 2**20, 2)
        r["journal_mb"] = round(os.path.getsize(engine.session_log.journal_path) / 2**20, 1)
    if engine.store:
        engine.store.flush()
    tmp.cleanup()
    emit(r)
    print(f"log={args.log}: RSS {r['rss_mb_at']} MB; growth after 10k: {r['growth_mb_per_10k_cycles_after_10k']} "
          f"MB/10k cycles; {wall:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
