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


@runtime_checkable
class GateRule(Protocol):
    """One reason to refuse entries. ``scope`` is ``"book"`` (asked once per cycle, for the whole book)
    or ``"symbol"`` (asked per symbol that has a proposal). ``check`` gets the gate context
    (``hydra_engine.gate.GateContext``) and, for a symbol rule, the symbol and the proposal's side."""

    name: str
    scope: str

    def check(self, ctx, symbol: str | None = None, side=None) -> GateVerdict | None: ...
