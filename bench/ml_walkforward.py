#!/usr/bin/env python3
"""Walk-forward evidence for the signal scorer (issue #21): the shipped configuration backtested over each
window with the scorer on and off, the scorer retrained per window on the signals before it.

  python bench/ml_walkforward.py [--data ../shared/data] [--start 2021-01-01] [--windows 2023,2024] [--seed 7]

One replay of every enabled plugin over [start, last window's end) records the signals and their
features (the training replay of ``train --component signal_scorer``); for a window starting at W the
scorer is trained on the signals whose label window ends before W (purged: nothing known at or after W),
then the window is backtested twice — scorer off (today's behaviour) and on (threshold 0.45). Writes
``bench/out/ml_walkforward.json`` and prints the table the README quotes.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import date, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra_engine.app import build_sim_session, run_session  # noqa: E402
from hydra_engine.config import load_settings  # noqa: E402
from hydra_engine.domain import UTC  # noqa: E402
from hydra_engine.ml import train as T  # noqa: E402
from hydra_engine.ml.dataset import SignalSet, collect_signals, replay_settings  # noqa: E402
from hydra_engine.ml.scorer_model import ScorerModel  # noqa: E402
from signals.ml_scorer import MLSignalScorer  # noqa: E402


def subset(ds: SignalSet, keep: np.ndarray) -> SignalSet:
    return SignalSet(ds.t[keep], ds.label_end[keep], ds.X_base[keep], [s for s, k in zip(ds.sources, keep) if k],
                     [s for s, k in zip(ds.symbols, keep) if k], ds.y[keep], ds.net[keep], ds.meta)


def backtest(settings, data: Path, lo: date, hi: date, scorer) -> dict:
    s = replay_settings(settings, data, lo, hi)
    session = build_sim_session(s, mode="backtest", data_dir=data, persist=False)
    if scorer is not None:
        session.engine.scorers = [scorer]
    summ = run_session(session, progress=False)
    vetoes = summ.get("vetoes_by_rule", {}) or {}
    wins = sum(v.get("wins", 0) for v in (summ.get("per_strategy") or {}).values())
    n = summ.get("closed_trades") or 0
    return {"return_pct": summ.get("return_pct"), "final_equity_usd": summ.get("final_equity_usd"),
            "trades": n, "win_rate": round(wins / n, 4) if n else None,
            "ml_refused": vetoes.get("ml_score_below_threshold", 0)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--start", default="2021-01-01")
    ap.add_argument("--windows", default="2023,2024")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    data = Path(a.data)
    settings = load_settings(ROOT / "hydra.toml")
    years = [int(y) for y in a.windows.split(",")]
    start, end = date.fromisoformat(a.start), date(years[-1] + 1, 1, 1)
    t0 = time.perf_counter()
    ds = collect_signals(settings, data, start, end, progress=False)
    print(f"signals: {len(ds.y)} labelled over {start} .. {end} in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for y in years:
        lo, hi = date(y, 1, 1), date(y + 1, 1, 1)
        cut = datetime(y, 1, 1, tzinfo=UTC).timestamp()
        train = subset(ds, ds.label_end < cut)
        test = (ds.t >= cut) & (ds.t < datetime(y + 1, 1, 1, tzinfo=UTC).timestamp())
        model, meta, card = T.train_scorer(train, seed=a.seed, span=(start, lo), data_dir=data)
        with tempfile.TemporaryDirectory() as tmp:
            path = T.save_scorer(model, meta, card, Path(tmp) / "signal_scorer.cbm")
            sm = ScorerModel.load(path)
            # signal-level: the window's signals, every one vs those the scorer takes (the model never saw them)
            X, _ = T.scorer_matrix(ds.X_base[test], [s for s, k in zip(ds.sources, test) if k], meta["sources"])
            p = sm.calibrated(X)
            sel = T._selection(ds.net[test], p, settings.scorers.threshold)
            off = backtest(settings, data, lo, hi, None)
            on = backtest(settings, data, lo, hi, MLSignalScorer(model=sm))
        rows.append({"window": f"{lo} .. {hi}", "train_rows": int(len(train.y)), "cv_auc": card["data"]["cv_summary"]["roc_auc"],
                     "signals": sel, "backtest_off": off, "backtest_on": on})
        print(json.dumps(rows[-1], default=str), flush=True)
    out = ROOT / "bench" / "out" / "ml_walkforward.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"data": str(data), "seed": a.seed, "windows": rows,
                               "wall_s": round(time.perf_counter() - t0, 1)}, indent=1, default=str))
    print(f"wrote {out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
