#!/usr/bin/env python3
"""Walk-forward evidence for the signal scorer (issue #21): the shipped configuration backtested over each
window with the scorer off (the control) and on, the scorer retrained per window on data strictly before it.

  python bench/ml_walkforward.py [--data ../shared/data] [--start 2021-01-01] [--windows 2023-01-01,2024-01-01,2025-01-01]

For each window [lo, hi) (consecutive dates of ``--windows``):

* **on**: a backtest of [lo, hi) with ``[scorers] enabled = ["ml_signal_scorer"]`` and
  ``retrain_every_days`` longer than the window. The shipped model was trained on data up to 2025, after
  ``lo``, so the engine's in-loop retrainer (``hydra_engine/ml/loop.py``) retrains it at the first cycle by
  the ``train`` pipeline with ``--start START --end lo`` (a replay of every enabled plugin over
  [START, lo), labels never past ``lo``), then scores the window with it (threshold 0.45);
* **off**: the same backtest with no scorer in effect: a recording scorer sits in the slot and abstains on
  every signal (decisions identical to no scorer, ``tests/test_ml_models.py``), which gives the window's
  signals labelled by their realised net return (labels never past ``hi``);
* **signals**: the retrained model's calibrated probability on the window's labelled signals (never seen in
  training): accuracy, precision, recall at 0.45 against the seed's targets, and "take every signal".

Writes ``bench/out/ml_walkforward.json`` and prints one JSON row per window.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra_engine.app import build_sim_session, run_session  # noqa: E402
from hydra_engine.config import load_settings  # noqa: E402
from hydra_engine.ml import train as T  # noqa: E402
from hydra_engine.ml.dataset import collect_signals, replay_settings  # noqa: E402
from hydra_engine.ml.validation import binary_metrics  # noqa: E402


def figures(summ: dict) -> dict:
    vetoes = summ.get("vetoes_by_rule", {}) or {}
    wins = sum(v.get("wins", 0) for v in (summ.get("per_strategy") or {}).values())
    n = summ.get("closed_trades") or 0
    return {"return_pct": summ.get("return_pct"), "final_equity_usd": summ.get("final_equity_usd"),
            "trades": n, "win_rate": round(wins / n, 4) if n else None, "fees_usd": summ.get("fees_usd"),
            "ml_refused": vetoes.get("ml_score_below_threshold", 0),
            "monitor": summ.get("ml_scorer_monitor"), "retrains": summ.get("ml_scorer_retrains")}


def backtest_on(settings, data: Path, lo: date, hi: date, start: date, seed: int):
    s = replay_settings(settings, data, lo, hi)
    sc = s.scorers.model_copy(update={"enabled": ["ml_signal_scorer"], "retrain_every_days": (hi - lo).days + 1,
                                      "retrain_start": start, "retrain_seed": seed})
    s = s.model_copy(update={"scorers": sc})
    session = build_sim_session(s, mode="backtest", data_dir=data, persist=False)
    summ = run_session(session, progress=False)
    scorer = next(x for x in session.engine.scorers if x.name == "ml_signal_scorer")
    return summ, scorer.model


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--start", default="2021-01-01", help="first day of every window's training replay")
    ap.add_argument("--windows", default="2023-01-01,2024-01-01,2025-01-01", help="window bounds, ascending")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "ml_walkforward.json"))
    a = ap.parse_args()
    data = Path(a.data)
    settings = load_settings(ROOT / "hydra.toml")
    bounds = [date.fromisoformat(x) for x in a.windows.split(",")]
    start = date.fromisoformat(a.start)
    t0 = time.perf_counter()
    rows = []
    thr = settings.scorers.threshold
    for lo, hi in zip(bounds, bounds[1:]):
        t1 = time.perf_counter()
        on_summ, model = backtest_on(settings, data, lo, hi, start, a.seed)
        t_on = time.perf_counter() - t1
        retr = on_summ.get("ml_scorer_retrains") or []
        if model is None or not retr or not retr[0].get("ok"):
            print(f"window {lo}..{hi}: the retrain failed: {retr}", flush=True)
        trained_end = (getattr(model, "meta", None) or {}).get("trained", {}).get("end")
        assert model is None or date.fromisoformat(trained_end) <= lo, "trained past the window start"
        t2 = time.perf_counter()
        ds = collect_signals(settings, data, lo, hi, progress=False)       # the control backtest
        t_off = time.perf_counter() - t2
        sig: dict = {"n": int(len(ds.y))}
        if model is not None and len(ds.y):
            X, _ = T.scorer_matrix(ds.X_base, ds.sources, model.meta["sources"])
            known = np.array([s in model.sources for s in ds.sources])
            p = model.calibrated(X)
            sig = {"scored_sources_share": round(float(known.mean()), 4),
                   "metrics": {k: v for k, v in binary_metrics(p, ds.y, thr).items() if k != "calibration"},
                   "calibration": binary_metrics(p, ds.y, thr)["calibration"],
                   "take_all": {"accuracy": round(float(ds.y.mean()), 4), "precision": round(float(ds.y.mean()), 4),
                                "recall": 1.0},
                   "selection": T._selection(ds.net, p, thr)}
        rows.append({"window": f"{lo} .. {hi} (end exclusive)", "train_span": f"{start} .. {lo} (end exclusive)",
                     "model_trained_end": trained_end, "retrain": retr, "signals": sig,
                     "backtest_off": figures(ds.summary), "backtest_on": figures(on_summ),
                     "seconds": {"on_incl_retrain": round(t_on, 1), "off": round(t_off, 1)}})
        print(json.dumps(rows[-1], default=str), flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": str(data), "seed": a.seed, "start": str(start), "windows": rows,
                               "threshold": thr, "wall_s": round(time.perf_counter() - t0, 1)},
                              indent=1, default=str))
    print(f"wrote {out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
