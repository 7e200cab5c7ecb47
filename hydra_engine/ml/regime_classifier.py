"""The trained perp regime classifier as the engine uses it: XGBoost's own JSON model file
(``models/regime_classifier.json``) plus a sidecar (``regime_classifier.meta.json``: feature order, classes).

It is a perp regime *labeller* (``perp.stats.set_regime_labeller``): every perp consumer — the leverage
governance (CASCADE_RISK ×0.3), the primitives that trade only in some regimes (``funding_carry`` in
RANGING), the perp kill rule — reads its forecast of the next 24 h regime, with the forecast's
probability as the regime confidence. Without an installed model, or on a symbol whose history is too
short for its features, the rule labeller answers (and its reason says so).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..perp.stats import PerpRegime, RuleRegimeLabeller, set_regime_labeller
from .features import REGIME_FEATURES, regime_features
from .labels import CLASSES

DEFAULT_CLASSIFIER_PATH = Path("models/regime_classifier.json")
MIN_FEATURES = 0.6   # fewer than this share of the features present: the rule answers
log = logging.getLogger(__name__)


def meta_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.stem + ".meta.json")


class ClassifierRegimeLabeller:
    """``label(state, market) -> (PerpRegime | None, probability, why)`` from the XGBoost model."""

    name = "perp_xgb_classifier_v1"

    def __init__(self, booster, meta: dict):
        self.booster = booster
        self.meta = meta
        self.features: list[str] = meta["features"]
        if tuple(self.features) != REGIME_FEATURES:
            raise ValueError(f"regime classifier was trained on features {self.features}, this HYDRA computes "
                             f"{list(REGIME_FEATURES)}: retrain it")
        self.classes = [PerpRegime(c) for c in meta["classes"]]
        self.fallback = RuleRegimeLabeller()
        self._cache: dict = {}

    @classmethod
    def load(cls, path: Path) -> "ClassifierRegimeLabeller":
        import xgboost as xgb
        mp = meta_path(path)
        if not path.is_file() or not mp.is_file():
            raise FileNotFoundError(f"regime classifier {path} or its {mp.name} is missing")
        booster = xgb.Booster()
        booster.load_model(str(path))
        booster.set_param({"nthread": 1})
        return cls(booster, json.loads(mp.read_text()))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.inplace_predict(X), dtype=float).reshape(len(X), -1)

    def label(self, state, market) -> tuple[PerpRegime | None, float, str]:
        # one forecast per closed bar: its inputs are hourly (bars, open interest; funding every 8 h), so
        # the cycles between two bar closes (live: 59 of 60) reuse it
        key = (state.symbol, market.newest_bar_ts(state.symbol))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        feats = regime_features(market, state.symbol)
        row = np.array([feats[f] for f in self.features], dtype=float)
        if np.mean(np.isfinite(row)) < MIN_FEATURES:
            regime, conf, why = self.fallback.label(state, market)
            out = (regime, conf, f"rule (classifier inputs too sparse): {why}")
        else:
            p = self.predict_proba(row[None, :])[0]
            k = int(np.argmax(p))
            out = (self.classes[k], float(p[k]), f"classifier: next-24h {self.classes[k].value} p={p[k]:.2f}")
        if len(self._cache) > 256:
            self._cache.clear()
        self._cache[key] = out
        return out


def labeller_for(settings) -> object:
    """The labeller the settings ask for, installed; the rule labeller when the model is not there."""
    cfg = getattr(settings, "regime_model", None)
    labeller = RuleRegimeLabeller()
    if cfg is not None and cfg.perp_labeller == "classifier":
        path = Path(cfg.model_path)
        path = path if path.is_absolute() else settings.resolve_path(str(path))
        try:
            labeller = ClassifierRegimeLabeller.load(path)
        except FileNotFoundError as exc:
            log.info("perp regime classifier not installed (%s): the rule labeller labels perp regimes", exc)
    set_regime_labeller(labeller)
    return labeller
