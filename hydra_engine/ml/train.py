"""Training pipelines of the signal scorer (CatBoost) and the perp regime classifier (XGBoost).

Both: the data from :mod:`.dataset` (features by :mod:`.features`, the functions the cycle calls), purged
and embargoed cross-validation plus a held-out tail (:mod:`.validation`), the naive baseline on the same
rows, a final model on every row, the model in the library's own format and a card. Deterministic for a
seed (fixed thread counts, seeded models, no wall-clock input).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from .features import LIVE_ONLY, REGIME_FEATURES, REGIME_LIVE_ONLY, scorer_feature_names, source_feature
from .labels import CLASSES, REGIME_WINDOW_H
from .validation import binary_metrics, mean_std, multiclass_metrics, purged_splits, write_card

THREADS = 2
# XGBoost's OpenMP threads spin while they wait for each other by default: on a shared 2-core machine a
# spinning thread takes the core its partner needs, and one fit on the 34k classifier rows took 21-54 s
# wall (12-28 s CPU) against 5-6 s (3 s CPU) with passive waiting, the model byte-identical (waiting is
# scheduling, not arithmetic; bench/RESULTS.md section 11). Read when libgomp loads, i.e. at the first
# ``import xgboost`` of the process; a value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
SCORER_PARAMS = dict(iterations=300, learning_rate=0.05, depth=6, l2_leaf_reg=3)
CLASSIFIER_PARAMS = dict(max_depth=5, eta=0.15, min_child_weight=50, rounds=80)
EMBARGO_S = 24 * 3600


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- signal scorer
def scorer_matrix(base: np.ndarray, sources: list[str], known: list[str]) -> tuple[np.ndarray, list[str]]:
    names = scorer_feature_names(known)
    nb = base.shape[1]
    X = np.zeros((len(base), len(names)))
    X[:, :nb] = base
    col = {source_feature(s): nb + i for i, s in enumerate(sorted(known))}
    for r, s in enumerate(sources):
        if source_feature(s) in col:
            X[r, col[source_feature(s)]] = 1.0
    return X, names


def _catboost(seed: int):
    from catboost import CatBoostClassifier
    return CatBoostClassifier(**SCORER_PARAMS, random_seed=seed, thread_count=THREADS, verbose=False,
                              allow_writing_files=False)


def fit_scorer(X: np.ndarray, y: np.ndarray, seed: int):
    m = _catboost(seed)
    m.fit(X, y.astype(int))
    return m


def _platt_fit(raw: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    raw = np.clip(raw, 1e-6, 1 - 1e-6)
    z = np.log(raw / (1 - raw)).reshape(-1, 1)
    lr = LogisticRegression(C=1e6, solver="lbfgs").fit(z, y.astype(int))
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def _selection(net: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    take = p >= threshold
    return {"signals": int(len(net)), "taken": int(take.sum()),
            "mean_net_return_all_pct": round(float(np.mean(net)) * 100, 4) if len(net) else None,
            "mean_net_return_taken_pct": round(float(np.mean(net[take])) * 100, 4) if take.any() else None,
            "sum_net_return_all": round(float(np.sum(net)), 4), "sum_net_return_taken": round(float(np.sum(net[take])), 4),
            "win_rate_all": round(float(np.mean(net > 0)), 4) if len(net) else None,
            "win_rate_taken": round(float(np.mean(net[take] > 0)), 4) if take.any() else None}


def train_scorer(ds, *, seed: int, threshold: float = 0.45, span: tuple[date, date], data_dir: Path) -> tuple:
    """Cross-validate, evaluate the tail, fit the final model. Returns (model, meta, card)."""
    from .scorer_model import DissimilarityIndex, platt
    known = sorted(set(ds.sources))
    X, names = scorer_matrix(ds.X_base, ds.sources, known)
    y = ds.y.astype(int)
    folds, tail = purged_splits(ds.t, ds.label_end, n_splits=5, holdout_frac=0.15, embargo_s=EMBARGO_S)
    fold_rows, base_rows, oof_raw, oof_y = [], [], [], []
    for f in folds:
        t0 = time.perf_counter()
        m = fit_scorer(X[f.train], y[f.train], seed)
        raw = m.predict(X[f.test], prediction_type="Probability", thread_count=THREADS)[:, 1]
        oof_raw.append(raw)
        oof_y.append(y[f.test])
        met = binary_metrics(raw, y[f.test], threshold)
        met.update(_selection(ds.net[f.test], raw, threshold))
        fold_rows.append({"name": f.name, "train_n": int(len(f.train)), "test_n": int(len(f.test)),
                          "train_end": _iso(ds.label_end[f.train].max()), "test_start": _iso(ds.t[f.test[0]]),
                          "metrics": met})
        base_rows.append({"name": f.name, "metrics": _take_all(y[f.train], y[f.test], ds.net[f.test])})
        _say(f"  scorer {f.name}: train {len(f.train)} test {len(f.test)} AUC {met['roc_auc']} "
             f"acc {met['accuracy']} ({time.perf_counter() - t0:.1f} s)")
    a, b = _platt_fit(np.concatenate(oof_raw), np.concatenate(oof_y))
    m = fit_scorer(X[tail.train], y[tail.train], seed)
    p_tail = platt(m.predict(X[tail.test], prediction_type="Probability", thread_count=THREADS)[:, 1], a, b)
    hold = binary_metrics(p_tail, y[tail.test], threshold)
    hold.update(_selection(ds.net[tail.test], p_tail, threshold))
    base_rows.append({"name": tail.name, "metrics": _take_all(y[tail.train], y[tail.test], ds.net[tail.test])})
    final = fit_scorer(X, y, seed)
    di = DissimilarityIndex.fit(X, seed)
    imp = final.get_feature_importance()
    importance = {n: round(float(v), 3) for n, v in sorted(zip(names, imp), key=lambda e: -e[1]) if v > 0}
    coverage = {n: round(float(np.mean(np.isfinite(X[:, i]))), 4) for i, n in enumerate(names)
                if not n.startswith("signal_source_")}
    beats = (hold.get("roc_auc") or 0) > 0.5 and hold["mean_net_return_taken_pct"] is not None and \
        hold["mean_net_return_taken_pct"] > hold["mean_net_return_all_pct"]
    meta = {"kind": "signal_scorer", "features": names, "sources": known, "threshold": threshold,
            "calibration": {"method": "platt on out-of-fold CV predictions", "a": a, "b": b},
            "dissimilarity": di.to_json(), "seed": seed, "params": SCORER_PARAMS,
            "trained": {"start": str(span[0]), "end": str(span[1]), "rows": int(len(y))}}
    card = {"summary": (f"CatBoost signal scorer: P(the signal's trade pays its round-trip costs over its holding "
                        f"period). Trained on {len(y)} labelled signals of a replay of every enabled plugin over "
                        f"{span[0]} .. {span[1]} (end exclusive) of {data_dir}."),
            "verdict": ("Held-out tail: the signals it takes (score >= threshold) earned more on average than taking "
                        "every signal, with ROC AUC above 0.5." if beats else
                        "Held-out tail: NOT better than the naive baseline (take every signal) — ship it disabled."),
            "beats_baseline": bool(beats),
            "data": {"span": f"{span[0]} .. {span[1]} (end exclusive)", "data_folder": str(data_dir),
                     "rows": int(len(y)), "positive_rate": round(float(y.mean()), 4),
                     "signals_by_source": {s: int(sum(1 for x in ds.sources if x == s)) for s in known},
                     "label": "1 if direction x (close at t + holding) / (close at t) - 1 - round-trip cost > 0; "
                              "holding = the signal's half-life clamped to [1 h, 10 d]",
                     "cv": f"5 purged folds + 15 % held-out tail, embargo {EMBARGO_S // 3600} h",
                     "seed": seed, **ds.meta,
                     "live_only_features": {n: coverage.get(n) for n in LIVE_ONLY},
                     "cv_summary": {k: mean_std([f["metrics"].get(k) for f in fold_rows])
                                    for k in ("accuracy", "precision", "recall", "roc_auc", "log_loss")}},
            "folds": fold_rows, "holdout": {"name": tail.name, "train_n": int(len(tail.train)),
                                            "test_n": int(len(tail.test)), "metrics": hold},
            "baseline": base_rows, "coverage": coverage, "importance": importance}
    return final, meta, card


def _take_all(y_train: np.ndarray, y_test: np.ndarray, net: np.ndarray) -> dict:
    """The naive baseline: take every signal (predict 1, probability = the training base rate)."""
    from sklearn.metrics import log_loss
    p = float(np.clip(y_train.mean(), 1e-6, 1 - 1e-6))
    return {"accuracy": round(float(y_test.mean()), 4), "precision": round(float(y_test.mean()), 4), "recall": 1.0,
            "roc_auc": 0.5, "log_loss": round(float(log_loss(y_test, np.full(len(y_test), p), labels=[0, 1])), 4),
            "mean_net_return_pct": round(float(np.mean(net)) * 100, 4)}


def _iso(ts: float) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(float(ts), timezone.utc).isoformat(timespec="minutes")


# --------------------------------------------------------------------------- regime classifier
def fit_classifier(X: np.ndarray, y: np.ndarray, seed: int):
    import xgboost as xgb
    p = CLASSIFIER_PARAMS
    d = xgb.DMatrix(X, label=y, missing=np.nan)
    return xgb.train({"objective": "multi:softprob", "num_class": len(CLASSES), "max_depth": p["max_depth"],
                      "eta": p["eta"], "min_child_weight": p["min_child_weight"], "tree_method": "hist",
                      "seed": seed, "nthread": THREADS, "eval_metric": "mlogloss"}, d, num_boost_round=p["rounds"])


def _cls_predict(booster, X: np.ndarray) -> np.ndarray:
    return np.asarray(booster.inplace_predict(X), dtype=float).reshape(len(X), -1)


def _persistence(y_train, yn_train, yn_test, y_test) -> dict:
    """The naive baseline: the regime stays what it was (probability of staying = the training rate)."""
    from sklearn.metrics import log_loss, precision_score, recall_score
    stay = float(np.clip(np.mean(y_train == yn_train), 1e-3, 1 - 1e-3))
    prob = np.full((len(yn_test), len(CLASSES)), (1 - stay) / (len(CLASSES) - 1))
    prob[np.arange(len(yn_test)), yn_test] = stay
    present = np.unique(y_test)
    return {"accuracy": round(float(np.mean(yn_test == y_test)), 4),
            "precision_macro": round(float(precision_score(y_test, yn_test, labels=present, average="macro", zero_division=0)), 4),
            "recall_macro": round(float(recall_score(y_test, yn_test, labels=present, average="macro", zero_division=0)), 4),
            "log_loss": round(float(log_loss(y_test, prob, labels=list(range(len(CLASSES))))), 4)}


def train_classifier(rs, *, seed: int, span: tuple[date, date], data_dir: Path) -> tuple:
    folds, tail = purged_splits(rs.t, rs.label_end, n_splits=5, holdout_frac=0.15, embargo_s=EMBARGO_S)
    fold_rows, base_rows = [], []
    for f in folds:
        t0 = time.perf_counter()
        b = fit_classifier(rs.X[f.train], rs.y[f.train], seed)
        met = multiclass_metrics(_cls_predict(b, rs.X[f.test]), rs.y[f.test], len(CLASSES))
        fold_rows.append({"name": f.name, "train_n": int(len(f.train)), "test_n": int(len(f.test)),
                          "train_end": _iso(rs.label_end[f.train].max()), "test_start": _iso(rs.t[f.test[0]]),
                          "metrics": met})
        base_rows.append({"name": f.name, "metrics": _persistence(rs.y[f.train], rs.y_now[f.train], rs.y_now[f.test],
                                                                  rs.y[f.test])})
        _say(f"  classifier {f.name}: train {len(f.train)} test {len(f.test)} acc {met['accuracy']} "
             f"(persistence {base_rows[-1]['metrics']['accuracy']}) ({time.perf_counter() - t0:.1f} s)")
    b = fit_classifier(rs.X[tail.train], rs.y[tail.train], seed)
    hold = multiclass_metrics(_cls_predict(b, rs.X[tail.test]), rs.y[tail.test], len(CLASSES))
    base_rows.append({"name": tail.name, "metrics": _persistence(rs.y[tail.train], rs.y_now[tail.train],
                                                                 rs.y_now[tail.test], rs.y[tail.test])})
    final = fit_classifier(rs.X, rs.y, seed)
    gain = final.get_score(importance_type="gain")
    importance = {REGIME_FEATURES[int(k[1:])]: round(v, 3) for k, v in sorted(gain.items(), key=lambda e: -e[1])}
    coverage = {n: round(float(np.mean(np.isfinite(rs.X[:, i]))), 4) for i, n in enumerate(REGIME_FEATURES)}
    beats = hold["accuracy"] > base_rows[-1]["metrics"]["accuracy"] and hold["log_loss"] < base_rows[-1]["metrics"]["log_loss"]
    dist = {c.value: round(float(np.mean(rs.y == i)), 4) for i, c in enumerate(CLASSES)}
    meta = {"kind": "regime_classifier", "features": list(REGIME_FEATURES), "classes": [c.value for c in CLASSES],
            "window_h": REGIME_WINDOW_H, "seed": seed, "params": CLASSIFIER_PARAMS,
            "trained": {"start": str(span[0]), "end": str(span[1]), "rows": int(len(rs.y))}}
    card = {"summary": (f"XGBoost perp regime classifier: the regime of the next {REGIME_WINDOW_H} h by the "
                        f"specification's label_regime rule, from the hourly perp market of {sorted(set(rs.symbols))} "
                        f"over {span[0]} .. {span[1]} (end exclusive) of {data_dir}."),
            "verdict": ("Held-out tail: more accurate and a lower log loss than 'the regime stays what it was'."
                        if beats else "Held-out tail: NOT better than 'the regime stays what it was' on accuracy "
                        "and log loss together."),
            "beats_baseline": bool(beats),
            "data": {"span": f"{span[0]} .. {span[1]} (end exclusive)", "data_folder": str(data_dir),
                     "rows": int(len(rs.y)), "symbols": sorted(set(rs.symbols)), "class_distribution": dist,
                     "label": f"label_regime on ({REGIME_WINDOW_H} h after t]; liquidations: the perp module's "
                              "open-interest-flush proxy; volatility 95th percentile of the history before t",
                     "cv": f"5 purged folds + 15 % held-out tail, embargo {EMBARGO_S // 3600} h", "seed": seed,
                     "live_only_features": {n: coverage.get(n) for n in REGIME_LIVE_ONLY},
                     "cv_summary": {k: mean_std([f["metrics"].get(k) for f in fold_rows])
                                    for k in ("accuracy", "precision_macro", "recall_macro", "roc_auc_ovr", "log_loss")}},
            "folds": fold_rows, "holdout": {"name": tail.name, "train_n": int(len(tail.train)),
                                            "test_n": int(len(tail.test)), "metrics": hold},
            "baseline": base_rows, "coverage": coverage, "importance": importance}
    return final, meta, card


# --------------------------------------------------------------------------- files
def save_scorer(model, meta: dict, card: dict, out: Path) -> Path:
    from .scorer_model import meta_path
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save_model(str(out), format="cbm")
    meta_path(out).write_text(json.dumps(meta))
    write_card(out.with_name(out.stem + ".card.md"), "Signal scorer (CatBoost) — model card", card,
               ["accuracy", "precision", "recall", "roc_auc", "log_loss", "mean_net_return_all_pct",
                "mean_net_return_taken_pct", "taken"])
    return out


def save_classifier(booster, meta: dict, card: dict, out: Path) -> Path:
    from .regime_classifier import meta_path
    out.parent.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out))
    meta_path(out).write_text(json.dumps(meta))
    write_card(out.with_name(out.stem + ".card.md"), "Perp regime classifier (XGBoost) — model card", card,
               ["accuracy", "precision_macro", "recall_macro", "roc_auc_ovr", "log_loss"])
    return out


def install(out: Path, models_dir: Path) -> list[Path]:
    """Copy a trained model, its sidecar and its card into ``models_dir`` (``train --install``)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for p in (out, out.with_name(out.stem + ".meta.json"), out.with_name(out.stem + ".card.md")):
        shutil.copyfile(p, models_dir / p.name)
        done.append(models_dir / p.name)
    return done
