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
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .features import SCORER_BASE_FEATURES, scorer_feature_names, source_feature

DEFAULT_SCORER_PATH = Path("models/signal_scorer.cbm")
log = logging.getLogger(__name__)


def meta_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.stem + ".meta.json")


def platt(raw: np.ndarray, a: float, b: float) -> np.ndarray:
    raw = np.minimum(np.maximum(raw, 1e-6), 1 - 1e-6)   # np.clip's own definition (NaN kept), less its wrapper
    return 1.0 / (1.0 + np.exp(-(a * np.log(raw / (1 - raw)) + b)))


@dataclass
class DissimilarityIndex:
    columns: np.ndarray      # indices of the columns compared (training coverage >= 50 %)
    mean: np.ndarray
    std: np.ndarray
    reference: np.ndarray    # standardised reference rows
    mean_nn: float
    threshold: float
    _ref_sq: np.ndarray | None = field(default=None, repr=False, compare=False)
    _ref_norm: float = field(default=0.0, repr=False, compare=False)
    _ref_m2: np.ndarray | None = field(default=None, repr=False, compare=False)

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
        z = (row[self.columns] - self.mean) / self.std
        nan = np.isnan(z)
        if nan.any():
            z[nan] = 0.0
        if np.isinf(z).any():   # as np.nan_to_num: infinities to the largest finite values
            z = np.nan_to_num(z)
        return float(np.sqrt(self._nearest_sq(z)) / self.mean_nn)

    def di_reference(self, row: np.ndarray) -> float:
        """The definition, every reference row summed (what :meth:`di` must equal bit for bit)."""
        z = np.nan_to_num((row[self.columns] - self.mean) / self.std)
        return float(np.sqrt(np.min(np.sum((self.reference - z) ** 2, axis=1))) / self.mean_nn)

    def _nearest_sq(self, z: np.ndarray) -> float:
        """``min_i sum((reference_i - z) ** 2)``, exactly as the direct sum computes it, at a fraction of its
        cost: ``|r|^2 - 2 r.z`` (one matrix-vector product; ``|z|^2`` is the same for every row) places every
        row's distance within a margin far wider than its rounding error (1e-9 relative to the largest
        terms, against ~1e-14); only the rows that margin cannot rule out — usually one — are summed the
        direct way, so the minimum is the direct sum's, bit for bit."""
        ref = self.reference
        if self._ref_sq is None:
            self._ref_sq = np.einsum("ij,ij->i", ref, ref)
            self._ref_norm = float(np.sqrt(np.max(self._ref_sq))) if len(ref) else 0.0
            self._ref_m2 = -2.0 * ref     # exact: a power of two
        zmax = float(np.abs(z).max()) if len(z) else 0.0
        if not zmax < 1e100:   # huge inputs (an infinity clipped by nan_to_num): no bound, the direct way
            with np.errstate(over="ignore", invalid="ignore"):
                return float(np.min(np.sum((ref - z) ** 2, axis=1)))
        z_sq = float(z @ z)
        approx = self._ref_m2 @ z
        approx += self._ref_sq
        margin = 1e-9 * (self._ref_norm + math.sqrt(z_sq)) ** 2 + 1e-300
        cand = np.flatnonzero(approx <= approx.min() + 2.0 * margin)
        return float(np.min(np.sum((ref[cand] - z) ** 2, axis=1)))

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


class ObliviousTrees:
    """CatBoost's own prediction of ONE row, without the ``Pool`` CatBoost builds on every call (most of
    what a single-row ``predict`` costs; ~50 us against ~650 us on the loaded machine, bench/RESULTS.md
    section 11): the same oblivious trees read from the model's JSON export,
    evaluated the way CatBoost's C++ evaluator does, so the probability is bit-identical:

    * each feature cast to float32 (CatBoost's input type) and compared ``value > border`` with the
      float32 border; a NaN takes the side its feature's ``nan_value_treatment`` says (``AsTrue``: the
      true side; ``AsIs``/``AsFalse``: the false side, as ``NaN > border`` is false);
    * the leaf index of a tree is the sum of ``bit_k << k`` over its splits in order;
    * the leaf values summed tree by tree in order (double), then ``scale * sum + bias``;
    * the probability ``1 / (1 + exp(-raw))`` with the C library's ``exp`` (``math.exp``).

    :meth:`ScorerModel.load` checks it against ``CatBoostClassifier.predict`` on rows around the
    training data and keeps CatBoost's own path where they differ at all (or the model is of a kind this
    does not read: categorical features, non-symmetric trees, several outputs)."""

    def __init__(self, doc: dict):
        trees = doc["oblivious_trees"]
        info = doc["features_info"]
        if set(info) != {"float_features"} or not trees:
            raise ValueError("only float features are read")
        ff = {f["feature_index"]: f for f in info["float_features"]}
        if any(f["flat_feature_index"] != k for k, f in ff.items()):
            raise ValueError("flat and float feature indices differ")
        depth = len(trees[0]["splits"])
        if any(len(t["splits"]) != depth or len(t["leaf_values"]) != 1 << depth for t in trees):
            raise ValueError("trees of different depths or several outputs")
        if any(sp["split_type"] != "FloatFeature" for t in trees for sp in t["splits"]):
            raise ValueError("a split that is not on a float feature")
        splits = [sp for t in trees for sp in t["splits"]]
        self.feature = np.array([sp["float_feature_index"] for sp in splits], dtype=np.intp)
        self.border = np.array([sp["border"] for sp in splits], dtype=np.float32)
        self.nan_true = np.array([ff[sp["float_feature_index"]]["nan_value_treatment"] == "AsTrue"
                                  for sp in splits], dtype=bool)
        self.any_nan_true = bool(self.nan_true.any())
        self.n_features = len(ff)
        if depth > 8:
            raise ValueError("trees deeper than 8")
        self.depth = depth
        self.offset = np.arange(len(trees), dtype=np.intp) << depth
        self.leaves = np.array([v for t in trees for v in t["leaf_values"]], dtype=float)
        scale, bias = doc["scale_and_bias"]
        if isinstance(bias, list):
            if len(bias) != 1:
                raise ValueError("several outputs")
            bias = bias[0]
        self.scale, self.bias = float(scale), float(bias)

    @classmethod
    def of(cls, model) -> "ObliviousTrees":
        with tempfile.TemporaryDirectory(prefix="hydra-cbm-") as tmp:
            path = Path(tmp) / "model.json"
            model.save_model(str(path), format="json")
            return cls(json.loads(path.read_text()))

    def raw(self, row: np.ndarray) -> float:
        with np.errstate(over="ignore"):   # beyond float32: +-inf, as CatBoost's own cast
            bits = row.astype(np.float32)[self.feature] > self.border   # NaN > border: False
        if self.any_nan_true:
            nan = np.isnan(row[self.feature])
            if nan.any():
                bits[nan] = self.nan_true[nan]
        idx = np.packbits(bits.reshape(-1, self.depth), axis=1, bitorder="little")[:, 0]
        # the leaves summed tree after tree, as CatBoost does: an accumulation is sequential by definition
        return self.scale * float(np.add.accumulate(self.leaves[self.offset + idx])[-1]) + self.bias

    def probability(self, row: np.ndarray) -> float:
        return 1.0 / (1.0 + math.exp(-self.raw(row)))


class ScorerModel:
    """A loaded scorer: ``predict(base_features, source) -> (probability | None, why)``."""

    def __init__(self, model, meta: dict):
        self.model = model
        self.meta = meta
        self.names: list[str] = meta["features"]
        self.sources: set[str] = set(meta["sources"])
        self.a, self.b = meta["calibration"]["a"], meta["calibration"]["b"]
        self.di = DissimilarityIndex.from_json(meta["dissimilarity"])
        # the row of vectorise() built by index: base features in the model's order, one-hot per source
        base = set(SCORER_BASE_FEATURES)
        self._base_pos = np.array([i for i, n in enumerate(self.names) if n in base], dtype=np.intp)
        self._base_names = [n for n in self.names if n in base]
        self._hot = {n: i for i, n in enumerate(self.names) if n.startswith("signal_source_")}
        self._other_nan = np.array([i for i, n in enumerate(self.names)
                                    if n not in base and not n.startswith("signal_source_")], dtype=np.intp)
        self.trees: ObliviousTrees | None = None
        self.fast_path_note = "CatBoost predict"
        try:
            trees = ObliviousTrees.of(model)
            if self._same_as_catboost(trees):
                self.trees, self.fast_path_note = trees, "exact tree evaluator"
            else:
                self.fast_path_note = "CatBoost predict (the tree evaluator differed from it on the check rows)"
        except (ValueError, KeyError, TypeError) as exc:
            self.fast_path_note = f"CatBoost predict (tree evaluator: {exc})"
        if self.trees is None:
            log.info("signal scorer: %s", self.fast_path_note)

    def _check_rows(self) -> np.ndarray:
        """Rows like the training data (500 dissimilarity reference rows, un-standardised, the columns it
        does not cover missing) and a jittered copy of them with a fifth of the values missing."""
        d = self.di
        ref = d.reference[:500]
        rows = np.full((len(ref), len(self.names)), np.nan)
        rows[:, d.columns] = ref * d.std + d.mean
        rng = np.random.default_rng(0)
        jitter = rows * rng.normal(1.0, 0.05, rows.shape)
        jitter[rng.random(rows.shape) < 0.2] = np.nan
        return np.vstack([rows, jitter])

    def _same_as_catboost(self, trees: "ObliviousTrees") -> bool:
        X = self._check_rows()
        if trees.n_features != X.shape[1]:
            return False
        # rows exactly on, just above and just below split borders (float32 neighbours)
        edge = np.tile(X[:3], (3 * min(len(trees.feature), 200), 1))
        with np.errstate(over="ignore"):
            for k, (f, b) in enumerate(zip(trees.feature[:200], trees.border[:200])):
                for j, v in enumerate((b, np.nextafter(b, np.float32(np.inf)), np.nextafter(b, np.float32(-np.inf)))):
                    edge[(3 * k + j) * 3:(3 * k + j) * 3 + 3, f] = float(v)
        X = np.vstack([X, edge])
        want = self.model.predict(X, prediction_type="Probability", thread_count=1)[:, 1]
        got = np.array([trees.probability(r) for r in X])
        return bool(np.array_equal(got, want))

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
        if self.trees is not None and len(X) == 1:   # the cycle's case: one signal, no CatBoost Pool
            return np.array([self.trees.probability(X[0])])
        return self.model.predict(X, prediction_type="Probability", thread_count=1)[:, 1]

    def row(self, base: dict[str, float], source: str) -> np.ndarray:
        """:func:`~.features.vectorise` by precomputed index (the same row)."""
        row = np.zeros(len(self.names))
        row[self._base_pos] = [base.get(n, math.nan) for n in self._base_names]
        if len(self._other_nan):
            row[self._other_nan] = math.nan
        hot = self._hot.get(source_feature(source))
        if hot is not None:
            row[hot] = 1.0
        return row

    def calibrated(self, X: np.ndarray) -> np.ndarray:
        return platt(self.raw(X), self.a, self.b)

    def predict(self, base: dict[str, float], source: str) -> tuple[float | None, str, float]:
        """(probability or None, why, DI)."""
        if source_feature(source) not in self.names:
            return None, f"unfamiliar input: signal source {source!r} was not in the training data", math.nan
        row = self.row(base, source)
        di = self.di.di(row)
        if not di <= self.di.threshold:
            return None, (f"unfamiliar input: dissimilarity {di:.2f} > threshold {self.di.threshold:.2f} "
                          "(nearest training rows far away)"), di
        return float(self.calibrated(row[None, :])[0]), "scored", di


def feature_names_for(sources) -> list[str]:
    return scorer_feature_names(sources)
