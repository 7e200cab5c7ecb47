"""The plugin contract (issue #15 item 6), checked on every discovered plugin over a replay span of the
shipped data, through the real engine. What a plugin must never do:

1. read the future: its decisions up to a time t are the same when every value known after t is scrambled;
2. touch the broker: its module imports no broker code (static), it is never handed a broker and no broker
   method runs while it does (runtime);
3. return malformed answers: signals are ``Signal``s on its declared assets, stamped no later than the
   cycle; proposals are ``TradeProposal``/``ExitRequest``s in its name, on its declared assets, with finite
   prices;
4. raise through the engine: a plugin that raises is recorded in the cycle's errors and skipped for that
   cycle; the session and the other plugins go on exactly as without it.

A plugin is built with its default parameters (it must have them: the engine's defaults enable it so).
"""
from __future__ import annotations

import ast
import inspect
import math
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hydra_engine.app import build_sim_session, run_session
from hydra_engine.config import PERP_SYMBOLS
from hydra_engine.data.replay import ReplayMarketData
from hydra_engine.domain import UTC, Regime, RegimeReading, Signal, TradeProposal
from hydra_engine.plugins import discover
from hydra_engine.ports import MarketSnapshot
from hydra_engine.strategy import ExitRequest, StrategyContext
from hydra_engine.tradelog import load_session

from .conftest import SHIPPED_DATA, make_settings
from .test_engine_loop import perturbed_copy

START, END = "2024-02-20", "2024-03-08"          # holds the 2024-02-27 BTC squeeze
CUT = pd.Timestamp("2024-03-01T00:00:00Z")
# a plugin whose input does not fire in that span is checked on a span where it does (start, end, cut):
# funding carry needs funding beyond 0.05 % in a ranging market, which late February 2024 was not
SPANS = {"funding_carry": ("2023-12-20", "2024-01-10", pd.Timestamp("2024-01-02T12:00:00Z"))}


def span(name: str) -> tuple[str, str, pd.Timestamp]:
    return SPANS.get(name, (START, END, CUT))
STRATEGIES = discover("strategies")
DETECTORS = discover("regime_detectors")
GATES = discover("gates")
# modules a plugin may not import: the broker adapters, the Alpaca SDK (orders, accounts), the store
FORBIDDEN_IMPORTS = ("hydra_engine.brokers", "alpaca", "hydra_engine.store")


# --------------------------------------------------------------------------- data: as shipped, and with the future scrambled
@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    """(real, scrambled): two folders at the same path depth, each under its own root, so that the two
    runs' configurations differ only in the data folder."""
    root = tmp_path_factory.mktemp("contract")
    real, scrambled = root / "real" / "data", root / "scrambled" / "data"
    shutil.copytree(SHIPPED_DATA, real)
    perturbed_copy(SHIPPED_DATA, scrambled, CUT)
    return real, scrambled


# --------------------------------------------------------------------------- the watch over one plugin in the engine
class Watch:
    """Wraps one plugin instance and the engine's broker: records every contract breach."""

    def __init__(self, engine, plugin):
        self.plugin, self.inside, self.breaches = plugin, 0, []
        self.calls = {"generate_signals": 0, "propose": 0}
        self.signals = 0
        broker = engine.broker
        for attr in ("account", "positions", "asset", "is_market_open", "submit", "cancel", "open_orders",
                     "get_order", "poll_fills", "update_marks"):
            if callable(getattr(broker, attr, None)):
                setattr(broker, attr, self._guard_broker(attr, getattr(broker, attr)))
        self._broker = broker
        for attr, check in (("generate_signals", self._check_signals), ("propose", self._check_items),
                            ("wants_cycle", None)):
            setattr(plugin, attr, self._inside(attr, getattr(plugin, attr), check))

    def _guard_broker(self, attr, fn):
        def guarded(*a, **kw):
            if self.inside:
                self.breaches.append(f"broker.{attr} called while {self.plugin.name} ran")
            return fn(*a, **kw)
        return guarded

    def _inside(self, attr, fn, check):
        def wrapped(*args):
            self._check_args(attr, args)
            self.inside += 1
            try:
                out = fn(*args)
            finally:
                self.inside -= 1
            if check is not None:
                self.calls[attr] += 1
                check(args[0], out, *args[1:])
            return out
        return wrapped

    def _check_args(self, attr, args):
        for a in args:
            reachable = [a] + ([getattr(a, f) for f in a.__dataclass_fields__] if hasattr(a, "__dataclass_fields__") else [])
            reachable += [getattr(r, f) for r in list(reachable) if isinstance(r, MarketSnapshot)
                          for f in r.__dataclass_fields__] if any(isinstance(r, MarketSnapshot) for r in reachable) else []
            if any(r is self._broker or callable(getattr(r, "submit", None)) for r in reachable):
                self.breaches.append(f"{self.plugin.name}.{attr} was handed a broker")

    def _check_signals(self, ctx: StrategyContext, out):
        name = self.plugin.name
        if not isinstance(out, list):
            self.breaches.append(f"{name}.generate_signals returned {type(out).__name__}, not a list")
            return
        for s in out:
            self.signals += 1
            if not isinstance(s, Signal):
                self.breaches.append(f"{name}.generate_signals returned {s!r}, not a Signal")
            elif s.symbol not in self.plugin.assets:
                self.breaches.append(f"{name}: signal on {s.symbol}, outside its assets {self.plugin.assets}")
            elif s.created_at > ctx.now:
                self.breaches.append(f"{name}: signal stamped {s.created_at} at cycle {ctx.now}: from the future")

    def _check_items(self, ctx: StrategyContext, out, combined):
        name = self.plugin.name
        if not isinstance(out, list):
            self.breaches.append(f"{name}.propose returned {type(out).__name__}, not a list")
            return
        for item in out:
            if not isinstance(item, (TradeProposal, ExitRequest)):
                self.breaches.append(f"{name}.propose returned {item!r}, not a TradeProposal or ExitRequest")
                continue
            if item.strategy != name:
                self.breaches.append(f"{name}.propose: {item!r} is in the name of {item.strategy!r}")
            if item.symbol not in self.plugin.assets:
                self.breaches.append(f"{name}.propose: {item.symbol} is outside its assets {self.plugin.assets}")
            if isinstance(item, TradeProposal):
                numbers = [item.entry_price, item.stop_price, item.target_price, item.confidence,
                           item.min_notional_usd] + [v for v in (item.max_notional_usd, item.trailing_stop_pct,
                                                                item.trailing_atr_mult) if v is not None]
                if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers):
                    self.breaches.append(f"{name}.propose: non-finite number in {item!r}")
                if item.expected_holding <= timedelta(0):
                    self.breaches.append(f"{name}.propose: expected_holding {item.expected_holding} is not positive")


def span_of(name: str) -> tuple[str, str, pd.Timestamp]:
    """(start, end, cut) of a plugin's contract run: the default span, or the plugin's ``contract_span``
    (start, end, cut) when the default holds none of its events (a macro release, a margin change)."""
    span = getattr(STRATEGIES.get(name), "contract_span", None)
    return SPANS.get(name, (START, END, CUT)) if span is None else (span[0], span[1], pd.Timestamp(span[2]))


def universe_of(name: str) -> tuple[str, ...]:
    """The default universe plus the plugin's equity assets (GLD, SLV...) and the equity bars it watches
    (``DataNeed("bars", "HYG")``), so it sees the bars it trades and the ones its rule reads."""
    from hydra_engine.brokers.capabilities import DEFAULT_ASSET_SPECS
    plugin = STRATEGIES.get(name)
    wanted = [*getattr(plugin, "assets", ()), *(n.symbol for n in getattr(plugin, "data_needs", ()) if n.kind == "bars")]
    extra = [s for s in wanted if s in DEFAULT_ASSET_SPECS and "/" not in s]
    return tuple(dict.fromkeys(("BTC/USD", "ETH/USD", "SPY", *extra)))


def run_plugin(folder: Path, data_dir: Path, name: str, extra=None) -> tuple[dict, Watch | None, object]:
    start, end, _ = span_of(name)
    # a perp plugin (issue #20) runs with the perp module on: its symbols are replayed only then
    perps = {"perps": {"enabled": True}} if set(STRATEGIES[name].assets) & set(PERP_SYMBOLS) else {}
    # a plugin gated to regimes the default detector never reads over its events may name the project's other
    # shipped settings it is checked under (``contract_settings``, e.g. the trend/volatility rule): the same
    # assertions, in a configuration the engine supports
    own = dict(getattr(STRATEGIES[name], "contract_settings", None) or {})
    settings = make_settings(folder, data_dir=data_dir, start=start, end=end, symbols=universe_of(name),
                             strategies={"enabled": [name]}, **perps, **own)
    session = build_sim_session(settings)
    engine = session.engine
    [plugin] = engine.strategies
    watch = Watch(engine, plugin)
    if extra is not None:
        engine.strategies.insert(0, extra)    # injected ahead of the real plugin: it runs first every cycle
    summary = run_session(session, progress=False)
    return load_session(summary["log"]), watch, summary


def upto(doc: dict, cut: pd.Timestamp) -> list[dict]:
    t = cut.to_pydatetime()
    return [c for c in doc["cycle_details"] if datetime.fromisoformat(c["ts"].replace("Z", "+00:00")) <= t]


# --------------------------------------------------------------------------- 1-3: every discovered strategy
@pytest.fixture(scope="module")
def contract_runs(data_dirs, tmp_path_factory):
    """name -> (real run, its watch, scrambled run): each plugin alone in the engine, once per data set."""
    real, scrambled = data_dirs
    by_cut = {CUT: scrambled}
    out = {}
    for name in STRATEGIES:
        cut = span_of(name)[2]
        if cut not in by_cut:   # a plugin's own cut: the data scrambled after it, at the same path depth
            by_cut[cut] = tmp_path_factory.mktemp("contract_cut") / "scrambled" / "data"
            perturbed_copy(SHIPPED_DATA, by_cut[cut], cut)
        # the same log and database folder for both runs: the configurations then differ only in the data
        folder = tmp_path_factory.mktemp(f"run_{name}")
        a, watch, _ = run_plugin(folder, real, name)
        b, _, _ = run_plugin(folder, by_cut[cut], name)
        out[name] = (a, watch, b)
    return out


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_plugin_does_not_read_the_future(contract_runs, name):
    real, watch, scrambled = contract_runs[name]
    start, end, cut = span_of(name)
    before_real, before_scrambled = upto(real, cut), upto(scrambled, cut)
    assert len(before_real) > 100
    assert watch.signals, f"{name} produced no signal over {start}..{end}: the look-ahead check would be vacuous"
    assert any(c["signals"] for c in before_real), f"{name}: no signal before {cut}: nothing compared"
    for a, b in zip(before_real, before_scrambled, strict=True):
        assert a == b, f"{name}: cycle {a['cycle']} ({a['ts']}) differs once the data after {cut} is scrambled"
    # the scrambled future is really different (else the comparison above proves nothing)
    assert real["cycle_details"][-1]["prices"] != scrambled["cycle_details"][-1]["prices"]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_plugin_is_never_handed_the_broker_and_never_calls_it(contract_runs, name):
    _, watch, _ = contract_runs[name]
    assert watch.calls["generate_signals"] > 0 and watch.calls["propose"] > 0
    assert not [b for b in watch.breaches if "broker" in b], watch.breaches


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_plugin_module_imports_no_broker_code(name):
    module = inspect.getmodule(STRATEGIES[name])
    tree = ast.parse(inspect.getsource(module))
    package = module.__name__.rpartition(".")[0]
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: resolve against the plugin's own package
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            imported += [base] + [f"{base}.{a.name}" for a in node.names]
    bad = sorted({m for m in imported for f in FORBIDDEN_IMPORTS if m == f or m.startswith(f + ".")})
    assert not bad, f"{name} ({module.__name__}) imports {bad}: a plugin gets its data from the engine, never a broker"


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_plugin_answers_are_well_formed_and_it_never_raises(contract_runs, name):
    real, watch, _ = contract_runs[name]
    assert not watch.breaches, "\n".join(watch.breaches[:20])
    raised = [e for c in real["cycle_details"] for e in c["errors"] if e.startswith(f"{name}.")]
    assert not raised, raised[:5]
    assert any(c["proposals"] or c["exits"] for c in real["cycle_details"]), \
        f"{name} proposed nothing over {START}..{END}: its proposals went unchecked"


# --------------------------------------------------------------------------- 4: a plugin that raises
def test_a_plugin_that_raises_is_recorded_and_skipped_and_the_session_goes_on(data_dirs, tmp_path):
    real, _ = data_dirs
    name = "liquidation_cascade"
    base = STRATEGIES[name]

    class Broken(base):
        """Raises everywhere the engine calls it, on every cycle."""

        name = "broken_plugin"
        assets = base.assets

        def wants_cycle(self, market):
            raise RuntimeError("wake predicate broke")

        def generate_signals(self, ctx):
            raise ValueError(f"no data at {ctx.now:%Y-%m-%dT%H}")

        def propose(self, ctx, combined):
            raise KeyError("propose broke")

    clean, _, clean_summary = run_plugin(tmp_path / "clean", real, name)
    doc, watch, summary = run_plugin(tmp_path / "broken", real, name, extra=Broken())
    cycles = doc["cycle_details"]
    assert summary["cycles"] == clean_summary["cycles"] == len(cycles) > 100   # the session ran to its end
    for c in cycles:
        assert any(e.startswith("broken_plugin.generate_signals: ValueError: no data at") for e in c["errors"]), c["errors"]
        assert "broken_plugin.propose: KeyError: 'propose broke'" in c["errors"]
        assert "broken_plugin" not in c["strategies_run"] + c["strategies_gated"]
    # the other plugin went on exactly as it does alone
    assert doc["trades"] == clean["trades"] and doc["fills"] == clean["fills"] and doc["orders"] == clean["orders"]
    for a, b in zip(clean["cycle_details"], cycles, strict=True):
        for key in ("signals", "proposals", "decisions", "exits", "orders", "fills"):
            assert a[key] == b[key], (key, a["cycle"])
    assert watch.calls["generate_signals"] > 0 and not watch.breaches


# --------------------------------------------------------------------------- the other kinds
@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_regime_detector_answers_well_formed_readings_from_the_past_only(name, data_dirs):
    """Every discovered detector, built without arguments (an unfitted HMM answers UNKNOWN, saying why):
    a reading per cycle with a known regime, a confidence in [0, 1], its own name and the cycle's time;
    and the same readings up to the cut when the data after it is scrambled."""
    readings = {}
    for which, folder in zip(("real", "scrambled"), data_dirs):
        market = ReplayMarketData(folder, ["BTC/USD", "ETH/USD", "SPY"], data_only=["VIX"],
                                  start=pd.Timestamp(START).date(), end=pd.Timestamp(END).date())
        detector = DETECTORS[name]()
        out = []
        for now in market.timeline()[::6]:
            r = detector.detect(market.snapshot(now))
            assert isinstance(r, RegimeReading) and isinstance(r.regime, Regime)
            assert 0.0 <= r.confidence <= 1.0 and r.detector == detector.name and r.as_of == now
            out.append((now, r.regime, r.confidence))
        readings[which] = out
    cut = CUT.to_pydatetime()
    assert [r for r in readings["real"] if r[0] <= cut] == [r for r in readings["scrambled"] if r[0] <= cut]


@pytest.mark.parametrize("name", sorted(GATES))
def test_gate_rule_declares_a_scope_and_answers_a_verdict_in_its_name(name):
    from hydra_engine.gate import GateContext, GateVerdict
    rule = GATES[name]()
    assert rule.scope in ("book", "symbol")
    now = datetime(2024, 3, 1, tzinfo=UTC)
    ctx = GateContext(now=now, market=MarketSnapshot(now=now, bars={}),
                      regime=RegimeReading(Regime.UNKNOWN, 0.0, "none", now))
    verdict = rule.check(ctx, "SPY" if rule.scope == "symbol" else None)
    assert verdict is None or (isinstance(verdict, GateVerdict) and verdict.rule == rule.name)


def test_the_contract_covers_the_project_plugins():
    # a discovery that silently found nothing would make every parametrised check above vacuous
    assert {"liquidation_cascade", "sma_crossover"} <= set(STRATEGIES)
    assert {"trend_vol_rule", "hmm_regime"} <= set(DETECTORS)
    assert isinstance(np.float64(1.0), float)   # numpy prices count as finite floats in the proposal check
