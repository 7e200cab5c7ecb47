"""Cross-asset regime signal graph, the TLT trade (strategy bible, strategy 5; the graph and its signal
modifier are ``signals/cross_asset.py``).

In every regime: when risk-off is confirmed at the newest session close -- credit weakening (HYG), equities
falling (SPY) and volatility rising (VIX) over the last ``lookback`` sessions, each against its own
volatility (:func:`signals.cross_asset.risk_off`, the stated rule) -- buy TLT (the flight to duration).
Stop ``stop_pct`` under the entry, target ``reward_risk`` x the risk, time exit after ``max_holding_days``.
Every cycle it emits a ``risk_state`` signal on TLT: the mean of the three z-scores (signed so that
risk-off is positive), low confidence unless risk-off is confirmed, so the trace shows how close the rule is.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Mapping

from pydantic import Field

from hydra_engine.domain import Regime, Side, Signal, TradeProposal
from hydra_engine.ports import MarketSnapshot
from hydra_engine.strategy import (CombinedSignal, DataNeed, ExitRequest, Strategy, StrategyContext,
                                   StrategyParams)
from signals.cross_asset import aligned_closes, risk_off

TRADED = "TLT"
WATCHED = ("SPY", "HYG", "VIX")


class CrossAssetParams(StrategyParams):
    lookback: int = Field(3, ge=1, le=10, description="sessions over which the risk-off moves are measured")
    vol_lookback: int = Field(60, ge=10, le=250)
    hyg_z: float = Field(-1.0, lt=0, description="HYG's move (sd) at or below which credit weakens")
    spy_z: float = Field(-1.0, lt=0, description="SPY's move (sd) at or below which equities fall")
    vix_z: float = Field(1.0, gt=0, description="VIX's move (sd) at or above which volatility rises")
    stop_pct: float = Field(2.0, gt=0, lt=20)
    reward_risk: float = Field(2.0, gt=0)
    max_holding_days: float = Field(10.0, gt=0)
    min_notional_usd: float = Field(200.0, ge=0)
    max_notional_usd: float = Field(2000.0, gt=0)


class CrossAssetTLT(Strategy):
    name = "cross_asset"
    interface_version = 1
    regimes = frozenset(Regime)          # every regime
    assets = (TRADED,)
    data_needs = tuple(DataNeed("bars", s) for s in (TRADED, *WATCHED))
    Params = CrossAssetParams
    # the plugin contract (tests/test_plugin_contract.py) over the April 2024 risk-off (confirmed at the
    # 2024-04-12 close: HYG, SPY down, VIX up over three sessions), the TLT buy before the cut
    contract_span = ("2024-04-01", "2024-04-26", "2024-04-16T00:00:00Z")

    def __init__(self, params: Mapping | None = None) -> None:
        super().__init__(params)
        self._cache: tuple[tuple, object] | None = None   # (newest bar times, reading): once per session

    def reading(self, market: MarketSnapshot):
        p = self.params
        key = tuple(market.newest_bar_ts(s) for s in WATCHED)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        closes = aligned_closes(market, WATCHED, p.vol_lookback + p.lookback + 1)
        r = None if closes is None else risk_off(closes, lookback=p.lookback, vol_lookback=p.vol_lookback,
                                                  hyg_z=p.hyg_z, spy_z=p.spy_z, vix_z=p.vix_z)
        self._cache = (key, r)
        return r

    def generate_signals(self, ctx: StrategyContext) -> list[Signal]:
        r = self.reading(ctx.market)
        if r is None or len(r.z) < 3:
            return []
        bars = ctx.market.bars.get("SPY")
        seen = min(ctx.now, datetime.fromtimestamp(int(bars.ts[-1]) + bars.interval_s, ctx.now.tzinfo))
        stress = (-r.z["HYG"] - r.z["SPY"] + r.z["VIX"]) / 3
        return [Signal(symbol=TRADED, score=max(-1.0, min(1.0, stress / 3)),
                       confidence=0.7 if r.on else 0.1, source="risk_state", created_at=seen,
                       half_life=timedelta(days=2), thesis=r.reason)]

    def propose(self, ctx: StrategyContext, combined: Mapping[str, CombinedSignal]) -> list[TradeProposal | ExitRequest]:
        p = self.params
        r = self.reading(ctx.market)
        if ctx.held.get(TRADED) or r is None or not r.on:
            return []
        view = combined.get(TRADED)
        price = ctx.market.price(TRADED)
        if view is None or view.score <= 0 or not (math.isfinite(price) and price > 0):
            return []
        stop = price * (1 - p.stop_pct / 100)
        return [TradeProposal(strategy=self.name, symbol=TRADED, side=Side.BUY, entry_price=price, stop_price=stop,
                              target_price=price + p.reward_risk * (price - stop), confidence=view.confidence,
                              expected_holding=timedelta(days=p.max_holding_days),
                              thesis="; ".join(c.get("thesis", c["source"]) for c in view.contributors),
                              max_notional_usd=p.max_notional_usd, min_notional_usd=p.min_notional_usd)]
