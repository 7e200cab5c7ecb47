#!/usr/bin/env python3
"""Peer comparison in one run: HYDRA's engine core vs the peer backtesters of shared/bench-peers on the
same seeded data and the same strategy (SMA(20)/SMA(50) crossover, long-only, all-in, 0.1 % fee per side,
filled at the signal bar's close). See bench/README.md for the method and bench/hydra_peer.py for the wiring.

  python bench/peer_compare.py                         # HYDRA on the three cases + fast peers, table
  python bench/peer_compare.py --cases single_100000 --peers none
  python bench/peer_compare.py --peers all             # also nautilus_trader and backtrader (slow: ~25 min)
  python bench/peer_compare.py --one single_100000     # one HYDRA measurement in this (cold) process
  python bench/peer_compare.py --one single_100000 --profile bench/out/profile_peer_single.txt

Every measurement is a fresh process. "wall s" is, as for the peers, everything after the parquet read:
building the replay data, the broker and the engine, running every cycle, extracting the results. The
correctness check (trades and final equity against the numpy reference) is asserted, never timed.
Data: $BENCH_DATA (default <tmp>/benchpeers/data, made by gen_data.py if missing); peers run from
the venv of run_all.sh ($BENCH_ROOT, default <tmp>/benchpeers).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import ROOT, emit, peak_rss_mb, stamp  # noqa: E402

PEERS_DIR = Path(os.environ.get("HYDRA_BENCH_PEERS", ROOT.parent / "shared" / "bench-peers"))
BENCH_ROOT = Path(os.environ.get("BENCH_ROOT", Path(tempfile.gettempdir()) / "benchpeers"))
DATA = Path(os.environ.get("BENCH_DATA", BENCH_ROOT / "data"))
CASES = ("single_100000", "single_1000000", "multi_20x100000")
EXPECTED = {  # shared/bench-peers/RESULTS.md, numpy reference (fill at the signal bar's close)
    "single_100000": (1124, Decimal("8287.345153"), 6),
    "multi_20x100000": (22498, Decimal("211231.31"), 2),
    "single_1000000": (11224, Decimal("0.0000110786"), 10),   # 1.10786e-05
}
FAST_PEERS = ("bench_backtesting.py", "bench_vectorbt.py")
SLOW_PEERS = ("bench_nautilus.py", "bench_backtrader.py")
# measured by the peer study (shared/bench-peers/RESULTS.md, same machine type), used where not re-run here
RECORDED = {
    ("backtesting.py", "single_100000"): (1.10, 194), ("backtesting.py", "single_1000000"): (13.57, 501),
    ("backtesting.py", "multi_20x100000"): (22.82, 496),
    ("vectorbt", "single_100000"): (8.66, 447), ("vectorbt", "single_1000000"): (16.67, 738),
    ("vectorbt", "multi_20x100000"): (8.70, 708),
    ("nautilus_trader", "single_100000"): (10.46, 362), ("nautilus_trader", "single_1000000"): (108.53, 1001),
    ("nautilus_trader", "multi_20x100000"): (329.12, 2857),
    ("backtrader", "single_100000"): (28.64, 192), ("backtrader", "single_1000000"): (279.89, 559),
    ("backtrader", "multi_20x100000"): (470.78, 779),
}


def load_frames(case: str):
    from hydra_engine.data.bars import read_frame_file   # the engine's own reader
    if case.startswith("multi_"):
        d = DATA / case
        return {f"INST{k:02d}": read_frame_file(d / f) for k, f in enumerate(sorted(os.listdir(d)))}
    return {"SYN": read_frame_file(DATA / f"{case}.parquet")}


def reference(frames) -> tuple[int, float]:
    sys.path.insert(0, str(PEERS_DIR))
    from common import reference as ref  # the peer study's numpy loop
    trades, equity = 0, 0.0
    for df in frames.values():
        t, e = ref(df, "close")
        trades, equity = trades + t, equity + e
    return trades, equity


def one(case: str, check: bool, latency: bool, profile: str | None = None) -> dict:
    """One cold HYDRA measurement (this process); ``profile`` writes a pyinstrument text profile of
    setup + run to that file (timings then include the profiler's overhead)."""
    import hydra_peer as H
    t_load = time.perf_counter()
    frames = load_frames(case)
    bars = sum(len(f) for f in frames.values())
    profiler = None
    if profile:
        from pyinstrument import Profiler
        profiler = Profiler(interval=0.0002)
        profiler.start()
    t0, c0 = time.perf_counter(), time.process_time()
    engine, clock, _ = H.build(frames)
    del frames
    t1 = time.perf_counter()
    gaps = []
    if latency:
        pc = time.perf_counter_ns
        run_cycle = engine.run_cycle
        for now in clock.ticks:
            a = pc()
            run_cycle(now)
            gaps.append(pc() - a)
    else:
        H.run(engine, clock)
    t2 = time.perf_counter()
    trades, equity = H.results(engine)
    t3, c3 = time.perf_counter(), time.process_time()
    if profiler:
        profiler.stop()
        Path(profile).write_text(profiler.output_text(unicode=False, color=False, show_all=False))
    r = {"engine": "HYDRA", "case": case, "fill": "signal_close", "bars": bars, "cycles": engine.stats.cycles,
         "load_s": round(t0 - t_load, 3), "setup_s": round(t1 - t0, 3), "run_s": round(t2 - t1, 3),
         "wall_s": round(t3 - t0, 3), "cpu_s": round(c3 - c0, 3), "bars_per_s": round(bars / (t3 - t0), 1),
         "us_per_bar": round((t3 - t0) / bars * 1e6, 2), "peak_rss_mb": round(peak_rss_mb(), 1),
         "trades": trades, "final_equity": str(equity)}
    if gaps:
        import numpy as np
        g = np.asarray(gaps[1:], dtype=float) / 1000
        r["cycle_us"] = {"p50": round(float(np.percentile(g, 50)), 1), "p99": round(float(np.percentile(g, 99)), 1),
                         "max": round(float(g.max()), 1)}
    if check:
        exp_trades, exp_equity, places = EXPECTED[case]
        got = Decimal(equity)
        q = Decimal(1).scaleb(-places)
        assert trades == exp_trades, f"{case}: {trades} trades, reference {exp_trades}"
        if case == "single_1000000":  # 1.10786e-05: compare with the float reference's 6 significant digits
            assert abs(got / exp_equity - 1) < Decimal("1e-5"), f"{case}: equity {got}, reference {exp_equity}"
        else:
            assert got.quantize(q) == exp_equity, f"{case}: equity {got}, reference {exp_equity}"
        r["reference_check"] = f"ok: {exp_trades} trades, equity {exp_equity}"
    return r


def run_hydra(case: str, check: bool) -> dict:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, __file__, "--one", case] + ([] if check else ["--no-check"]),
                       capture_output=True, text=True, cwd=ROOT)
    line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
    if p.returncode or line is None:
        raise SystemExit(f"HYDRA {case} failed (rc {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    r = json.loads(line[7:])
    r["process_s"] = round(time.perf_counter() - t, 2)
    return r


def run_peer(script: str, case: str, reps: int) -> list[dict]:
    out = BENCH_ROOT / "out-hydra-compare"
    out.mkdir(parents=True, exist_ok=True)
    res = out / "results.jsonl"
    before = res.read_text().count("\n") if res.exists() else 0
    env = {**os.environ, "BENCH_ROOT": str(BENCH_ROOT), "BENCH_OUT": str(out), "BENCH_DATA": str(DATA)}
    subprocess.run(["bash", str(PEERS_DIR / "run_all.sh"), "one", script, case, str(reps)], env=env,
                   capture_output=True, text=True)
    lines = res.read_text().splitlines()[before:] if res.exists() else []
    return [json.loads(l) for l in lines if l.strip()]


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", choices=CASES, help="one HYDRA measurement in this process (used by the driver)")
    ap.add_argument("--no-check", action="store_true", help="skip the reference assertion")
    ap.add_argument("--latency", action="store_true", help="with --one: time each cycle too")
    ap.add_argument("--profile", metavar="FILE.txt", help="with --one: pyinstrument text profile of setup + run")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--reps", type=int, default=1, help="HYDRA runs per case (median reported)")
    ap.add_argument("--peers", default="fast", choices=["none", "fast", "all"],
                    help="fast = backtesting.py + vectorbt; all adds nautilus_trader + backtrader")
    ap.add_argument("--peer-reps", type=int, default=1)
    args = ap.parse_args()
    if args.one:
        r = one(args.one, not args.no_check, args.latency, args.profile)
        r.update(stamp())
        emit(r)
        return
    if not (DATA / "single_1000000.parquet").exists():
        subprocess.run([str(BENCH_ROOT / "venv" / "bin" / "python") if (BENCH_ROOT / "venv").exists() else sys.executable,
                        str(PEERS_DIR / "gen_data.py"), str(DATA)], check=True)
    cases = [c for c in args.cases.split(",") if c]
    have_venv = (BENCH_ROOT / "venv" / "bin" / "python").exists()
    peers = () if args.peers == "none" or not have_venv else FAST_PEERS + (SLOW_PEERS if args.peers == "all" else ())
    if args.peers != "none" and not have_venv:
        print(f"no peer venv at {BENCH_ROOT}/venv (bash {PEERS_DIR}/run_all.sh setup): using recorded peer numbers",
              file=sys.stderr)
    rows = []
    for case in cases:
        runs = [run_hydra(case, not args.no_check) for _ in range(args.reps)]
        h = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
        h["runs"] = len(runs)
        print(f"HYDRA {case}: wall {h['wall_s']} s, {h['bars_per_s']:.0f} bars/s, {h['peak_rss_mb']} MB, "
              f"{h['trades']} trades, equity {Decimal(h['final_equity']):.6f}", file=sys.stderr)
        rows.append(h)
        for script in peers:
            got = [r for r in run_peer(script, case, args.peer_reps) if "wall_s" in r]
            if not got:
                print(f"peer {script} {case}: no result", file=sys.stderr)
                continue
            best = sorted(got, key=lambda r: r["wall_s"])[len(got) // 2]
            best["runs"] = len(got)
            rows.append(best)
            print(f"{best['engine']} {case}: wall {best['wall_s']} s", file=sys.stderr)
    table = render(rows, cases)
    print(table)
    emit({"bench": "peer_compare", "rows": rows, **stamp()})


def render(rows: list[dict], cases: list[str]) -> str:
    out = ["| case | engine | source | runs | bars | wall s | bars/s | µs/bar | peak RSS MB | trades | final equity | HYDRA speed vs peer (peer wall / HYDRA wall) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for case in cases:
        hydra = next(r for r in rows if r["engine"] == "HYDRA" and r["case"] == case)
        measured = {r["engine"]: r for r in rows if r["case"] == case and r["engine"] != "HYDRA"}
        out.append(f"| {case} | **HYDRA** | this run | {hydra['runs']} | {hydra['bars']:,} | {hydra['wall_s']:.2f} | "
                   f"{hydra['bars_per_s']:,.0f} | {hydra['us_per_bar']:.1f} | {hydra['peak_rss_mb']:.0f} | {hydra['trades']} | "
                   f"{float(Decimal(hydra['final_equity'])):,.6g} | – |")
        for name in ("backtesting.py", "vectorbt", "nautilus_trader", "backtrader"):
            r = measured.get(name)
            if r is not None:
                wall, rss, src, runs = r["wall_s"], r["peak_rss_mb"], "this run", r.get("runs", 1)
                trades, eq = r.get("trades"), f"{float(r.get('final_equity', 0)):,.6g}"
            elif (name, case) in RECORDED:
                (wall, rss), src, runs, trades, eq = RECORDED[(name, case)], "recorded (peer RESULTS.md)", "–", "–", "–"
            else:
                continue
            ratio = wall / hydra["wall_s"]
            out.append(f"| {case} | {name} | {src} | {runs} | {hydra['bars']:,} | {wall:.2f} | {hydra['bars'] / wall:,.0f} | "
                       f"{wall / hydra['bars'] * 1e6:.1f} | {rss:.0f} | {trades} | {eq} | {ratio:.2f}× |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
