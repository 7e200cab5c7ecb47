"""The entry gate's built-in rules: every reason HYDRA has today to refuse an entry, one small class each.

Book rules (asked once a cycle): observation cycles, an engine halt (a reconciliation mismatch, a torn
kill record), the risk layer's blocks (a kill switch BLOCKs: flatten; a loss cooldown or the day's trade
count RESTRICT). Symbol rules (asked per symbol with a proposal, in this order, which is the order the
reasons are reported in): stale or bad data, one position per symbol, regime UNKNOWN, market closed.
Later rules (perp volatility and cascade risk, the LLM verdict, model abstention) are added to the same
lists by the composition root; see docs/ARCHITECTURE.md.
"""
from __future__ import annotations

from typing import Callable

from .domain import Regime
from .gate import GateContext, GateState, GateVerdict


def _restrict(rule: str, reason: str) -> GateVerdict:
    return GateVerdict(GateState.RESTRICT, rule, reason)


class ObservationRule:
    """The first ``engine.observation_cycles`` cycles only watch (the bible's observation phase)."""

    name, scope, layer = "observe", "book", "engine"

    def __init__(self, observation_cycles: Callable[[], int]):
        self.cycles = observation_cycles    # read each cycle: the settings are the engine's, not a copy

    def check(self, ctx: GateContext, symbol=None, side=None) -> GateVerdict | None:
        return _restrict(self.name, "observation phase") if ctx.cycle <= self.cycles() else None


class HaltRule:
    """The engine halted entries (reconciliation found a book it cannot explain, an unreadable kill record)."""

    name, scope, layer = "halted", "book", "engine"

    def __init__(self, halted: Callable[[], str | None]):
        self.halted = halted

    def check(self, ctx: GateContext, symbol=None, side=None) -> GateVerdict | None:
        why = self.halted()
        return _restrict(self.name, why) if why else None


class RiskBlockRule:
    """The risk layer's kill switches, loss cooldown and daily trade count. A kill BLOCKs (the book is
    flattened until an operator resumes); the others RESTRICT (exits only)."""

    name, scope, layer = "risk_blocks", "book", "risk"

    def __init__(self, risk):
        self.risk = risk

    def check(self, ctx: GateContext, symbol=None, side=None) -> GateVerdict | None:
        blocked = self.risk.blocked(ctx.now)
        if blocked is None:
            return None
        rule, reason = blocked
        return GateVerdict(GateState.BLOCK if rule == "kill_switch" else GateState.RESTRICT, rule, reason)


class StaleDataRule:
    """No entries on a symbol whose data is stale, missing or bad this cycle."""

    name, scope, layer = "stale_data", "symbol", "data"

    def check(self, ctx: GateContext, symbol: str, side=None) -> GateVerdict | None:
        if ctx.market.tradable(symbol):
            return None
        return _restrict(self.name, f"no entries on {symbol}: {ctx.market.stale.get(symbol, 'no data')}")


class OnePositionRule:
    """One position per symbol: none while the book holds one, an entry works, or the broker holds one
    (an entry can fill between this cycle's fill poll and this check: the book's pending plans and, asked
    after the open orders so the race has no gap, the broker's own book close that window)."""

    name, scope, layer = "one_position_per_symbol", "symbol", "engine"

    def __init__(self, book, broker):
        self.book, self.broker = book, broker

    def check(self, ctx: GateContext, symbol: str, side=None) -> GateVerdict | None:
        book = self.book
        if (symbol in book.positions or any(o.symbol == symbol for o in self.broker.open_orders())
                or any(o.symbol == symbol for o in book.unresolved.values())
                or book.has_pending_entry(symbol) or book.broker_holds(symbol)):
            return _restrict(self.name, f"{symbol} already has a position or a working order")
        return None


class RegimeUnknownRule:
    """No entries while the regime is UNKNOWN (no model, a failed detector, stale regime inputs)."""

    name, scope, layer = "regime_unknown", "symbol", "regime"

    def check(self, ctx: GateContext, symbol: str, side=None) -> GateVerdict | None:
        if ctx.regime.regime is not Regime.UNKNOWN:
            return None
        return _restrict(self.name, f"regime unknown ({ctx.regime.details.get('why', '')}): entries restricted")


def in_extended_session(now) -> bool:
    """04:00-20:00 New York on a weekday: when Alpaca takes extended-hours equity orders (holidays are
    refused by the venue itself)."""
    from zoneinfo import ZoneInfo
    local = now.astimezone(ZoneInfo("America/New_York"))
    return local.weekday() < 5 and 4 <= local.hour < 20


class MarketClosedRule:
    """No entries while the symbol's venue is closed."""

    name, scope, layer = "market_closed", "symbol", "execution"

    def __init__(self, broker):
        self.broker = broker

    def check(self, ctx: GateContext, symbol: str, side=None) -> GateVerdict | None:
        if getattr(ctx, "extended_hours", False) and in_extended_session(ctx.now):
            return None   # an extended-hours limit entry (issue #18) may go in before the 09:30 open
        return None if self.broker.is_market_open(symbol, ctx.now) else _restrict(self.name,
                                                                                   f"market closed for {symbol}")
