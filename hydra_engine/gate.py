"""The entry gate's vocabulary: the one answer to "may we open a position?" (see ``hydra_engine/gate.py``).

Three states, ordered by severity: ALLOW (trade), RESTRICT (exits only: no new entries), BLOCK
(flatten). Every reason to refuse an entry is a :class:`GateRule` returning a :class:`GateVerdict`
with its state and reason, or None when it has nothing to say.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


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


@runtime_checkable
class GateRule(Protocol):
    """One reason to refuse entries. ``scope`` is ``"book"`` (asked once per cycle, for the whole book)
    or ``"symbol"`` (asked per symbol that has a proposal). ``check`` gets the gate context
    (``hydra_engine.gate.GateContext``) and, for a symbol rule, the symbol and the proposal's side."""

    name: str
    scope: str

    def check(self, ctx, symbol: str | None = None, side=None) -> GateVerdict | None: ...
