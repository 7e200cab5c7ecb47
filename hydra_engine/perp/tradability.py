"""The perp tradability layer (layer 2) as entry-gate rules, one class each, symbol scope, asked only
for perp symbols (a symbol not in ``symbols`` gets no verdict). The order is the priority of the
reasons a person reads in the journal.

| rule | condition | verdict |
|---|---|---|
| ``perp_data_health`` | stale or old bars, funding or open interest missing, < 20 candles | BLOCK entries (does not flatten: a lagging feed is not a reason to close on missing data) |
| ``perp_volatility`` | realised-vol percentile > 95 % (extreme) | BLOCK (flattens the symbol) |
|                     | > 80 % (high) | RESTRICT |
| ``perp_cascade`` | cascade probability > 70 % | BLOCK (flattens the symbol) |
| ``perp_funding`` | abs(funding) > 0.1 % per 8 h | RESTRICT |
"""
from __future__ import annotations

from ..gate import GateContext, GateState, GateVerdict
from .stats import perp_state


class _PerpRule:
    scope, layer = "symbol", "perp_tradability"
    can_block = False

    def __init__(self, symbols):
        self.symbols = frozenset(symbols)

    def check(self, ctx: GateContext, symbol: str | None = None, side=None) -> GateVerdict | None:
        if symbol not in self.symbols:
            return None
        return self._check(perp_state(ctx.market, symbol))


class PerpDataHealthRule(_PerpRule):
    name = "perp_data_health"

    def _check(self, st) -> GateVerdict | None:
        if st.health_problems:
            return GateVerdict(GateState.BLOCK, self.name, f"{st.symbol}: data health fails: "
                                                           + "; ".join(st.health_problems))
        return None


class PerpVolatilityRule(_PerpRule):
    name = "perp_volatility"
    can_block = True

    def _check(self, st) -> GateVerdict | None:
        regime = st.vol_regime
        if regime == "extreme":
            return GateVerdict(GateState.BLOCK, self.name, f"{st.symbol}: realised vol {st.vol_annual:.0%} a year at "
                                                           f"the {st.vol_percentile:.0%} percentile (> 95 %): extreme")
        if regime == "high":
            return GateVerdict(GateState.RESTRICT, self.name, f"{st.symbol}: realised vol at the "
                                                              f"{st.vol_percentile:.0%} percentile (> 80 %): high")
        return None


class PerpCascadeRule(_PerpRule):
    name = "perp_cascade"
    can_block = True

    def _check(self, st) -> GateVerdict | None:
        p = st.cascade_probability
        if p is not None and p > 0.7:
            return GateVerdict(GateState.BLOCK, self.name, f"{st.symbol}: cascade probability {p:.2f} > 0.70 "
                                                           f"(liquidation velocity {st.liquidation_velocity:.1%} "
                                                           f"of open interest, {st.liq_source})")
        return None


class PerpFundingRule(_PerpRule):
    name = "perp_funding"

    def _check(self, st) -> GateVerdict | None:
        if st.funding is not None and abs(st.funding) > 0.001:
            return GateVerdict(GateState.RESTRICT, self.name, f"{st.symbol}: funding {st.funding:+.4%} per 8 h "
                                                              "beyond 0.1 %")
        return None


def perp_gate_rules(symbols) -> list:
    return [PerpDataHealthRule(symbols), PerpVolatilityRule(symbols), PerpCascadeRule(symbols),
            PerpFundingRule(symbols)]
