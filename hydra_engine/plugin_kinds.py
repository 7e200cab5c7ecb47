"""The plugin kinds beside strategies, and the interface version of every kind.

HYDRA loads five kinds of plugin (``hydra_engine.plugins.discover`` finds them all):

=================  ==============================  =========================  ==========================
kind               interface                       entry-point group          interface version constant
=================  ==============================  =========================  ==========================
strategies         ``strategy.Strategy`` (ABC)     ``hydra.strategies``       ``Strategy.INTERFACE_VERSION``
modifiers          :class:`SignalModifier` (ABC)   ``hydra.modifiers``        ``SignalModifier.INTERFACE_VERSION``
regime_detectors   ``regime.RegimeDetector``       ``hydra.regime_detectors`` :data:`REGIME_DETECTOR_INTERFACE_VERSION`
scorers            :class:`SignalScorer` (ABC)     ``hydra.scorers``          ``SignalScorer.INTERFACE_VERSION``
gates              ``gate.GateRule`` (protocol)    ``hydra.gates``            :data:`GATE_RULE_INTERFACE_VERSION`
=================  ==============================  =========================  ==========================

Every plugin class declares ``interface_version``: the version of its kind's interface it was written
for. The bases deliberately do not define it, so a plugin that forgets it is caught at start-up instead
of silently claiming the current version. Bump a kind's version whenever its interface changes in a way
an existing plugin could get wrong (a new required method, a changed argument or return shape).

This module also holds the guards the engine runs a modifier or a scorer through
(:func:`apply_modifiers`, :func:`guarded_score`): what such a plugin returns is checked, and a plugin
that raises or returns something malformed is recorded in the cycle's errors and skipped for that cycle.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, Sequence

from .domain import RegimeReading, Signal
from .ports import MarketSnapshot

# Protocol kinds (their interfaces live in regime.py and gate.py, which hold no version of their own)
REGIME_DETECTOR_INTERFACE_VERSION = 1   # name: str; detect(market: MarketSnapshot) -> RegimeReading
GATE_RULE_INTERFACE_VERSION = 1         # name: str; scope: "book" | "symbol"; check(ctx, symbol, side) -> GateVerdict | None
GATE_SCOPES = ("book", "symbol")

MAX_FACTOR = 3.0   # a modifier scales a signal's confidence by at most this (the aggregator's MAX_MULTIPLIER)
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SignalContext:
    """Read-only view handed to modifiers and scorers each cycle: no broker, no store, no clock."""

    now: datetime
    market: MarketSnapshot
    regime: RegimeReading


# --------------------------------------------------------------------------- modifiers
@dataclass(frozen=True, slots=True)
class Adjustment:
    """One line of a modifier's trace: the signal (symbol, source) it scaled, by how much, and why."""

    symbol: str
    source: str
    factor: float
    reason: str


@dataclass(frozen=True, slots=True)
class Modified:
    """What :meth:`SignalModifier.modify` returns: the cycle's signals after it, and what it changed."""

    signals: tuple[Signal, ...]
    trace: tuple[Adjustment, ...] = ()


def scale(signal: Signal, factor: float) -> Signal:
    """``signal`` with its confidence multiplied by ``factor`` (clipped to [0, 1]): the one change a
    modifier makes. A signal's direction (score) is its source's opinion and is left alone."""
    return dataclasses.replace(signal, confidence=max(0.0, min(1.0, signal.confidence * factor)))


class SignalModifier(ABC):
    """Changes how much a cycle's signals count, given the market: e.g. the cross-asset graph (HYG credit
    stress damping long equity signals). It may scale the confidence of signals it is given (use
    :func:`scale`), and it must say so in its trace; it may not invent, drop or re-date signals, nor
    flip a signal's score. The engine applies the modifiers in order, before aggregation."""

    INTERFACE_VERSION: ClassVar[int] = 1
    name: ClassVar[str]
    interface_version: ClassVar[int]   # declared by each plugin (see the module docstring)

    @abstractmethod
    def modify(self, signals: Sequence[Signal], ctx: SignalContext) -> Modified:
        """Return every signal of ``signals`` (modified or not, in the same order) and the trace."""


# --------------------------------------------------------------------------- scorers
class SignalScorer(ABC):
    """Scores one signal (e.g. a gradient-boosted meta-label model): the estimated probability, in
    [0, 1], that the signal's direction is right over its half-life, or None to abstain (no model for
    this symbol, too little data). A scorer never changes the signal; the engine decides what to do
    with the score."""

    INTERFACE_VERSION: ClassVar[int] = 1
    name: ClassVar[str]
    interface_version: ClassVar[int]   # declared by each plugin (see the module docstring)

    @abstractmethod
    def score(self, signal: Signal, ctx: SignalContext) -> float | None:
        """A probability in [0, 1], or None to abstain."""


# --------------------------------------------------------------------------- guards the engine runs them through
def _modification_problem(before: Sequence[Signal], out: object) -> str | None:
    """Why ``out`` is not a well-formed answer to ``modify(before, ...)``, or None when it is."""
    if not isinstance(out, Modified):
        return f"returned {type(out).__name__}, not Modified"
    if not all(isinstance(s, Signal) for s in out.signals):
        return "returned something that is not a Signal among its signals"
    if len(out.signals) != len(before):
        return f"returned {len(out.signals)} signals for {len(before)}: a modifier may not add or drop signals"
    for old, new in zip(before, out.signals):
        if (new.symbol, new.source, new.created_at, new.score) != (old.symbol, old.source, old.created_at, old.score):
            return (f"changed {old.source} on {old.symbol} beyond its confidence: a modifier scales how much a "
                    "signal counts, never which signal it is, when it was known or which way it points")
        if new.confidence > min(1.0, old.confidence * MAX_FACTOR) + 1e-12:
            return f"raised {old.source} on {old.symbol} more than {MAX_FACTOR}x"
    if not all(isinstance(a, Adjustment) and math.isfinite(a.factor) for a in out.trace):
        return "returned a trace entry that is not an Adjustment with a finite factor"
    return None


def apply_modifiers(modifiers: Sequence[SignalModifier], signals: Sequence[Signal], ctx: SignalContext,
                    errors: list[str]) -> tuple[list[Signal], list[dict]]:
    """Run ``modifiers`` in order over ``signals``. Returns the signals after all of them and the trace
    (``{"modifier", "symbol", "source", "factor", "reason"}`` per scaled signal, for the cycle report). A
    modifier that raises or answers malformed is logged, named in ``errors`` and skipped for this
    cycle: the signals pass on as it received them (one broken plugin never silences the others)."""
    current = list(signals)
    trace: list[dict] = []
    for mod in modifiers:
        name = getattr(mod, "name", type(mod).__name__)
        try:
            out = mod.modify(tuple(current), ctx)
        except Exception as exc:  # noqa: BLE001 -- a plugin's failure stands that plugin down, not the engine
            _log.exception("signal modifier %s failed", name)
            errors.append(f"{name}.modify: {type(exc).__name__}: {exc}")
            continue
        problem = _modification_problem(current, out)
        if problem:
            errors.append(f"{name}.modify: {problem}; skipped this cycle")
            continue
        current = list(out.signals)
        trace.extend({"modifier": name, "symbol": a.symbol, "source": a.source, "factor": a.factor,
                      "reason": a.reason} for a in out.trace)
    return current, trace


def guarded_score(scorer: SignalScorer, signal: Signal, ctx: SignalContext, errors: list[str]) -> float | None:
    """``scorer.score(signal, ctx)``, or None (abstain) when it raises or answers anything but None or a
    number in [0, 1]; the failure is named in ``errors`` and logged."""
    name = getattr(scorer, "name", type(scorer).__name__)
    try:
        value = scorer.score(signal, ctx)
    except Exception as exc:  # noqa: BLE001 -- see apply_modifiers
        _log.exception("signal scorer %s failed", name)
        errors.append(f"{name}.score: {type(exc).__name__}: {exc}")
        return None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and 0.0 <= value <= 1.0):
        errors.append(f"{name}.score: returned {value!r} for {signal.source} on {signal.symbol}, not a probability "
                      "in [0, 1] or None; ignored")
        return None
    return float(value)


def score_signals(scorers: Sequence[SignalScorer], signals: Sequence[Signal], owners: Sequence[str],
                  ctx: SignalContext, errors: list[str]) -> tuple[dict[tuple[str, str], tuple[float, str]], list[dict]]:
    """Run the scorers over a cycle's signals (``owners[i]``: the plugin that emitted ``signals[i]``).
    The first scorer that answers a probability scores the signal; one that abstains may say why in an
    optional ``abstain_reason`` attribute, and may expose the inputs it read as ``last_inputs`` (a dict),
    both recorded. Returns ``{(plugin, symbol): (mean probability of its scored signals, scorer)}`` —
    what ranking, Kelly sizing and the threshold rule read — and the trace (the report's
    ``ml_scores``: one entry per signal with ``ml_score`` or ``abstain``)."""
    per: dict[tuple[str, str], list[tuple[float, str]]] = {}
    trace: list[dict] = []
    for sig, owner in zip(signals, owners):
        entry: dict = {"strategy": owner, "symbol": sig.symbol, "source": sig.source, "ml_score": None}
        reasons = []
        for sc in scorers:
            name = getattr(sc, "name", type(sc).__name__)
            p = guarded_score(sc, sig, ctx, errors)
            inputs = getattr(sc, "last_inputs", None)
            if isinstance(inputs, dict) and inputs:
                entry["inputs"] = inputs
            if p is not None:
                entry.update(scorer=name, ml_score=round(p, 6))
                per.setdefault((owner, sig.symbol), []).append((p, name))
                break
            reasons.append(f"{name}: {getattr(sc, 'abstain_reason', None) or 'abstained'}")
        if entry["ml_score"] is None:
            entry["abstain"] = "; ".join(reasons)
        trace.append(entry)
    scores = {k: (sum(p for p, _ in v) / len(v), v[0][1]) for k, v in per.items()}
    return scores, trace


def with_scores(proposals: Sequence, ml: dict) -> list:
    """The proposals with the scorer's probability as confidence where it scored the proposing plugin's
    signals on the symbol (ranking and Kelly sizing read it); the others unchanged."""
    if not ml:
        return list(proposals)
    return [dataclasses.replace(p, confidence=ml[(p.strategy, p.symbol)][0]) if (p.strategy, p.symbol) in ml else p
            for p in proposals]


def below_threshold(p, ml: dict, threshold: float) -> tuple[str, str] | None:
    """(rule, reason) when the proposal's score is below ``threshold``; None when it passes or was not scored."""
    got = ml.get((p.strategy, p.symbol))
    if got is None or got[0] >= threshold:
        return None
    return ("ml_score_below_threshold",
            f"{got[1]}: P(profitable after costs) {got[0]:.3f} < threshold {threshold:.2f}")
