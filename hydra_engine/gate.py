"""The entry gate's vocabulary: the one answer to "may we open a position?" (see ``hydra_engine/gate.py``).

Three states, ordered by severity: ALLOW (trade), RESTRICT (exits only: no new entries), BLOCK
(flatten). Every reason to refuse an entry is a :class:`GateRule` returning a :class:`GateVerdict`
with its state and reason, or None when it has nothing to say.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Mapping, Protocol, runtime_checkable


class GateState(enum.IntEnum):
    ALLOW = 0
    RESTRICT = 1
    BLOCK = 2


@dataclass(frozen=True, slots=True)
class GateVerdict:
    state: GateState
    rule: str          # the rule's name, as the journal, `explain` and the veto counts show it
    reason: str        # what a person reads

    @property
    def allows_entries(self) -> bool:
        return self.state is GateState.ALLOW


ALLOWED = GateVerdict(GateState.ALLOW, "", "")


@dataclass(frozen=True, slots=True)
class GateContext:
    """What a gate rule may read, once per cycle: the time, the market snapshot (bars, point series,
    events, staleness), the regime reading, the cycle number, whether the symbol's venue is open
    (``market_open(symbol)``) and the book's positions (symbol -> signed quantity)."""

    now: datetime
    market: object                 # hydra_engine.ports.MarketSnapshot
    regime: object                 # hydra_engine.domain.RegimeReading
    cycle: int = 0
    positions: Mapping[str, float] = field(default_factory=dict)
    market_open: object = None     # callable(symbol) -> bool, or None when unknown
    extended_hours: bool = False   # the proposal asked is an extended-hours limit entry (04:00-20:00 New York)


@runtime_checkable
class GateRule(Protocol):
    """One reason to refuse entries. ``scope`` is ``"book"`` (asked once per cycle, for the whole book)
    or ``"symbol"`` (asked per symbol that has a proposal). ``check`` gets the gate context
    (``hydra_engine.gate.GateContext``) and, for a symbol rule, the symbol and the proposal's side."""

    name: str
    scope: str

    def check(self, ctx, symbol: str | None = None, side=None) -> GateVerdict | None: ...


@dataclass(frozen=True, slots=True)
class GateDecision:
    """A verdict and the layer of the rule that gave it (for the decision record's ``layer``)."""

    verdict: GateVerdict
    layer: str = "engine"


_ALLOWED_BOOK = GateDecision(ALLOWED)


def _failed(rule, exc: Exception) -> GateVerdict:
    return GateVerdict(GateState.RESTRICT, rule.name, f"gate rule {rule.name} failed: {type(exc).__name__}: {exc}")


class EntryGate:
    """The one answer to "may we open a position?": an ordered list of rules, asked in order; the first
    that refuses gives the verdict (so the list's order is the priority of the reasons a person reads).

    Book rules are asked once per cycle for the whole book; symbol rules once per symbol that has a
    proposal. A rule that raises refuses (RESTRICT) with the error as its reason: a broken rule must
    never let an entry through. ``flatten`` asks the symbol rules marked ``can_block`` about every held
    symbol, so a rule that BLOCKs a symbol (perp cascade risk, an LLM "exit") also closes what is held."""

    def __init__(self, book_rules: list, symbol_rules: list):
        self.book_rules = list(book_rules)
        self.symbol_rules = list(symbol_rules)
        self._blockers = [r for r in self.symbol_rules if getattr(r, "can_block", False)]

    def add(self, rule) -> None:
        (self.book_rules if rule.scope == "book" else self.symbol_rules).append(rule)
        if rule.scope != "book" and getattr(rule, "can_block", False):
            self._blockers.append(rule)

    @staticmethod
    def _ask(rule, ctx: GateContext, symbol: str | None, side) -> GateVerdict | None:
        try:
            return rule.check(ctx, symbol, side)
        except Exception as exc:   # a rule that cannot answer refuses: never trade on a broken check
            return _failed(rule, exc)

    def for_book(self, ctx: GateContext) -> GateDecision:
        for rule in self.book_rules:   # asked every cycle: _ask's try inlined (one call per rule, not two)
            try:
                verdict = rule.check(ctx, None, None)
            except Exception as exc:   # noqa: BLE001 -- as in _ask: a broken check refuses
                verdict = _failed(rule, exc)
            if verdict is not None and verdict.state is not GateState.ALLOW:
                return GateDecision(verdict, getattr(rule, "layer", "engine"))
        return _ALLOWED_BOOK

    def for_symbol(self, ctx: GateContext, symbol: str, side) -> GateDecision:
        for rule in self.symbol_rules:
            verdict = self._ask(rule, ctx, symbol, side)
            if verdict is not None and verdict.state is not GateState.ALLOW:
                return GateDecision(verdict, getattr(rule, "layer", "engine"))
        return GateDecision(ALLOWED)

    def flatten(self, ctx: GateContext, held: list[str]) -> dict[str, GateVerdict]:
        """Held symbols a blocking rule says to close now, with the verdict that says so."""
        out: dict[str, GateVerdict] = {}
        if not self._blockers:
            return out
        for symbol in held:
            for rule in self._blockers:
                verdict = self._ask(rule, ctx, symbol, None)
                if verdict is not None and verdict.state is GateState.BLOCK:
                    out[symbol] = verdict
                    break
        return out
