"""Signal aggregation: many noisy signals per symbol become one combined view.

Interim (issue #2): every source has reliability 1; the combined score is the confidence- and
decay-weighted mean. Issue #4 adds learned per-source reliability behind the same interface.
"""
from __future__ import annotations

from datetime import datetime

from .domain import Signal
from .strategy import CombinedSignal


class SignalAggregator:
    name = "confidence_weighted_mean"

    def reliability(self, source: str) -> float:
        return 1.0

    def combine(self, signals: list[Signal], now: datetime) -> dict[str, CombinedSignal]:
        by_symbol: dict[str, list[tuple[Signal, float]]] = {}
        for s in signals:
            w = s.confidence * s.decay(now) * self.reliability(s.source)
            by_symbol.setdefault(s.symbol, []).append((s, w))
        out: dict[str, CombinedSignal] = {}
        for symbol, items in by_symbol.items():
            total = sum(w for _, w in items)
            score = sum(s.score * w for s, w in items) / total if total > 0 else 0.0
            conf = max((s.confidence * s.decay(now) for s, _ in items), default=0.0)
            contributors = tuple({"source": s.source, "score": s.score, "confidence": s.confidence,
                                  "weight": round(w, 6)} for s, w in items)
            out[symbol] = CombinedSignal(symbol, max(-1.0, min(1.0, score)), conf, contributors)
        return out

    def record_outcome(self, source: str, hit: bool) -> None:
        """Interim: reliability is not learned yet."""
