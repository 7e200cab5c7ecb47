"""Purged, embargoed time-series cross-validation, the metrics and the model cards.

:func:`purged_splits` cuts rows (sorted by the time each became known, ``t``; each with the end of its
label window, ``label_end``) into a development part and a final held-out tail. The development part is
cut into ``n_splits + 1`` consecutive blocks; fold k tests on block k+1 and trains on the rows before it
**whose label window ends, plus the embargo, before the fold's first test row is known** — so no
training label overlaps a test label (López de Prado's purging), and the embargo keeps serial
correlation from leaking across the boundary. The tail is handled the same way against everything before.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Split:
    name: str
    train: np.ndarray      # row indices
    test: np.ndarray


def purged_splits(t: np.ndarray, label_end: np.ndarray, *, n_splits: int = 5, holdout_frac: float = 0.15,
                  embargo_s: float = 0.0) -> tuple[list[Split], Split]:
    """CV folds and the held-out tail over rows sorted by ``t`` (epoch seconds)."""
    t = np.asarray(t, dtype=float)
    label_end = np.asarray(label_end, dtype=float)
    if len(t) and np.any(np.diff(t) < 0):
        raise ValueError("purged_splits: rows must be sorted by the time they became known")
    n = len(t)
    cut = int(n * (1 - holdout_frac))
    while 0 < cut < n and t[cut - 1] == t[cut]:   # one moment is never split between dev and tail
        cut += 1
    if cut < (n_splits + 1) * 2 or cut >= n:
        raise ValueError(f"purged_splits: {n} rows are too few for {n_splits} folds and a held-out tail")

    def train_before(candidates: np.ndarray, first_test_t: float) -> np.ndarray:
        return candidates[label_end[candidates] + embargo_s < first_test_t]

    edges = np.linspace(0, cut, n_splits + 2).astype(int)
    folds = []
    for k in range(n_splits):
        lo, hi = edges[k + 1], edges[k + 2]
        while lo < hi and lo > 0 and t[lo - 1] == t[lo]:
            lo += 1
        test = np.arange(lo, hi)
        if not len(test):
            continue
        train = train_before(np.arange(0, lo), t[lo])
        folds.append(Split(f"fold {k + 1}", train, test))
    tail = Split("held-out tail", train_before(np.arange(0, cut), t[cut]), np.arange(cut, n))
    return folds, tail


# --------------------------------------------------------------------------- metrics
def calibration_table(p: np.ndarray, y: np.ndarray, bins: int = 10) -> list[dict]:
    edges = np.linspace(0, 1, bins + 1)
    rows = []
    for i in range(bins):
        m = (p >= edges[i]) & ((p < edges[i + 1]) if i < bins - 1 else (p <= 1))
        if m.sum():
            rows.append({"bin": f"{edges[i]:.1f}-{edges[i + 1]:.1f}", "n": int(m.sum()),
                         "mean_predicted": round(float(p[m].mean()), 4), "observed": round(float(y[m].mean()), 4)})
    return rows


def binary_metrics(p: np.ndarray, y: np.ndarray, threshold: float) -> dict:
    from sklearn.metrics import accuracy_score, log_loss, precision_score, recall_score, roc_auc_score
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    y = np.asarray(y, dtype=int)
    pred = (p >= threshold).astype(int)
    two = len(np.unique(y)) == 2
    return {"n": int(len(y)), "base_rate": round(float(y.mean()), 4),
            "accuracy": round(float(accuracy_score(y, pred)), 4),
            "precision": round(float(precision_score(y, pred, zero_division=0)), 4),
            "recall": round(float(recall_score(y, pred, zero_division=0)), 4),
            "roc_auc": round(float(roc_auc_score(y, p)), 4) if two else None,
            "log_loss": round(float(log_loss(y, p, labels=[0, 1])), 4),
            "calibration": calibration_table(p, y)}


def multiclass_metrics(prob: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    from sklearn.metrics import accuracy_score, log_loss, precision_score, recall_score, roc_auc_score
    prob = np.clip(np.asarray(prob, dtype=float), 1e-9, 1.0)
    prob = prob / prob.sum(axis=1, keepdims=True)
    y = np.asarray(y, dtype=int)
    pred = prob.argmax(axis=1)
    present = np.unique(y)
    auc = None
    if len(present) >= 2:
        try:   # one-vs-rest over the classes the fold holds
            auc = round(float(roc_auc_score(y, prob[:, present] / prob[:, present].sum(axis=1, keepdims=True),
                                            multi_class="ovr", labels=present)), 4)
        except ValueError:
            auc = None
    top = prob.max(axis=1)
    return {"n": int(len(y)), "accuracy": round(float(accuracy_score(y, pred)), 4),
            "precision_macro": round(float(precision_score(y, pred, labels=present, average="macro", zero_division=0)), 4),
            "recall_macro": round(float(recall_score(y, pred, labels=present, average="macro", zero_division=0)), 4),
            "roc_auc_ovr": auc,
            "log_loss": round(float(log_loss(y, prob, labels=list(range(n_classes)))), 4),
            "calibration": calibration_table(top, (pred == y).astype(float))}


def mean_std(values) -> str:
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return "n/a"
    return f"{np.mean(v):.3f} ± {np.std(v):.3f}"


# --------------------------------------------------------------------------- the card
def _table(rows: list[dict], cols: list[str]) -> list[str]:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |")
    return out


def write_card(path: Path, title: str, card: dict, headline_cols: list[str]) -> Path:
    """The model card: a readable Markdown page with the whole record as JSON at its end."""
    lines = [f"# {title}", ""]
    for k in ("summary", "verdict"):
        if card.get(k):
            lines += [card[k], ""]
    lines += ["## Data", "", *(f"- {k}: {v}" for k, v in card["data"].items()), ""]
    lines += ["## Cross-validation (purged, embargoed) and the held-out tail", ""]
    rows = [{"split": f["name"], "train": f["train_n"], **{c: f["metrics"].get(c) for c in headline_cols}}
            for f in [*card["folds"], card["holdout"]]]
    lines += _table(rows, ["split", "train", *headline_cols]) + [""]
    lines += ["## Naive baseline on the same rows", ""]
    lines += _table([{"split": b["name"], **b["metrics"]} for b in card["baseline"]],
                    ["split", *[c for c in card["baseline"][0]["metrics"]]]) + [""]
    lines += ["## Calibration (held-out tail)", ""]
    lines += _table(card["holdout"]["metrics"]["calibration"], ["bin", "n", "mean_predicted", "observed"]) + [""]
    lines += ["## Feature coverage (share of training rows with a value)", ""]
    lines += _table([{"feature": k, "coverage": v} for k, v in card["coverage"].items()], ["feature", "coverage"]) + [""]
    lines += ["## Feature importance (final model)", ""]
    lines += _table([{"feature": k, "importance": v} for k, v in card["importance"].items()], ["feature", "importance"])
    lines += ["", "## Record", "", "```json", json.dumps(card, indent=1, default=str), "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path
