"""Signal aggregation: many noisy signals per symbol become one combined view (strategy bible:
"every data source becomes a Signal scored -1 to +1, weighted by historical reliability,
time-decayed, and combined using confidence-weighted averaging").

Per signal i on a symbol the weight is

    w_i = reliability(source_i) * confidence_i * decay_i(now) * modifier_i

* reliability — posterior mean of the source's hit rate under a Beta(a, b) prior (default Beta(2, 2)):
  ``(a + hits) / (a + b + hits + misses)``. A new source starts neutral at 0.5 and moves with
  evidence; optional forgetting (``forget`` < 1) lets old outcomes fade so a source that stopped
  working loses weight. More hits never lower it (tested).
* decay — ``Signal.decay(now)``: halves every half-life, 0 for a signal from the future.
* modifier — hooks (:meth:`SignalAggregator.add_modifier`) through which one signal amplifies or
  dampens others, e.g. the cross-asset graph: HYG credit stress damping long equity signals.

Combined score = sum(w_i * score_i) / sum(w_i): a convex combination, so always in [-1, 1].
Combined confidence = (trust-weighted mean of confidence_i * decay_i) * agreement, where trust is
``reliability * modifier`` and agreement = |sum w_i score_i| / sum w_i |score_i| (1 when every source
points the same way, 0 when they cancel). Stale or conflicting evidence therefore reads as low confidence.
"""
from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import Callable, Mapping, Sequence

from .domain import Signal
from .strategy import CombinedSignal

Modifier = Callable[[str, Sequence[Signal], datetime], Mapping[str, float]]
"""``fn(symbol, signals_on_symbol, now) -> {source: multiplier}``; sources not named keep 1.0."""

MAX_MULTIPLIER = 3.0
_log = logging.getLogger(__name__)


class SignalAggregator:
    name = "reliability_weighted_mean"

    def __init__(self, prior_hits: float = 2.0, prior_misses: float = 2.0, forget: float = 1.0):
        if prior_hits <= 0 or prior_misses <= 0:
            raise ValueError("the Beta prior needs positive pseudo-counts")
        if not 0.0 < forget <= 1.0:
            raise ValueError(f"forget must be in (0, 1], got {forget}")
        self.prior = (float(prior_hits), float(prior_misses))
        self.forget = float(forget)
        self._outcomes: dict[str, list[float]] = {}   # source -> [hits, misses] (possibly faded)
        self._modifiers: list[Modifier] = []

    # ------------------------------------------------------------------ reliability
    def reliability(self, source: str) -> float:
        """Posterior mean hit rate of ``source``; 0.5 with the default prior and no outcomes."""
        hits, misses = self._outcomes.get(source, (0.0, 0.0))
        a, b = self.prior
        return (a + hits) / (a + b + hits + misses)

    def record_outcome(self, source: str, hit: bool) -> None:
        """Count one resolved prediction of ``source`` (did the price move the way it said?)."""
        counts = self._outcomes.setdefault(source, [0.0, 0.0])
        counts[0] *= self.forget
        counts[1] *= self.forget
        counts[0 if hit else 1] += 1.0

    def outcomes(self, source: str) -> tuple[float, float]:
        hits, misses = self._outcomes.get(source, (0.0, 0.0))
        return hits, misses

    # ------------------------------------------------------------------ modifiers
    def add_modifier(self, fn: Modifier) -> None:
        """Register a hook returning per-source multipliers (clipped to [0, 3]); hooks multiply."""
        self._modifiers.append(fn)

    def _multipliers(self, symbol: str, signals: Sequence[Signal], now: datetime) -> dict[str, float]:
        out: dict[str, float] = {}
        for fn in self._modifiers:
            try:   # the hook and reading what it returned: {"a": None}, "high" or a list must not end the cycle
                factors = {source: float(f) for source, f in (fn(symbol, signals, now) or {}).items()}
            except Exception:  # a broken hook must not silence every signal: log and ignore it
                _log.exception("signal modifier %r failed on %s", fn, symbol)
                continue
            for source, f in factors.items():
                f = min(MAX_MULTIPLIER, max(0.0, f)) if math.isfinite(f) else 1.0
                out[source] = out.get(source, 1.0) * f
        return out

    # ------------------------------------------------------------------ combine
    def combine(self, signals: list[Signal], now: datetime) -> dict[str, CombinedSignal]:
        by_symbol: dict[str, list[Signal]] = {}
        for s in signals:
            by_symbol.setdefault(s.symbol, []).append(s)
        out: dict[str, CombinedSignal] = {}
        for symbol, items in by_symbol.items():
            # a signal from the future counts nothing -- neither its score nor its source's trust, which
            # would otherwise dilute the combined confidence of the signals that do count
            items = [s for s in items if s.created_at <= now]
            if not items:
                out[symbol] = CombinedSignal(symbol, 0.0, 0.0, ())
                continue
            mult = self._multipliers(symbol, items, now) if self._modifiers else {}
            rows = []
            for s in items:
                rel, decay, m = self.reliability(s.source), s.decay(now), mult.get(s.source, 1.0)
                rows.append((s, rel, decay, m, rel * s.confidence * decay * m))
            total = sum(r[4] for r in rows)
            score = sum(r[0].score * r[4] for r in rows) / total if total > 0 else 0.0
            trust = sum(r[1] * r[3] for r in rows)
            mean_conf = sum(r[1] * r[3] * r[0].confidence * r[2] for r in rows) / trust if trust > 0 else 0.0
            spread = sum(abs(r[0].score) * r[4] for r in rows)
            agreement = abs(score) * total / spread if spread > 0 else 0.0
            contributors = tuple({"source": s.source, "score": s.score, "confidence": s.confidence,
                                  "decay": round(decay, 6), "reliability": round(rel, 6), "modifier": round(m, 6),
                                  "weight": round(w, 6)} for s, rel, decay, m, w in rows)
            out[symbol] = CombinedSignal(symbol, max(-1.0, min(1.0, score)),
                                         max(0.0, min(1.0, mean_conf * agreement)), contributors)
        return out

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> dict:
        return {"kind": self.name, "prior": list(self.prior), "forget": self.forget,
                "sources": {k: {"hits": v[0], "misses": v[1]} for k, v in sorted(self._outcomes.items())}}

    def load_state(self, state: Mapping) -> None:
        """Restore learned outcomes; the prior and forgetting stay as configured now."""
        if not state or state.get("kind") != self.name:
            return
        outcomes = {k: [float(v["hits"]), float(v["misses"])] for k, v in state.get("sources", {}).items()}
        # a NaN count silently zeroed the source's symbols, a negative one divided by zero: start it afresh
        bad = [k for k, (h, m) in outcomes.items() if not (math.isfinite(h) and math.isfinite(m) and h >= 0 and m >= 0)]
        for k in bad:
            _log.warning("saved reliability of source %s is not valid (%s): it starts from the prior", k, outcomes.pop(k))
        self._outcomes = outcomes
