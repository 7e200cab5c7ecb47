"""SMA crossover (benchmark plugin): the peer-benchmark strategy as a real HYDRA plugin.

fast = SMA(``fast``, close), slow = SMA(``slow``, close) on each of ``symbols``' closed bars:

* the fast average crossing above the slow one (``f_t > s_t`` and ``f_{t-1} <= s_{t-1}``) is a +1
  signal; while flat, the plugin proposes a long entry;
* crossing below (``f_t < s_t`` and ``f_{t-1} >= s_{t-1}``) is a -1 signal; while long, the plugin asks
  to close its position (``ExitRequest``). Long-only.

Averages are recomputed from the snapshot's closes every cycle (no hidden state); a difference within
``tie_rel`` of the slow average counts as a tie, so a float rounding in the last bits cannot invent a
crossover that exact arithmetic would not see.

Quiet bars (the engine's fast path, ``Strategy.wants_cycle``): with replay data the engine hands the
whole series to ``prepare``, which finds, vectorised, every bar after which a crossover is *possible*
(:func:`possible_crosses`: causal, and widened so that float summation order can only add wake-ups,
never drop one). On any other bar the plugin provably produces nothing and says so; on those bars it
still decides with the exact per-cycle rule above. Without ``prepare`` (paper) every cycle is full. The plugin sets no protective exit: its proposal's stop
and target are placed out of reach (``1e-6``× and ``1e6``× the price) and its holding time is unbounded
in practice, so the position manager never closes a position the crossover rule would keep — as in
``shared/bench-peers/common.py``. Sizing (all-in in the benchmark) is the risk layer's job.
It is not in ``strategies.enabled`` by default; ``bench/peer_compare.py`` enables it.
"""
from __future__ import annotations

import bisect
import math
from datetime import timedelta
from typing import Mapping

import numpy as np
from pydantic import Field, model_validator

from hydra_engine.domain import Regime, Side, Signal, TradeProposal
from hydra_engine.ports import BarSeries, MarketSnapshot
from hydra_engine.strategy import (CombinedSignal, DataNeed, ExitRequest, Strategy, StrategyContext,
                                   StrategyParams)

OUT_OF_REACH = 1e6
# relative widening of the vectorised crossover test: numpy and Python sum the same closes in another
# order, which moves an average by ~1e-14 of the price level; 1e-7 leaves seven orders of margin
WAKE_SLACK = 1e-7


def possible_crosses(close: np.ndarray, fast: int, slow: int, tie_rel: float) -> np.ndarray:
    """One bool per bar: False where ``SmaCrossover._cross`` is certainly 0 at the cycle that sees this
    bar as the newest (it compares the averages ending at this bar and at the bar before). Causal: bar
    k's value reads closes k-slow..k only. Non-finite averages count as possible."""
    c = np.asarray(close, dtype=float)
    out = np.zeros(len(c), dtype=bool)
    if len(c) < slow + 1:
        return out                      # _cross needs slow + 1 closes
    slow_avg = np.convolve(c, np.ones(slow), "valid") / slow                 # ends at bars slow-1 .. n-1
    fast_avg = np.convolve(c, np.ones(fast), "valid")[slow - fast:] / fast  # the same bars
    d, band = fast_avg - slow_avg, np.abs(slow_avg)
    tol, slack = tie_rel * band, WAKE_SLACK * band
    d_now, d_prev = d[1:], d[:-1]                                            # bars slow .. n-1
    tol_now, tol_prev = tol[1:], tol[:-1]
    slack_now = np.maximum(slack[1:], slack[:-1])
    up = (d_now > tol_now - slack_now) & (d_prev <= tol_prev + slack_now)
    down = (d_now < -tol_now + slack_now) & (d_prev >= -tol_prev - slack_now)
    unsure = ~(np.isfinite(d_now) & np.isfinite(d_prev))
    out[slow:] = up | down | unsure
    return out


class SmaCrossoverParams(StrategyParams):
    symbols: list[str] = Field(default_factory=lambda: ["BTC/USD"], min_length=1)
    fast: int = Field(20, ge=1)
    slow: int = Field(50, ge=2)
    tie_rel: float = Field(1e-9, ge=0, lt=1e-3, description="|fast - slow| <= tie_rel * slow is a tie")
    max_holding_days: float = Field(36500.0, gt=0)

    @model_validator(mode="after")
    def _fast_below_slow(self):
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be shorter than slow ({self.slow})")
        return self


class SmaCrossover(Strategy):
    name = "sma_crossover"
    interface_version = 1
    regimes = frozenset(r for r in Regime if r is not Regime.UNKNOWN)
    assets = ("BTC/USD",)
    data_needs = (DataNeed("bars", "BTC/USD"),)
    Params = SmaCrossoverParams

    def __init__(self, params: Mapping | None = None) -> None:
        super().__init__(params)
        self.assets = tuple(self.params.symbols)            # per instance: the configured symbols
        self.data_needs = tuple(DataNeed("bars", s) for s in self.assets)
        self._holding = timedelta(days=self.params.max_holding_days)
        self._wake_bars: dict[str, frozenset[int]] | None = None   # symbol -> open times (s) of possible-cross bars

    def prepare(self, history: Mapping[str, BarSeries]) -> None:
        p = self.params
        self._wake_bars = {s: frozenset(bars.ts[possible_crosses(bars.close, p.fast, p.slow, p.tie_rel)].tolist())
                           for s, bars in history.items()}
        self._wake_sorted = {s: sorted(w) for s, w in self._wake_bars.items()}   # for the replay promise

    def horizon_next_wake(self, market: MarketSnapshot):
        """Event-horizon replay (hydra_engine/horizon.py): when ``wants_cycle`` could be True again -- as
        {symbol: open time of its next possible-cross bar} (the driver waits for that bar's close), or
        ``market.now`` when the newest bar already is one; None without ``prepare`` (no promise)."""
        wake_sorted = getattr(self, "_wake_sorted", None)
        if self._wake_bars is None or wake_sorted is None:
            return None
        out = {}
        for symbol in self.assets:
            wake = wake_sorted.get(symbol)
            if wake is None:
                return None
            newest = market.newest_bar_ts(symbol)
            if newest is not None and newest in self._wake_bars[symbol]:
                return market.now
            k = bisect.bisect_right(wake, newest) if newest is not None else 0
            if k < len(wake):
                out[symbol] = wake[k]
        return out

    def _waking(self, market: MarketSnapshot):
        """The configured symbols on whose newest bar a crossover is possible (all of them without
        ``prepare``), lazily: the wake predicate stops at the first."""
        wake_bars = self._wake_bars
        for symbol in self.assets:
            wake = wake_bars.get(symbol) if wake_bars is not None else None
            if wake is None or market.newest_bar_ts(symbol) in wake:
                yield symbol

    def wants_cycle(self, market: MarketSnapshot) -> bool:
        """Whether ``_waking`` yields a symbol; asked every cycle, so written out as one loop over the
        snapshot's newest bar times (no generator, no method call per symbol)."""
        wake_bars = self._wake_bars
        if wake_bars is None:
            return True
        newest = market.newest_ts
        for symbol in self.assets:
            wake = wake_bars.get(symbol)
            if wake is None:
                return True
            ts = newest.get(symbol)
            if (ts if ts is not None else market.newest_bar_ts(symbol)) in wake:
                return True
        return False

    def _cross(self, close) -> int:
        """+1 when fast crossed above slow on the newest bar, -1 below, 0 otherwise."""
        fast, slow = self.params.fast, self.params.slow
        if len(close) < slow + 1:
            return 0
        w = close[-(slow + 1):].tolist()   # 51 floats: summed in Python, cheaper than four numpy reductions
        s_prev, s_now = sum(w[:-1]) / slow, sum(w[1:]) / slow
        fast_prev, fast_now = sum(w[-fast - 1:-1]) / fast, sum(w[-fast:]) / fast
        d_prev, d_now = fast_prev - s_prev, fast_now - s_now
        tol_prev, tol_now = self.params.tie_rel * abs(s_prev), self.params.tie_rel * abs(s_now)
        if d_now > tol_now and d_prev <= tol_prev:
            return 1
        if d_now < -tol_now and d_prev >= -tol_prev:
            return -1
        return 0

    def generate_signals(self, ctx: StrategyContext) -> list[Signal]:
        out: list[Signal] = []
        bars_by = ctx.market.bars
        for symbol in self._waking(ctx.market):   # elsewhere no crossover is possible (prepare): no averages
            bars = bars_by.get(symbol)
            if bars is None:
                continue
            cross = self._cross(bars.close)
            if cross:
                out.append(Signal(symbol=symbol, score=float(cross), confidence=1.0, source="sma_cross",
                                  created_at=ctx.now, half_life=timedelta(seconds=max(60, bars.interval_s)),
                                  thesis=f"SMA{self.params.fast} crossed {'above' if cross > 0 else 'below'} "
                                         f"SMA{self.params.slow}"))
        return out

    def propose(self, ctx: StrategyContext, combined: Mapping[str, CombinedSignal]) -> list[TradeProposal | ExitRequest]:
        out: list[TradeProposal | ExitRequest] = []
        for symbol, view in combined.items():
            # its own crossover decides, not the combined view: another plugin's signal on the symbol is no
            # crossover (and wants_cycle promised nothing would be proposed without one)
            cross = next((c["score"] for c in view.contributors if c["source"] == "sma_cross"), 0.0)
            held = ctx.held.get(symbol, 0.0)
            if cross < 0:
                if held > 0:
                    out.append(ExitRequest(self.name, symbol, "fast SMA crossed below slow SMA"))
                continue
            if cross <= 0 or held:
                continue
            price = ctx.market.price(symbol)
            if not (math.isfinite(price) and price > 0):
                continue
            out.append(TradeProposal(strategy=self.name, symbol=symbol, side=Side.BUY, entry_price=price,
                                     stop_price=price / OUT_OF_REACH, target_price=price * OUT_OF_REACH,
                                     confidence=max(0.0, min(1.0, view.confidence)), expected_holding=self._holding,
                                     thesis="fast SMA crossed above slow SMA"))
        return out
