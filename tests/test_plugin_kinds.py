"""Plugin kinds (issue #15 item 6): one discovery function for every kind, each kind versioned, and a
plugin written for another interface version refused at start-up with a message naming it; the guards
that run a signal modifier or scorer record a failure and skip the plugin for that cycle."""
from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from importlib.metadata import EntryPoint
from typing import Mapping, Sequence

import pytest

import hydra_engine.plugins as plugins
from hydra_engine.domain import UTC, Regime, RegimeReading, Signal
from hydra_engine.gate import GateState, GateVerdict
from hydra_engine.plugin_kinds import (GATE_RULE_INTERFACE_VERSION, REGIME_DETECTOR_INTERFACE_VERSION, Adjustment,
                                       Modified, SignalContext, SignalModifier, SignalScorer, apply_modifiers,
                                       guarded_score, scale)
from hydra_engine.plugins import KINDS, PluginError, discover, discover_all
from hydra_engine.regime import HMMRegimeDetector, TrendVolRule
from hydra_engine.strategy import Strategy
from strategies.liquidation_cascade import LiquidationCascadeHunter
from strategies.sma_crossover import SmaCrossover

NOW = datetime(2024, 3, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- plugins as third parties ship them
class CreditStress(SignalModifier):
    name = "credit_stress"
    interface_version = SignalModifier.INTERFACE_VERSION

    def modify(self, signals: Sequence[Signal], ctx: SignalContext) -> Modified:
        out, trace = [], []
        for s in signals:
            if s.symbol == "SPY" and s.score > 0:
                out.append(scale(s, 0.5))
                trace.append(Adjustment(s.symbol, s.source, 0.5, "HYG credit stress: long equity damped"))
            else:
                out.append(s)
        return Modified(tuple(out), tuple(trace))


class HalfScorer(SignalScorer):
    name = "half"
    interface_version = 1

    def score(self, signal, ctx):
        return 0.5


class FlatDetector:
    name = "flat"
    interface_version = REGIME_DETECTOR_INTERFACE_VERSION

    def detect(self, market):
        return RegimeReading(Regime.MEAN_REVERTING, 1.0, self.name, market.now)


class WeekendRule:
    name = "weekend"
    scope = "book"
    interface_version = GATE_RULE_INTERFACE_VERSION

    def check(self, ctx, symbol=None, side=None):
        return GateVerdict(GateState.RESTRICT, self.name, "weekend") if ctx.now.weekday() >= 5 else None


class FutureModifier(CreditStress):
    name = "future_modifier"
    interface_version = 2


class UnversionedScorer(HalfScorer):
    name = "unversioned"
    interface_version = None


class BoolVersionDetector(FlatDetector):
    name = "bool_version"
    interface_version = True     # an int subclass: not a version


class MisnamedRule(WeekendRule):
    name = "named_otherwise"


class BadScopeRule(WeekendRule):
    name = "bad_scope"
    scope = "portfolio"


class NoVersionStrategy(Strategy):
    name = "no_version"
    regimes = frozenset()
    assets = ()
    data_needs = ()

    def generate_signals(self, ctx):
        return []

    def propose(self, ctx, combined: Mapping):
        return []


GROUPS = {k.key: k.group for k in KINDS.values()}


@pytest.fixture
def fake_entry_points(monkeypatch):
    """group -> the entry points the test installs there (nothing else is installed)."""
    installed: dict[str, list[EntryPoint]] = {g: [] for g in GROUPS.values()}

    def entry_points(*, group: str):
        return list(installed[group])

    monkeypatch.setattr(plugins, "entry_points", entry_points)

    def add(kind: str, name: str, attr: str) -> None:
        installed[GROUPS[kind]].append(EntryPoint(name=name, value=f"{__name__}:{attr}", group=GROUPS[kind]))
    return add


# --------------------------------------------------------------------------- discovery
def test_every_kind_has_its_group_and_version():
    assert set(KINDS) == {"strategies", "modifiers", "regime_detectors", "scorers", "gates"}
    assert {k: v.group for k, v in KINDS.items()} == {
        "strategies": "hydra.strategies", "modifiers": "hydra.modifiers",
        "regime_detectors": "hydra.regime_detectors", "scorers": "hydra.scorers", "gates": "hydra.gates"}
    assert all(type(k.interface_version) is int and k.interface_version >= 1 for k in KINDS.values())


def test_builtins_are_found_without_entry_points_and_declare_the_current_version(fake_entry_points):
    found = discover_all()
    # the project's own plugins are found with no entry point at all (the strategies the mission names and
    # the benchmark's SMA crossover; the cross-asset graph is also a signal modifier)
    assert {"liquidation_cascade": LiquidationCascadeHunter, "sma_crossover": SmaCrossover}.items() <= found["strategies"].items()
    assert {"macro_events", "metals_margin", "ai_disruption", "cross_asset", "funding_squeeze", "liquidation_reversal",
            "oi_divergence", "crowding_fade", "funding_carry"} <= set(found["strategies"])
    assert found["regime_detectors"] == {"trend_vol_rule": TrendVolRule, "hmm_regime": HMMRegimeDetector}
    assert "cross_asset" in found["modifiers"]
    for cls in found["strategies"].values():
        assert cls.interface_version == Strategy.INTERFACE_VERSION, cls
    for cls in found["modifiers"].values():
        assert cls.interface_version == SignalModifier.INTERFACE_VERSION, cls
    for cls in (TrendVolRule, HMMRegimeDetector):
        assert cls.interface_version == REGIME_DETECTOR_INTERFACE_VERSION
    # a class-level declaration on the dataclass detector, not a constructor field
    assert "interface_version" not in {f.name for f in dataclasses.fields(HMMRegimeDetector)}


def test_the_installed_entry_points_load_for_every_kind():
    # pyproject registers the project's strategies and detectors: they load and the built-ins win
    found = discover_all()
    assert found["strategies"]["sma_crossover"] is SmaCrossover
    assert found["regime_detectors"]["hmm_regime"] is HMMRegimeDetector


@pytest.mark.parametrize("kind,name,attr", [
    ("modifiers", "credit_stress", "CreditStress"), ("scorers", "half", "HalfScorer"),
    ("regime_detectors", "flat", "FlatDetector"), ("gates", "weekend", "WeekendRule"),
])
def test_one_function_discovers_a_third_party_plugin_of_each_kind(fake_entry_points, kind, name, attr):
    fake_entry_points(kind, name, attr)
    assert discover(kind)[name] is globals()[attr]


def test_an_unknown_kind_is_named_with_the_kinds():
    with pytest.raises(PluginError, match=r"unknown plugin kind 'strategy'; the kinds are strategies, modifiers"):
        discover("strategy")


def test_an_entry_point_of_the_wrong_kind_is_refused(fake_entry_points):
    fake_entry_points("scorers", "credit_stress", "CreditStress")
    with pytest.raises(PluginError, match=r"entry point 'credit_stress' \(.*:CreditStress\) is not a hydra "
                                          r"SignalScorer subclass"):
        discover("scorers")


# --------------------------------------------------------------------------- interface versions
@pytest.mark.parametrize("kind,name,attr,fragment", [
    ("modifiers", "future_modifier", "FutureModifier",
     "signal modifier plugin 'future_modifier' (tests.test_plugin_kinds:FutureModifier) was written for signal "
     "modifier interface version 2, but this HYDRA provides version 1 (entry-point group hydra.modifiers)"),
    ("scorers", "unversioned", "UnversionedScorer",
     "signal scorer plugin 'unversioned' (tests.test_plugin_kinds:UnversionedScorer) declares no "
     "interface_version; this HYDRA's signal scorer interface is version 1"),
    ("regime_detectors", "bool_version", "BoolVersionDetector",
     "regime detector plugin 'bool_version' (tests.test_plugin_kinds:BoolVersionDetector) was written for "
     "regime detector interface version True, but this HYDRA provides version 1"),
    ("strategies", "no_version", "NoVersionStrategy",
     "strategy plugin 'no_version' (tests.test_plugin_kinds:NoVersionStrategy) declares no interface_version"),
    ("gates", "weekend", "MisnamedRule",
     "gate rule plugin 'weekend' (tests.test_plugin_kinds:MisnamedRule) declares name 'named_otherwise'"),
    ("gates", "bad_scope", "BadScopeRule", "has scope 'portfolio'; a gate rule's scope is one of ('book', 'symbol')"),
], ids=["newer_version", "missing_version", "bool_version", "strategy_without_version", "misnamed", "bad_scope"])
def test_a_plugin_for_another_interface_is_a_start_up_error_naming_it(fake_entry_points, kind, name, attr, fragment):
    fake_entry_points(kind, name, attr)
    with pytest.raises(PluginError) as err:
        discover(kind)
    assert fragment in str(err.value)
    with pytest.raises(PluginError, match=name):
        discover_all()          # the start-up check over every kind stops on it too


def test_a_strategy_without_a_version_stops_build_strategies(fake_entry_points):
    fake_entry_points("strategies", "no_version", "NoVersionStrategy")
    with pytest.raises(PluginError, match="'no_version'.*declares no interface_version"):
        plugins.build_strategies(["liquidation_cascade"], {})


def test_a_builtin_without_a_version_is_refused_too(monkeypatch, fake_entry_points):
    monkeypatch.delattr(SmaCrossover, "interface_version")
    with pytest.raises(PluginError, match=r"strategy plugin 'sma_crossover' \(strategies.sma_crossover:SmaCrossover\) "
                                          "declares no interface_version"):
        plugins.available_plugins()


# --------------------------------------------------------------------------- the guards a modifier or scorer runs through
def sig(symbol: str, score: float, source: str, conf: float = 0.8) -> Signal:
    return Signal(symbol, score, conf, source, NOW, timedelta(hours=4))


CTX = SignalContext(NOW, market=None, regime=RegimeReading(Regime.UNKNOWN, 0.0, "none", NOW))


def test_modifiers_scale_and_say_why():
    signals = [sig("SPY", 0.6, "a"), sig("BTC/USD", 0.6, "b")]
    errors: list[str] = []
    out, trace = apply_modifiers([CreditStress()], signals, CTX, errors)
    assert not errors
    assert [s.confidence for s in out] == [0.4, 0.8] and [s.score for s in out] == [0.6, 0.6]
    assert trace == [{"modifier": "credit_stress", "symbol": "SPY", "source": "a", "factor": 0.5,
                      "reason": "HYG credit stress: long equity damped"}]


class Raises(CreditStress):
    name = "raises"

    def modify(self, signals, ctx):
        raise ZeroDivisionError("graph not built")


class Invents(CreditStress):
    name = "invents"

    def modify(self, signals, ctx):
        return Modified(tuple(signals) + (sig("GLD", 1.0, "made_up"),))


class Flips(CreditStress):
    name = "flips"

    def modify(self, signals, ctx):
        return Modified(tuple(Signal(s.symbol, -s.score, s.confidence, s.source, s.created_at, s.half_life)
                              for s in signals))


class Returns(CreditStress):
    name = "returns_a_list"

    def modify(self, signals, ctx):
        return list(signals)


@pytest.mark.parametrize("bad,fragment", [
    (Raises, "raises.modify: ZeroDivisionError: graph not built"),
    (Invents, "invents.modify: returned 3 signals for 2: a modifier may not add or drop signals"),
    (Flips, "flips.modify: changed a on SPY beyond its confidence"),
    (Returns, "returns_a_list.modify: returned list, not Modified"),
])
def test_a_broken_modifier_is_recorded_and_skipped_the_others_still_run(bad, fragment):
    signals = [sig("SPY", 0.6, "a"), sig("BTC/USD", 0.6, "b")]
    errors: list[str] = []
    out, trace = apply_modifiers([bad(), CreditStress()], signals, CTX, errors)
    assert len(errors) == 1 and errors[0].startswith(fragment)
    assert [s.confidence for s in out] == [0.4, 0.8] and len(trace) == 1   # the good one after it still ran


@pytest.mark.parametrize("value,expected,error", [
    (0.7, 0.7, None), (None, None, None), (1.5, None, "returned 1.5"), (float("nan"), None, "returned nan"),
    ("high", None, "returned 'high'"), (True, None, "returned True"),
])
def test_a_scorer_answers_a_probability_or_abstains(value, expected, error):
    class S(HalfScorer):
        def score(self, signal, ctx):
            return value
    errors: list[str] = []
    assert guarded_score(S(), sig("SPY", 0.5, "a"), CTX, errors) == expected
    assert (errors[0].startswith(f"half.score: {error}") if error else not errors)


def test_a_scorer_that_raises_abstains_and_is_recorded():
    class S(HalfScorer):
        def score(self, signal, ctx):
            raise KeyError("no model for SPY")
    errors: list[str] = []
    assert guarded_score(S(), sig("SPY", 0.5, "a"), CTX, errors) is None
    assert errors == ["half.score: KeyError: 'no model for SPY'"]
