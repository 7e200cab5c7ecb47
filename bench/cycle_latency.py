#!/usr/bin/env python3
"""Cycle latency: Engine.run_cycle timed with perf_counter over the shipped replay data (every
layer, every enabled strategy, the whole universe from in-memory arrays).

  python bench/cycle_latency.py [--io both|off|on] [--cycles N] [--profile FILE.html]

--io off  : no session log and no store (pure compute: data → regime → … → weights)
--io on   : the shipped configuration's journal (fsync per cycle), document and SQLite store
--detector trend_vol_rule : the shipped fallback regime detector instead of the HMM (what-if)
--clock cpu : time each cycle with the thread's CPU time (time.thread_time_ns) instead of perf_counter, so a
              shared, overloaded machine's waiting for a core is not counted (compute only; io off)
Prints p50/p90/p99/p99.9 over all cycles (after the observation phase too) and appends RESULT lines
to bench/out/results.jsonl. Logs and the database go to a temporary directory.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, emit, pct, peak_rss_mb, stamp  # noqa: E402

from hydra_engine.app import build_sim_session  # noqa: E402
from hydra_engine.config import load_settings  # noqa: E402


def build(tmp: Path, io: bool, detector: str | None = None):
    s = load_settings(ROOT / "hydra.toml")
    eng = {"log_dir": str(tmp), **({"regime_detector": detector} if detector else {})}
    s = s.model_copy(update={"engine": s.engine.model_copy(update=eng),
                             "storage": s.storage.model_copy(update={"url": f"sqlite:///{tmp}/hydra.db"})})
    session = build_sim_session(s, data_dir=ROOT / "data", log_dir=tmp)
    if not io:
        session.engine.session_log = None
        session.engine.store = None
    return session


def measure(io: bool, cycles: int | None, profile: str | None, detector: str | None = None,
            clock: str = "wall") -> dict:
    with tempfile.TemporaryDirectory(prefix="hydra-bench-") as tmp:
        session = build(Path(tmp), io, detector)
        engine, ticks = session.engine, session.clock.ticks[:cycles]
        samples = []
        gc.collect()
        profiler = None
        if profile:
            from pyinstrument import Profiler
            profiler = Profiler(interval=0.0002)
            profiler.start()
        pc = time.perf_counter_ns if clock == "wall" else time.thread_time_ns
        t0 = time.perf_counter()
        for now in ticks:
            a = pc()
            engine.run_cycle(now)
            samples.append(pc() - a)
        wall = time.perf_counter() - t0
        if profiler:
            profiler.stop()
            Path(profile).write_text(profiler.output_html())
            print(profiler.output_text(unicode=False, color=False, show_all=False)[:12000])
        if session.session_log and io:
            session.session_log.close(ticks[-1], engine.summary())
            session.store.flush()
        trade = samples[session.engine.settings.engine.observation_cycles:]
        return {"bench": "cycle_latency", "io": "on" if io else "off", "cycles": len(samples),
                "symbols": len(engine.settings.universe.symbols) + len(engine.settings.universe.data_only),
                "strategies": [s.name for s in engine.strategies],
                "detector": getattr(engine.regime_detector, "name", "?"),
                **pct(samples), "after_observation": pct(trade), "wall_s": round(wall, 3),
                "cycles_per_s": round(len(samples) / wall, 1), "orders": engine.stats.orders,
                "closed_trades": len(engine.closed_trades), "peak_rss_mb": round(peak_rss_mb(), 1),
                "clock": clock, "profiled": bool(profile), **stamp()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--io", choices=["both", "off", "on"], default="both")
    ap.add_argument("--cycles", type=int, default=None, help="default: every tick of the shipped data (4368)")
    ap.add_argument("--profile", default=None, help="write a pyinstrument HTML profile (timings then include it)")
    ap.add_argument("--detector", default=None, choices=["hmm", "trend_vol_rule"],
                    help="override engine.regime_detector (default: hydra.toml's, the HMM)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: per-cycle thread CPU time (a shared machine's queueing for a core left out)")
    args = ap.parse_args()
    for io in ([False, True] if args.io == "both" else [args.io == "on"]):
        r = measure(io, args.cycles, args.profile, args.detector, args.clock)
        emit(r)
        print(f"io={r['io']:3s} cycles={r['cycles']} p50={r['p50_ms']:.3f} ms p99={r['p99_ms']:.3f} ms "
              f"max={r['max_ms']:.1f} ms  ({r['cycles_per_s']:.0f} cycles/s)", file=sys.stderr)


if __name__ == "__main__":
    main()
