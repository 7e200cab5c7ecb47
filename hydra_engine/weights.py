"""Strategy weights for ranking (the loop's ADAPT step: "strategy weights updated based on recent
win rates").

Each strategy keeps two exponentially weighted statistics over its closed trades — win rate and
average R multiple — with a half-life counted in trades, starting from a neutral 50 % / 0 R so a new
strategy is neither favoured nor punished. Its merit is ``exp(avg_R + (win_rate - 0.5))`` (1 when
neutral; ×e per extra 1 R of expectancy), and the weights are the merits normalised to sum to one and
then bounded: ``w_i = clip(λ · merit_i, floor, cap)`` with λ found by bisection so the bounded
weights still sum to one. The floor keeps a cold strategy alive long enough to recover (its trades
keep arriving); the cap stops one hot streak from starving the rest. Every update appends
``(time, weights)`` to a bounded history, and the whole state survives restarts via to_state/load_state.
"""
from __future__ import annotations

import logging
import math
from typing import Mapping

from .domain import ClosedTrade

_log = logging.getLogger(__name__)


def bounded_normalise(merits: Mapping[str, float], floor: float, cap: float) -> dict[str, float]:
    """Weights proportional to ``merits`` as far as the bounds allow, each in [floor, cap], sum 1.

    Infeasible bounds are widened to the nearest feasible ones (floor ≤ 1/n ≤ cap)."""
    n = len(merits)
    if n == 0:
        return {}
    if n == 1:   # what the bisection below converges to for a lone strategy: the cap widens to 1
        return {k: 1.0 for k in merits}
    floor, cap = min(floor, 1.0 / n), max(cap, 1.0 / n)
    keys = list(merits)
    m = [max(float(merits[k]), 1e-12) if math.isfinite(merits[k]) else 1e-12 for k in keys]
    clip = lambda lam: [min(cap, max(floor, lam * x)) for x in m]  # noqa: E731
    if n * cap <= 1.0 + 1e-12:   # the cap is (about) 1/n: every weight is the cap. Bisecting would not end:
        return {k: 1.0 / n for k in keys}   # n copies of 1/n can sum to 0.9999999999999999 < 1
    lo, hi = 0.0, 1.0
    while sum(clip(hi)) < 1.0:   # terminates: every merit > 0 and n * cap > 1
        hi *= 2.0
    for _ in range(100):          # sum(clip(λ)) is continuous and non-decreasing in λ
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if sum(clip(mid)) < 1.0 else (lo, mid)
    w = clip(hi)
    total = sum(w)
    return {k: v / total for k, v in zip(keys, w)}


class StrategyWeights:
    name = "adaptive_ewm"

    def __init__(self, strategies: list[str], floor: float = 0.05, cap: float = 0.6,
                 halflife_trades: float = 20.0, history_limit: int = 2000):
        if not 0.0 <= floor < cap <= 1.0:
            raise ValueError(f"need 0 <= floor < cap <= 1, got floor={floor}, cap={cap}")
        if halflife_trades <= 0:
            raise ValueError("halflife_trades must be positive")
        self.strategies = list(dict.fromkeys(strategies))
        self.floor, self.cap, self.halflife_trades = float(floor), float(cap), float(halflife_trades)
        self.alpha = 1.0 - 0.5 ** (1.0 / self.halflife_trades)
        self.history_limit = history_limit
        self.stats: dict[str, dict[str, float]] = {s: self._neutral() for s in self.strategies}
        self._weights = self._compute()
        self.history: list[tuple[str, dict[str, float]]] = []

    @staticmethod
    def _neutral() -> dict[str, float]:
        return {"win_rate": 0.5, "avg_r": 0.0, "trades": 0}

    def merit(self, strategy: str) -> float:
        s = self.stats[strategy]
        return math.exp(max(-20.0, min(20.0, s["avg_r"] + (s["win_rate"] - 0.5))))

    def _compute(self) -> dict[str, float]:
        return bounded_normalise({s: self.merit(s) for s in self.strategies}, self.floor, self.cap)

    # ------------------------------------------------------------------ the interface the engine uses
    def weight(self, strategy: str) -> float:
        return self._weights.get(strategy, 0.0)

    def as_dict(self) -> dict[str, float]:
        return dict(self._weights)

    def update(self, trade: ClosedTrade) -> None:
        """Fold one closed trade into its strategy's statistics (unknown strategies are ignored:
        the engine's enabled set defines what is weighted)."""
        if trade.strategy not in self.stats:
            _log.warning("weights: trade of unknown strategy %r ignored", trade.strategy)
            return
        r = float(trade.r_multiple)
        if not math.isfinite(r):
            r = 0.0
        try:
            win = float(trade.pnl_usd) > 0
        except (TypeError, ValueError):
            win = r > 0
        s, a = self.stats[trade.strategy], self.alpha
        s["win_rate"] = (1 - a) * s["win_rate"] + a * (1.0 if win else 0.0)
        s["avg_r"] = (1 - a) * s["avg_r"] + a * r
        s["trades"] += 1
        self._weights = self._compute()
        self.history.append((trade.exit_time, dict(self._weights)))
        del self.history[:-self.history_limit]

    def to_state(self) -> dict:
        return {"kind": self.name, "floor": self.floor, "cap": self.cap, "halflife_trades": self.halflife_trades,
                "stats": {k: dict(v) for k, v in self.stats.items()},
                "history": [{"time": t, "weights": w} for t, w in self.history]}

    def load_state(self, state: Mapping) -> None:
        """Restore statistics and history; strategies no longer enabled are dropped, new ones start
        neutral, and the configured bounds apply (a state from the interim equal weights is ignored)."""
        if not state or state.get("kind") != self.name:
            return
        for name, s in state.get("stats", {}).items():
            if name in self.stats:
                stats = {"win_rate": float(s["win_rate"]), "avg_r": float(s["avg_r"]), "trades": int(s["trades"])}
                if not (0.0 <= stats["win_rate"] <= 1.0 and math.isfinite(stats["avg_r"]) and stats["trades"] >= 0):
                    # a NaN avg_r used to read as the best merit (min(20, nan) is 20): the cap weight
                    _log.warning("saved weight statistics for %s are not valid (%s): it starts neutral", name, s)
                    continue
                self.stats[name] = stats
        self.history = [(h["time"], {k: float(v) for k, v in h["weights"].items()})
                        for h in state.get("history", [])][-self.history_limit:]
        self._weights = self._compute()
