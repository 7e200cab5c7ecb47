"""Strategy weights for ranking (the loop's ADAPT step).

Interim (issue #2): equal weights, normalised to sum to one. Issue #4 makes them follow realised
results behind the same interface."""
from __future__ import annotations

from .domain import ClosedTrade


class StrategyWeights:
    name = "equal"

    def __init__(self, strategies: list[str]):
        self.strategies = list(strategies)

    def weight(self, strategy: str) -> float:
        return 1.0 / len(self.strategies) if strategy in self.strategies else 0.0

    def as_dict(self) -> dict[str, float]:
        return {s: self.weight(s) for s in self.strategies}

    def update(self, trade: ClosedTrade) -> None:
        """Interim: equal weights do not adapt."""

    def to_state(self) -> dict:
        return {"kind": self.name}

    def load_state(self, state: dict) -> None:
        """Nothing to restore for equal weights."""
