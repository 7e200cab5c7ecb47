"""The risk layer's rules as lists: entry vetoes, size modifiers and kill switches, one small class each.

``RiskManager.evaluate`` asks every entry rule in order (the first veto wins and is what the decision
names), multiplies the size by every size modifier (each feeds one multiplier of the sizing maths in
:mod:`hydra_engine.sizing`, which stays pure), and ``on_equity`` / ``on_market`` ask the kill switches.
A new rule -- perp leverage, a funding spike, cascade risk -- is a new class added to a list by the
composition root, never a new ``if`` in the manager. The hard limits stay where they are
(``risk.HARD_LIMITS``): no rule here can loosen them.
"""
from __future__ import annotations

from decimal import Decimal
from typing import Protocol

import numpy as np

from .domain import Regime, Side
from .ports import to_decimal
from .sizing import aligned_returns, correlation, correlation_penalty, vol_multiplier


class EntryRule(Protocol):
    """Veto an entry: return (rule, reason) or None."""

    name: str

    def check(self, rm, proposal, asset, portfolio, market) -> tuple[str, str] | None: ...


class SizeModifier(Protocol):
    """Scale an entry's size: return (multiplier in (0, 1], details). ``field`` names the sizing input it
    feeds (``vol_mult``, ``corr_mult``): the smaller multiplier is the one a bound size is blamed on."""

    name: str
    field: str

    def multiplier(self, rm, proposal, portfolio, market) -> tuple[float, dict]: ...


class KillSwitch(Protocol):
    """Fire on the account (``on = "equity"``) or on the market (``on = "market"``): return the kill
    reason (and the manager records the rule) or None."""

    name: str
    on: str


# ------------------------------------------------------------------ entry vetoes
class EntriesBlocked:
    name = "entries_blocked"

    def check(self, rm, proposal, asset, portfolio, market):
        return rm.blocked(portfolio.now)


class ExposureKnown:
    name = "exposure_unknown"

    def check(self, rm, proposal, asset, portfolio, market):
        if portfolio.unpriced:
            return self.name, (f"no price for {', '.join(portfolio.unpriced)} (held or pending): the book's "
                               "exposure cannot be measured")
        return None


class TradesPerDay:
    name = "max_trades_per_day"

    def check(self, rm, proposal, asset, portfolio, market):
        pending, limit = portfolio.pending_entry_count, rm.cfg.max_trades_per_day
        if rm.state.trades_today + pending >= limit:
            return self.name, f"{rm.state.trades_today} filled + {pending} pending entries today >= {limit}"
        return None


class Tradable:
    name = "not_tradable"

    def check(self, rm, proposal, asset, portfolio, market):
        return None if asset.tradable else (self.name, f"{asset.symbol} is not tradable at the venue")


class Shortable:
    name = "not_shortable"

    def check(self, rm, proposal, asset, portfolio, market):
        if proposal.side is Side.SELL and not asset.shortable:
            return self.name, f"{asset.symbol} cannot be sold short"
        return None


class FreshData:
    """Also the entry gate's first symbol rule; kept here so that the risk layer alone, asked directly,
    never sizes on stale data."""

    name = "stale_data"

    def check(self, rm, proposal, asset, portfolio, market):
        if market is not None and proposal.symbol in market.stale:
            return self.name, market.stale[proposal.symbol]
        return None


class HasEquity:
    name = "no_equity"

    def check(self, rm, proposal, asset, portfolio, market):
        equity = portfolio.equity_usd
        return (self.name, f"equity ${equity} <= 0") if equity <= 0 else None


ENTRY_RULES: tuple[EntryRule, ...] = (EntriesBlocked(), ExposureKnown(), TradesPerDay(), Tradable(), Shortable(),
                                      FreshData(), HasEquity())


# ------------------------------------------------------------------ size modifiers
class VolatilityScaling:
    """Bible: size down when the symbol's realised volatility is high against its own recent history."""

    name, field = "vol_scale", "vol_mult"

    def multiplier(self, rm, proposal, portfolio, market):
        bars = market.bars.get(proposal.symbol) if market is not None else None
        if bars is None:
            return 1.0, {"vol_note": "no bars: no vol scaling"}
        c = rm.cfg
        return vol_multiplier(bars.close, c.vol_lookback_bars, c.vol_mult_min, c.vol_mult_max)


class CorrelationPenalty:
    """Layer spec: size down an entry correlated with what is held or about to be held."""

    name, field = "correlation", "corr_mult"

    def multiplier(self, rm, proposal, portfolio, market):
        symbol = proposal.symbol
        mine = market.bars.get(symbol) if market is not None else None
        if mine is None:
            return 1.0, {}
        corrs: dict[str, float] = {}
        # held positions and entries approved or working but not yet filled: both will be held together
        for other in {**portfolio.positions, **portfolio.pending_entries_usd}:
            theirs = market.bars.get(other)
            if other == symbol or theirs is None:
                continue
            ra, rb = aligned_returns(mine.ts + mine.interval_s, mine.close, theirs.ts + theirs.interval_s,
                                     theirs.close, rm.cfg.corr_lookback_bars)
            rho = correlation(ra, rb, rm.cfg.corr_min_overlap)
            if rho is not None:
                corrs[other] = round(rho, 4)
        if not corrs:
            return 1.0, {}
        avg = float(np.mean([abs(v) for v in corrs.values()]))
        mult = correlation_penalty(avg)
        return mult, {"corr": corrs, "corr_avg_abs": round(avg, 4), "corr_mult": mult}


SIZE_MODIFIERS: tuple[SizeModifier, ...] = (VolatilityScaling(), CorrelationPenalty())


# ------------------------------------------------------------------ kill switches
class DailyLoss:
    name, on = "daily_loss", "equity"

    def fire(self, rm, equity: Decimal) -> str | None:
        s = rm.state
        if s.day_start_equity <= 0:
            return None
        loss_pct = (s.day_start_equity - equity) / s.day_start_equity * 100
        if loss_pct >= to_decimal(rm.cfg.max_daily_loss_pct):
            return (f"daily loss {loss_pct:.2f}% >= {rm.cfg.max_daily_loss_pct}% "
                    f"(${s.day_start_equity:.2f} -> ${equity:.2f})")
        return None


class Drawdown:
    name, on = "drawdown", "equity"

    def fire(self, rm, equity: Decimal) -> str | None:
        s = rm.state
        if s.peak_equity <= 0:
            return None
        dd_pct = (s.peak_equity - equity) / s.peak_equity * 100
        if dd_pct >= to_decimal(rm.cfg.max_drawdown_pct):
            return f"drawdown {dd_pct:.2f}% >= {rm.cfg.max_drawdown_pct}% from peak ${s.peak_equity:.2f} (now ${equity:.2f})"
        return None


class ExtremeVolRegimeBreak:
    """Layer spec: a regime break while realised volatility is extreme."""

    name, on = "extreme_vol_regime_break", "market"

    def fire(self, rm, regime, pct, regime_break: bool, previous: str) -> str | None:
        if not regime_break or pct is None or float(pct) < rm.cfg.extreme_vol_percentile:
            return None
        now_name = regime.regime.value if regime is not None else "?"
        return (f"regime break {previous or '?'} -> {now_name} with realised vol at the "
                f"{float(pct):.0%} percentile >= {rm.cfg.extreme_vol_percentile:.0%}")


KILL_SWITCHES: tuple[KillSwitch, ...] = (DailyLoss(), Drawdown(), ExtremeVolRegimeBreak())

__all__ = ["ENTRY_RULES", "SIZE_MODIFIERS", "KILL_SWITCHES", "EntryRule", "SizeModifier", "KillSwitch", "Regime"]
