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
        entry = self._entry(market, state.symbol, lambda: state)
        return entry if entry.__class__ is tuple else self.resolve((entry,))[0]

    def forecast_later(self, market, symbol: str, state_fn) -> tuple | Forecast:
        """What :meth:`label` would answer for ``symbol`` at this snapshot, with the model's prediction left
        for later (:meth:`resolve`): the features are computed now, from this snapshot, and the cache holds
        the entry exactly as ``label`` would have put it there. For a consumer that reads the forecast later
        (the classifier monitor, 24 h on): its predictions run in one batch instead of one call per bar.
        ``state_fn()`` gives the perp state, read only if the rule answers (inputs too sparse)."""
        return self._entry(market, symbol, state_fn)

    def resolve(self, entries) -> list[tuple[PerpRegime | None, float, str]]:
        """The answers of ``entries`` (from :meth:`forecast_later`); the rows not yet predicted are predicted
        in one call. XGBoost predicts each row on its own: a row in a batch gets the bits it gets alone
        (``tests/test_ml_pins.py`` checks it on the shipped model)."""
        unpredicted = [e for e in entries if e.__class__ is Forecast and e.out is None]
        if unpredicted:
            rows = [e.row for e in unpredicted]
            probs = self.predict_proba(np.vstack(rows) if len(rows) > 1 else rows[0][None, :])
            for e, p in zip(unpredicted, probs):
                k = int(np.argmax(p))
                e.out = (self.classes[k], float(p[k]), f"classifier: next-24h {self.classes[k].value} p={p[k]:.2f}")
        return [e if e.__class__ is tuple else e.out for e in entries]

    def _entry(self, market, symbol: str, state_fn) -> tuple | Forecast:
        # one forecast per closed bar: its inputs are hourly (bars, open interest; funding every 8 h), so
        # the cycles between two bar closes (live: 59 of 60) reuse it
        key = (symbol, market.newest_bar_ts(symbol))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        feats = regime_features(market, symbol)
        row = np.array([feats[f] for f in self.features], dtype=float)
        if np.count_nonzero(np.isfinite(row)) / len(row) < MIN_FEATURES:   # np.mean of the booleans: count / n
            regime, conf, why = self.fallback.label(state_fn(), market)
            out: tuple | Forecast = (regime, conf, f"rule (classifier inputs too sparse): {why}")
        else:
            out = Forecast(row, self)
        if len(self._cache) > 256:
            self._cache.clear()
        self._cache[key] = out
        return out


class Forecast:
    """A classifier forecast whose features are fixed (computed from its bar's snapshot) and whose model
    prediction may wait (``out`` is None until then); ``owner`` is the labeller whose model predicts it."""

    __slots__ = ("out", "owner", "row")

    def __init__(self, row: np.ndarray, owner: ClassifierRegimeLabeller):
        self.row, self.owner, self.out = row, owner, None


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
