"""The ML signal scorer (issue #21), a plugin of the ``scorers`` kind: each signal's calibrated probability
of paying its round-trip costs over its holding period, from the CatBoost model ``models/signal_scorer.cbm``
(trained by ``python hydra_engine.py train --component signal_scorer``).

Enable it with ``[scorers] enabled = ["ml_signal_scorer"]``. The engine puts the probability in the cycle
report (``ml_scores``), feeds it to ranking and Kelly sizing in place of the plugin's confidence, and
refuses a proposal scored below ``[scorers] threshold`` (0.45) by the rule ``ml_score_below_threshold``.
It abstains — no score, the engine falls back to the plugin's own confidence, the reason recorded — when
no model is installed, on a signal source the model never saw, and on inputs unlike its training data
(the dissimilarity index, see ``hydra_engine/ml/scorer_model.py``).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from hydra_engine.config import PROJECT_ROOT
from hydra_engine.ml.features import FEATURE_SET_ID, scorer_features
from hydra_engine.plugin_kinds import SignalScorer

log = logging.getLogger(__name__)


class MLScorerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_path: str = "models/signal_scorer.cbm"
    record_inputs: bool = True     # the scored signal's features go to the cycle report (later retraining)
    # no model, no score: only the features are recorded (paper/live with the scorer not enabled, so that a
    # later retraining has the live-only values from the first day; see hydra_engine/ml/recorded.py)
    record_only: bool = False


def _opinion(signal) -> tuple:
    """A signal re-emitted unchanged on later cycles is the same opinion: scored (or recorded) once."""
    return signal.source, signal.symbol, signal.created_at, signal.score, signal.confidence


class MLSignalScorer(SignalScorer):
    name = "ml_signal_scorer"
    interface_version = 1

    def __init__(self, params: dict | None = None, *, model=None):
        self.params = MLScorerParams(**(params or {}))
        self.abstain_reason: str | None = None
        self.last_inputs: dict | None = None
        self.model = model
        self.missing: str | None = None
        self._seen: dict = {}
        if self.params.record_only:
            self.missing = "recording inputs only: the scorer is not enabled"
        elif model is None:
            path = Path(self.params.model_path)
            path = path if path.is_absolute() else PROJECT_ROOT / path
            try:
                from hydra_engine.ml.scorer_model import ScorerModel
                self.model = ScorerModel.load(path)
            except FileNotFoundError as exc:   # enabled but not installed: abstain on every signal, say why
                self.missing = str(exc)
                log.warning("ml_signal_scorer: %s; it abstains (plugins' own confidence is used)", exc)

    def score(self, signal, ctx) -> float | None:
        self.last_inputs = None
        if self.params.record_only:
            return self._record_only(signal, ctx)
        if self.model is None:
            self.abstain_reason = f"no model installed ({self.missing})"
            return None
        # a signal re-emitted unchanged on later cycles is the same opinion: scored once, when first seen
        # (as training keeps it once, with the features of its first cycle)
        key = _opinion(signal)
        hit = self._seen.get(key)
        if hit is None:
            base = scorer_features(signal, ctx.market, ctx.now)
            p, why, di = self.model.predict(base, signal.source)
            inputs = {k: round(v, 6) for k, v in base.items() if not math.isnan(v)} if self.params.record_inputs else None
            if inputs is not None and math.isfinite(di):
                inputs["dissimilarity"] = round(di, 4)
            if inputs is not None:   # which columns these are: a later retrain uses them only if they are its own
                inputs["feature_set"] = FEATURE_SET_ID
            if len(self._seen) > 20_000:
                self._seen.clear()
            hit = self._seen[key] = (p, why, inputs, ctx.now)
        p, why, inputs, first = hit
        if inputs is not None:
            self.last_inputs = inputs if first == ctx.now else {"scored_at": first.isoformat()}
        self.abstain_reason = None if p is not None else why
        return p

    def _record_only(self, signal, ctx) -> None:
        """The features of a signal first seen now, for the journal; never a score."""
        self.abstain_reason = self.missing
        key = _opinion(signal)
        if key in self._seen:
            return None
        if len(self._seen) > 20_000:
            self._seen.clear()
        self._seen[key] = ctx.now
        base = scorer_features(signal, ctx.market, ctx.now)
        self.last_inputs = {k: round(v, 6) for k, v in base.items() if not math.isnan(v)}
        self.last_inputs["feature_set"] = FEATURE_SET_ID
        return None
