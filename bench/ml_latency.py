#!/usr/bin/env python3
"""Cycle latency with both trained models loaded (issue #21) against the same run without them, in one
invocation: Engine.run_cycle timed with perf_counter over the shipped replay (no session log, no store:
compute only), the shipped hydra.toml, first with no scorer and the rule perp labeller, then with the
signal scorer enabled and the perp regime classifier installed. Each variant also prints a digest of what
the models decided (every cycle's ``ml_scores`` and the closed trades): a speed change must leave it equal.
Before/after on a shared machine: ``bench/ml_latency_ab.py``.

  python bench/ml_latency.py [--scorer models/signal_scorer.cbm] [--classifier models/regime_classifier.json] [--cycles N]
                             [--monitor-every-hours 1|2|3|4|6|8|12|24]   (the classifier monitor's cadence; default hydra.toml's)
                             [--profile FILE.html]   (pyinstrument over the models-on run; its timings are not comparable)
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's hydra_engine, not an installed one
from _common import ROOT, emit, pct, stamp  # noqa: E402

from hydra_engine.app import build_sim_session  # noqa: E402
from hydra_engine.config import load_settings  # noqa: E402


def run(tmp: Path, cycles: int | None, scorer: Path | None, classifier: Path | None,
        profile: str | None = None, profile_chars: int = 20000, monitor_every_hours: int | None = None) -> dict:
    s = load_settings(ROOT / "hydra.toml")
    rm = s.regime_model.model_copy(update={"perp_labeller": "classifier" if classifier else "rule",
                                           **({"monitor_every_hours": monitor_every_hours}
                                              if monitor_every_hours else {}),
                                           **({"model_path": str(classifier)} if classifier else {})})
    sc = s.scorers.model_copy(update={"enabled": ["ml_signal_scorer"] if scorer else [],
                                      "params": {"ml_signal_scorer": {"model_path": str(scorer)}} if scorer else {}})
    s = s.model_copy(update={"engine": s.engine.model_copy(update={"log_dir": str(tmp)}), "regime_model": rm,
                             "scorers": sc, "storage": s.storage.model_copy(update={"url": f"sqlite:///{tmp}/h.db"})})
    session = build_sim_session(s, data_dir=ROOT / "data", log_dir=tmp)
    session.engine.session_log = None
    session.engine.store = None
    engine, ticks = session.engine, session.clock.ticks[:cycles]
    gc.collect()
    samples, cpu = [], []   # wall time, and the thread's CPU time (time descheduled by other processes excluded)
    pc, tc = time.perf_counter_ns, time.thread_time_ns
    digest = hashlib.sha256()   # what the models decided: every cycle's ml_scores, then the closed trades
    profiler = None
    if profile:
        from pyinstrument import Profiler
        profiler = Profiler(interval=0.0002)
        profiler.start()
    for now in ticks:
        c, a = tc(), pc()
        report = engine.run_cycle(now)
        samples.append(pc() - a)
        cpu.append(tc() - c)
        digest.update(json.dumps(report.get("ml_scores"), sort_keys=True, default=str).encode())
    if profiler:
        profiler.stop()
        Path(profile).write_text(profiler.output_html())
        print(profiler.output_text(unicode=False, color=False, show_all=False)[:profile_chars])
    digest.update(json.dumps(engine.closed_trades, sort_keys=True, default=str).encode())
    return {**pct(samples), **{"cpu_" + k: v for k, v in pct(cpu, (50, 99)).items() if k[0] == "p"},
            "scorers": [x.name for x in engine.scorers], "closed_trades": len(engine.closed_trades),
            "digest": digest.hexdigest()[:16]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scorer", default=str(ROOT / "models" / "signal_scorer.cbm"))
    ap.add_argument("--classifier", default=str(ROOT / "models" / "regime_classifier.json"))
    ap.add_argument("--cycles", type=int, default=None)
    ap.add_argument("--profile", default=None, help="write a pyinstrument HTML profile of the models-on run "
                    "(timings under the profiler are not comparable)")
    ap.add_argument("--profile-chars", type=int, default=20000)
    ap.add_argument("--monitor-every-hours", type=int, default=None, choices=(1, 2, 3, 4, 6, 8, 12, 24),
                    help="the classifier monitor's cadence for the models-on run (default: hydra.toml's)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hydra-ml-bench-") as tmp:
        off = run(Path(tmp) / "off", a.cycles, None, None)
        on = run(Path(tmp) / "on", a.cycles, Path(a.scorer), Path(a.classifier), a.profile,
                 a.profile_chars, a.monitor_every_hours)
    for name, r in (("models off", off), ("models on", on)):
        print(f"{name:<11} {r['n']} cycles  p50 {r['p50_ms']:.3f} ms  p90 {r['p90_ms']:.3f}  p99 {r['p99_ms']:.3f}"
              f"  p99.9 {r['p99.9_ms']:.3f}  cpu p50 {r['cpu_p50_ms']:.3f} p99 {r['cpu_p99_ms']:.3f}  trades {r['closed_trades']}  digest {r['digest']}")
        emit({"bench": "ml_cycle_latency", "variant": name, **stamp(), **r,
              **({"monitor_every_hours": a.monitor_every_hours or "hydra.toml"} if name == "models on" else {})})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
