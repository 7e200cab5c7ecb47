"""The fitted signal scorer as the engine uses it: CatBoost's own ``.cbm`` file plus a JSON sidecar
(``<model>.meta.json``: column order, known sources, calibration, the dissimilarity reference). No pickle.

**Dissimilarity (abstention).** As FreqAI's ``DI_threshold``: the input, standardised with the training
rows' means and deviations (missing values at the mean), is compared with a fixed reference sample of
training rows; DI = distance to its nearest reference row / the reference rows' mean nearest-neighbour
distance. Above the threshold stored with the model (the 99.5th percentile of DI over training rows
outside the reference) the scorer abstains: the model has not seen inputs like it. A signal from a
source the model never saw abstains too.

**Calibration.** The model's raw probability goes through Platt scaling fitted on the out-of-fold
predictions of the purged cross-validation, so ranking and Kelly read a probability whose bins match
observed frequencies (the card's calibration table is on the calibrated values).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .features import scorer_feature_names, source_feature, vectorise

DEFAULT_SCORER_PATH = Path("models/signal_scorer.cbm")


def meta_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.stem + ".meta.json")


def platt(raw: np.ndarray, a: float, b: float) -> np.ndarray:
    raw = np.clip(raw, 1e-6, 1 - 1e-6)
    return 1.0 / (1.0 + np.exp(-(a * np.log(raw / (1 - raw)) + b)))


@dataclass
class DissimilarityIndex:
    columns: np.ndarray      # indices of the columns compared (training coverage >= 50 %)
    mean: np.ndarray
    std: np.ndarray
    reference: np.ndarray    # standardised reference rows
    mean_nn: float
    threshold: float

    @classmethod
    def fit(cls, X: np.ndarray, seed: int, n_ref: int = 1500, quantile: float = 99.5) -> "DissimilarityIndex":
        cover = np.mean(np.isfinite(X), axis=0)
        cols = np.flatnonzero(cover >= 0.5)
        Z = X[:, cols]
        mean = np.nanmean(Z, axis=0)
        std = np.nanstd(Z, axis=0)
        std[~(std > 0)] = 1.0
        rng = np.random.default_rng(seed)
        idx = rng.permutation(len(X))
        ref_idx, rest = idx[:min(n_ref, len(X) // 2)], idx[min(n_ref, len(X) // 2):]
        S = np.nan_to_num((Z - mean) / std)
        ref = S[ref_idx]
        d = _nn(ref, ref, exclude_self=True)
        mean_nn = float(np.mean(d)) if len(d) else 1.0
        probe = S[rest[:3000]]
        di = _nn(probe, ref) / mean_nn if len(probe) else np.zeros(1)
        return cls(cols, mean, std, ref, mean_nn, float(np.percentile(di, quantile)))

    def di(self, row: np.ndarray) -> float:
        z = np.nan_to_num((row[self.columns] - self.mean) / self.std)
        return float(np.sqrt(np.min(np.sum((self.reference - z) ** 2, axis=1))) / self.mean_nn)

    def to_json(self) -> dict:
        return {"columns": self.columns.tolist(), "mean": self.mean.tolist(), "std": self.std.tolist(),
                "reference": np.round(self.reference, 5).tolist(), "mean_nn": self.mean_nn, "threshold": self.threshold}

    @classmethod
    def from_json(cls, d: dict) -> "DissimilarityIndex":
        return cls(np.asarray(d["columns"], dtype=int), np.asarray(d["mean"]), np.asarray(d["std"]),
                   np.asarray(d["reference"], dtype=float), float(d["mean_nn"]), float(d["threshold"]))


def _nn(A: np.ndarray, B: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    out = np.empty(len(A))
    for i in range(0, len(A), 256):
        d = np.sum(A[i:i + 256, None, :] ** 2, axis=2) + np.sum(B ** 2, axis=1)[None, :] - 2 * A[i:i + 256] @ B.T
        d = np.maximum(d, 0.0)
        if exclude_self:
            for k in range(d.shape[0]):
                d[k, i + k] = np.inf
        out[i:i + 256] = np.sqrt(d.min(axis=1))
    return out


class ScorerModel:
    """A loaded scorer: ``predict(base_features, source) -> (probability | None, why)``."""

    def __init__(self, model, meta: dict):
        self.model = model
        self.meta = meta
        self.names: list[str] = meta["features"]
        self.sources: set[str] = set(meta["sources"])
        self.a, self.b = meta["calibration"]["a"], meta["calibration"]["b"]
        self.di = DissimilarityIndex.from_json(meta["dissimilarity"])

    @classmethod
    def load(cls, path: Path) -> "ScorerModel":
        from catboost import CatBoostClassifier
        mp = meta_path(path)
        if not path.is_file() or not mp.is_file():
            raise FileNotFoundError(f"signal scorer model {path} or its {mp.name} is missing "
                                    "(train it: python hydra_engine.py train --component signal_scorer --install)")
        model = CatBoostClassifier()
        model.load_model(str(path))
        return cls(model, json.loads(mp.read_text()))

    def raw(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict(X, prediction_type="Probability", thread_count=1)[:, 1]

    def calibrated(self, X: np.ndarray) -> np.ndarray:
        return platt(self.raw(X), self.a, self.b)

    def predict(self, base: dict[str, float], source: str) -> tuple[float | None, str, float]:
        """(probability or None, why, DI)."""
        if source_feature(source) not in self.names:
            return None, f"unfamiliar input: signal source {source!r} was not in the training data", math.nan
        row = vectorise(base, source, self.names)
        di = self.di.di(row)
        if not di <= self.di.threshold:
            return None, (f"unfamiliar input: dissimilarity {di:.2f} > threshold {self.di.threshold:.2f} "
                          "(nearest training rows far away)"), di
        return float(self.calibrated(row[None, :])[0]), "scored", di


def feature_names_for(sources) -> list[str]:
    return scorer_feature_names(sources)
