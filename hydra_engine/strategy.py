"""The strategy plugin interface.

A plugin is small: it declares its name, the regimes it trades in, its assets and its data needs,
turns market data into :class:`Signal`s and combined signals into :class:`TradeProposal`s (or
:class:`ExitRequest`s), and touches nothing else — no broker, no store, no clock of its own.
Plugins are found by name in the built-in ``strategies`` package and in the ``hydra.strategies``
entry-point group, so a third party can ship one as its own package; each declares the
``interface_version`` it was written for (:attr:`Strategy.INTERFACE_VERSION`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Mapping

from pydantic import BaseModel, ConfigDict

from .domain import Regime, RegimeReading, Signal, TradeProposal
from .ports import BarSeries, MarketSnapshot


@dataclass(frozen=True, slots=True)
class DataNeed:
    """One input a plugin reads: ``kind`` is ``bars`` or a point-series kind such as ``funding_rate``
    or ``open_interest``; ``symbol`` is the engine symbol (``BTC/USD``). For dated events ``kind`` is
    ``events`` and ``symbol`` the event kind (``DataNeed("events", "macro_release")``): the composition
    root builds the feeds these name (``data/event_feeds.py``, ``build_event_feeds``)."""

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
    # The version of this interface; bump it when a change could break a plugin written for the old one.
    # Each plugin declares ``interface_version`` (the version it was written for); this base deliberately
    # does not, so a plugin that forgets it is refused at start-up (hydra_engine.plugins.check_plugin).
    INTERFACE_VERSION: ClassVar[int] = 1
    interface_version: ClassVar[int]
    name: ClassVar[str]
    regimes: ClassVar[frozenset[Regime]]
    assets: ClassVar[tuple[str, ...]]
    data_needs: ClassVar[tuple[DataNeed, ...]]
    Params: ClassVar[type[StrategyParams]] = StrategyParams

    def __init__(self, params: Mapping | None = None) -> None:
        self.params = self.Params(**dict(params or {}))

    def trades_in(self, regime: Regime) -> bool:
        return regime in self.regimes

    def prepare(self, history: Mapping[str, BarSeries]) -> None:
        """Optional vectorised pre-computation (freqtrade's ``populate_indicators``). Where the market
        data holds the whole series (replay: backtest and simulation), the engine hands every bar of
        this plugin's symbols once, before the first cycle. Whatever is derived from it must be
        causal — its value at bar k may depend on bars <= k only — so using it at the cycle that
        sees bar k as the newest is no look-ahead. Paper trading never calls it."""

    def wants_cycle(self, market: MarketSnapshot) -> bool:
        """The wake predicate of the engine's quiet-bar fast path (engine.py, ``Engine._cycle``).

        False is a promise: at this snapshot ``generate_signals`` returns no signal and ``propose``,
        given no combined signal, returns nothing — so the engine may skip this plugin's steps. When
        no plugin wants a cycle the engine skips signals, aggregation, proposals, ranking and risk,
        and still takes fills, marks, kill switches, regime and position management. It must be
        cheap (it runs every cycle) and may only say False when sure: any doubt, say True. The
        default, True, makes every cycle a full one."""
        return True

    @abstractmethod
    def generate_signals(self, ctx: StrategyContext) -> list[Signal]:
        """Turn this cycle's data into signals (may be empty)."""

    @abstractmethod
    def propose(self, ctx: StrategyContext,
                combined: Mapping[str, CombinedSignal]) -> list[TradeProposal | ExitRequest]:
        """Turn the combined view of this plugin's symbols into entries or exit requests."""
