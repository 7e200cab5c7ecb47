#!/usr/bin/env python3
"""Before/after of ``bench/ml_latency.py`` in ONE invocation, alternating, on a shared machine: each round
runs the bench in a fresh process from the baseline checkout, then from this one (each run measures models
off, then on). The baseline is a plain export of the older commit with this checkout's ``ml_latency.py``
copied in (it only measures), e.g.

  mkdir -p /tmp/base && git archive 3cdbcd2 | tar -x -C /tmp/base && cp bench/ml_latency.py /tmp/base/bench/
  python bench/ml_latency_ab.py --base /tmp/base --rounds 3 --cycles 1500

Prints every run, then the median over rounds of each percentile, and whether the digests (every cycle's
ml_scores and the closed trades) of the two checkouts agree.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def one(root: Path, cycles: int) -> dict:
    out = subprocess.run([sys.executable, str(root / "bench" / "ml_latency.py"), "--cycles", str(cycles)],
                         cwd=root, capture_output=True, text=True, check=True).stdout
    recs = [json.loads(x[len("RESULT "):]) for x in out.splitlines() if x.startswith("RESULT ")]
    return {r["variant"]: r for r in recs}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cycles", type=int, default=1500)
    a = ap.parse_args()
    roots = {"before": Path(a.base).resolve(), "after": HERE}
    runs: dict[tuple[str, str], list[dict]] = {}
    for k in range(a.rounds):
        for label, root in roots.items():
            load = os.getloadavg()[0]
            for variant, r in one(root, a.cycles).items():
                r["load1"] = round(load, 2)
                runs.setdefault((label, variant), []).append(r)
                print(f"round {k + 1} {label:<6} {variant:<10} p50 {r['p50_ms']:.3f} ms  p90 {r['p90_ms']:.3f}  "
                      f"p99 {r['p99_ms']:.3f}  cpu p50 {r.get('cpu_p50_ms', float('nan')):.3f} "
                      f"p99 {r.get('cpu_p99_ms', float('nan')):.3f}  trades {r['closed_trades']}  digest {r['digest']}  load {load:.2f}",
                      flush=True)
    print("\nmedian over rounds:")
    for (label, variant), rs in runs.items():
        med = {p: statistics.median(r.get(p, float("nan")) for r in rs)
               for p in ("p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "cpu_p50_ms", "cpu_p99_ms")}
        print(f"  {label:<6} {variant:<10} p50 {med['p50_ms']:.3f} ms  p90 {med['p90_ms']:.3f}  p99 {med['p99_ms']:.3f}"
              f"  p99.9 {med['p99.9_ms']:.3f}  cpu p50 {med['cpu_p50_ms']:.3f} p99 {med['cpu_p99_ms']:.3f}  digests {sorted({r['digest'] for r in rs})}")
    for variant in ("models off", "models on"):
        same = {r["digest"] for r in runs[("before", variant)]} == {r["digest"] for r in runs[("after", variant)]}
        print(f"  {variant}: same decisions before and after: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
