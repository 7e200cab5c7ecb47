"""The strategy plugin interface.

A plugin is small: it declares its name, the regimes it trades in, its assets and its data needs,
turns market data into :class:`Signal`s and combined signals into :class:`TradeProposal`s (or
:class:`ExitRequest`s), and touches nothing else — no broker, no store, no clock of its own.
Plugins are found by name in the built-in ``strategies`` package and in the ``hydra.strategies``
entry-point group, so a third party can ship one as its own package.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Mapping

from pydantic import BaseModel, ConfigDict

from .domain import Regime, RegimeReading, Signal, TradeProposal
from .ports import MarketSnapshot


@dataclass(frozen=True, slots=True)
class DataNeed:
    """One input a plugin reads: ``kind`` is ``bars`` or a point-series kind such as ``funding_rate``
    or ``open_interest``; ``symbol`` is the engine symbol (``BTC/USD``)."""

    kind: str
    symbol: str


@dataclass(frozen=True, slots=True)
class CombinedSignal:
    """The aggregator's per-symbol view: weighted score in [-1, 1], confidence in [0, 1]."""

    symbol: str
    score: float
    confidence: float
    contributors: tuple[dict, ...] = ()


@dataclass(frozen=True, slots=True)
class ExitRequest:
    """A plugin asks the position manager to close its own position on ``symbol``."""

    strategy: str
    symbol: str
    reason: str


@dataclass(frozen=True, slots=True)
class StrategyContext:
    """Read-only view handed to plugins each cycle."""

    now: datetime
    market: MarketSnapshot
    regime: RegimeReading
    held: Mapping[str, float] = field(default_factory=dict)   # symbol -> signed qty held by this plugin


class StrategyParams(BaseModel):
    """Base of every plugin's parameter model: unknown keys are errors, not silent typos."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Strategy(ABC):
    name: ClassVar[str]
    regimes: ClassVar[frozenset[Regime]]
    assets: ClassVar[tuple[str, ...]]
    data_needs: ClassVar[tuple[DataNeed, ...]]
    Params: ClassVar[type[StrategyParams]] = StrategyParams

    def __init__(self, params: Mapping | None = None) -> None:
        self.params = self.Params(**dict(params or {}))

    def trades_in(self, regime: Regime) -> bool:
        return regime in self.regimes

    @abstractmethod
    def generate_signals(self, ctx: StrategyContext) -> list[Signal]:
        """Turn this cycle's data into signals (may be empty)."""

    @abstractmethod
    def propose(self, ctx: StrategyContext,
                combined: Mapping[str, CombinedSignal]) -> list[TradeProposal | ExitRequest]:
        """Turn the combined view of this plugin's symbols into entries or exit requests."""
