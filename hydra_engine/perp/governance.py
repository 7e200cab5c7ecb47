"""Leverage governance and perp risk (layer 4 of the perp module): the layer specification's leverage
calculation, quarter-Kelly and pair multipliers, stops and targets from the expected adverse excursion,
the liquidation-distance buffer, and the perp kill switches. Each is a member of the risk lists
(``RiskManager(proposal_adjusters=, entry_rules=, size_modifiers=, kill_switches=)``) or of the entry
gate, added by the composition root (:func:`perp_risk_lists`); the book's hard limits
(``risk.HARD_LIMITS``: 3 % a position, 25 % total exposure, ...) still apply to the perp notional,
across both venues (the router sums the accounts).

Leverage sets the margin posted and the liquidation distance; it never multiplies the notional the
risk layer approved (the spec's ``size = base × leverage`` would step over the hard limits).
"""
from __future__ import annotations

import math
from dataclasses import replace
from decimal import Decimal

from ..domain import Side, TradeProposal
from ..gate import GateContext, GateState, GateVerdict
from ..sizing import kelly_fd, dec
from .margin import LeverageBrackets, liquidation_price
from .stats import PerpRegime, perp_regime, perp_state

BASE_LEVERAGE = 5.0
QUARTER_KELLY = 0.25
#: layer spec "Pair Adjustments": size /= VOLATILITY_MULT, size *= SIZE_MULT
VOLATILITY_MULT = {"BTCUSDT": 1.0, "ETHUSDT": 1.15, "SOLUSDT": 1.50, "BNBUSDT": 1.10}
SIZE_MULT = {"BTCUSDT": 1.0, "ETHUSDT": 1.0, "SOLUSDT": 0.8, "BNBUSDT": 0.8}
FUNDING_SPIKE = 0.005


def governed_leverage(confidence: float, vol_regime: str | None, funding: float | None,
                      regime: PerpRegime | None, drawdown: float, *, base: float = BASE_LEVERAGE,
                      max_leverage: float = 10.0) -> float:
    """Layer spec ``calculate_leverage``: base 5×; extreme vol ×0.3, high ×0.5; abs(funding) > 0.1 % ×0.5,
    > 0.05 % ×0.7; CASCADE_RISK ×0.3; × confidence; drawdown above 5 % × max(0.2, 1 − dd/0.15);
    clamped to [1, max_leverage]. ``drawdown`` is a fraction of the peak."""
    lev = base
    if vol_regime == "extreme":
        lev *= 0.3
    elif vol_regime == "high":
        lev *= 0.5
    if funding is not None and abs(funding) > 0.001:
        lev *= 0.5
    elif funding is not None and abs(funding) > 0.0005:
        lev *= 0.7
    if regime is PerpRegime.CASCADE_RISK:
        lev *= 0.3
    lev *= max(0.0, min(1.0, confidence))
    if drawdown > 0.05:
        lev *= max(0.2, 1 - drawdown / 0.15)
    return max(1.0, min(lev, max_leverage))


def exits_from_eae(price: float, side: Side, eae: float, vol_regime: str | None,
                   reward_risk: float = 2.0) -> tuple[float, float, float]:
    """Layer spec ``calculate_exits``: the expected adverse excursion, ×1.3 in high and ×1.5 in extreme
    volatility, clamped to 1 %–10 %; stop at that distance, target at twice it. Returns (stop, target, eae)."""
    if vol_regime == "high":
        eae *= 1.3
    elif vol_regime == "extreme":
        eae *= 1.5
    eae = max(0.01, min(eae, 0.10))
    if side is Side.BUY:
        return price * (1 - eae), price * (1 + eae * reward_risk), eae
    return price * (1 + eae), price * (1 - eae * reward_risk), eae


def _drawdown(rm) -> float:
    s = rm.state
    if s.peak_equity <= 0 or s.last_equity <= 0:
        return 0.0
    return max(0.0, float((s.peak_equity - s.last_equity) / s.peak_equity))


class LeverageGovernance:
    """Proposal adjuster: a perp proposal's leverage becomes the governed leverage (a plugin's leverage
    above 1 is a ceiling), capped by ``perps.max_leverage`` and the symbol's first bracket."""

    name = "perp_leverage"

    def __init__(self, symbols, brackets: dict[str, LeverageBrackets], *, base: float, max_leverage: int):
        self.symbols = frozenset(symbols)
        self.brackets = brackets
        self.base, self.max_leverage = base, max_leverage

    def adjust(self, rm, proposal: TradeProposal, asset, portfolio, market):
        if proposal.symbol not in self.symbols or market is None:
            return proposal, {}
        st = perp_state(market, proposal.symbol)
        regime = perp_regime(market, proposal.symbol)[0]
        cap = min(self.max_leverage, self.brackets[proposal.symbol].max_leverage)
        if proposal.leverage > 1:
            cap = min(cap, proposal.leverage)
        lev = float(math.floor(governed_leverage(proposal.confidence, st.vol_regime, st.funding, regime,
                                                 _drawdown(rm), base=self.base, max_leverage=cap)))
        return replace(proposal, leverage=lev), {"leverage": lev, "perp_regime": regime.value if regime else None,
                                                 "vol_regime": st.vol_regime}


class LiquidationBuffer:
    """Entry rule: the stop must sit well inside the liquidation price — it may use at most ``share`` of
    the distance from entry to the liquidation price at the governed leverage (Binance's formula with
    the maintenance bracket, isolated margin = notional / leverage)."""

    name = "liquidation_buffer"

    def __init__(self, symbols, brackets: dict[str, LeverageBrackets], share: float):
        self.symbols = frozenset(symbols)
        self.brackets = brackets
        self.share = share

    def check(self, rm, proposal: TradeProposal, asset, portfolio, market):
        if proposal.symbol not in self.symbols:
            return None
        entry = dec(proposal.entry_price)
        # a nominal position at the largest notional the book allows (the bracket's tier is what matters)
        notional = max(portfolio.equity_usd * dec(rm.cfg.max_position_pct) / 100, Decimal(1))
        qty = notional / entry * proposal.side.sign
        lev = Decimal(int(proposal.leverage))
        liq = liquidation_price(qty, entry, notional / lev, self.brackets[proposal.symbol])
        if liq is None:
            return None
        room = abs(entry - liq)
        stop_dist = abs(entry - dec(proposal.stop_price))
        if stop_dist > room * dec(self.share):
            return self.name, (f"stop {proposal.stop_price:.2f} is {stop_dist / entry:.2%} away; at "
                               f"{proposal.leverage:g}x the liquidation price {liq:.2f} is {room / entry:.2%} away "
                               f"(a stop may use at most {self.share:.0%} of it)")
        return None


class PerpSizing:
    """Size modifier (feeds ``vol_mult``): the pair's multipliers (``SIZE_MULT / VOLATILITY_MULT``) and
    quarter Kelly: the book sizes by min(half Kelly, 1 % risk); a perp by min(quarter Kelly, 1 % risk)."""

    name, field = "perp_sizing", "vol_mult"

    def __init__(self, symbols):
        self.symbols = frozenset(symbols)

    def multiplier(self, rm, proposal, portfolio, market):
        if proposal.symbol not in self.symbols:
            return 1.0, {}
        pair = SIZE_MULT.get(proposal.symbol, 1.0) / VOLATILITY_MULT.get(proposal.symbol, 1.0)
        f = kelly_fd(proposal.confidence, proposal.reward_risk)
        risk = dec(rm.cfg.risk_per_trade_pct) / 100 / dec(max(proposal.stop_distance_pct, 1e-9))
        book = min(f * dec(rm.cfg.kelly_fraction), risk)
        spec = min(f * dec(QUARTER_KELLY), risk)
        kelly = float(spec / book) if book > 0 else 1.0
        return pair * kelly, {"pair_mult": round(pair, 4), "quarter_kelly_mult": round(kelly, 4)}


class PerpFundingSpikeKill:
    """Kill switch (layer spec): a funding rate beyond 0.5 % per 8 h on any traded perp — a dislocated
    market; kills the whole book (flatten, entries blocked until ``resume``)."""

    name, on = "perp_funding_spike", "market"

    def __init__(self, symbols):
        self.symbols = tuple(symbols)

    def fire(self, rm, regime, pct, regime_break, previous) -> str | None:
        market = rm.last_market
        if market is None:
            return None
        for s in self.symbols:
            f = perp_state(market, s).funding
            if f is not None and abs(f) > FUNDING_SPIKE:
                return f"{s} funding {f:+.4%} per 8 h beyond {FUNDING_SPIKE:.1%}"
        return None


class PerpKillRule:
    """The perp kill switches that stop the perp sleeve, not the whole book: a cascade probability above
    70 % on any traded perp, or a perp regime break with extreme volatility, BLOCKs every perp symbol
    (flattens what the perp book holds, no perp entries) while it holds. Book-wide they would end a
    five-year backtest at the first of the ~150 cascade hours a year that the proxy finds in 2021–2022;
    the whole-book kills (daily loss, drawdown, funding spike) stay in the risk lists."""

    name, scope, layer = "perp_kill", "symbol", "perp_risk"
    can_block = True

    def __init__(self, symbols):
        self.symbols = tuple(symbols)
        self._last: dict[str, PerpRegime | None] = {}
        self._seen: tuple = (None, None)   # (now, verdict) once per cycle

    def check(self, ctx: GateContext, symbol: str | None = None, side=None) -> GateVerdict | None:
        if symbol not in self.symbols:
            return None
        if self._seen[0] != ctx.now:
            self._seen = (ctx.now, self._evaluate(ctx.market))
        return self._seen[1]

    def _evaluate(self, market) -> GateVerdict | None:
        why = None
        for s in self.symbols:
            st = perp_state(market, s)
            regime = perp_regime(market, s)[0]
            before = self._last.get(s)
            self._last[s] = regime
            p = st.cascade_probability
            if why is None and p is not None and p > 0.7:
                why = f"{s} cascade probability {p:.2f} > 0.70 ({st.liq_source})"
            if (why is None and before is not None and regime is not None and regime is not before
                    and st.vol_regime == "extreme"):
                why = f"{s} regime break {before.value} -> {regime.value} with extreme volatility"
        return GateVerdict(GateState.BLOCK, self.name, f"perp kill switch: {why}") if why else None
