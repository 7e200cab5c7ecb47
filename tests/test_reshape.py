"""The reshaped engine (issue #15): the one entry gate, the book's and the executor's public interfaces,
venues declaring capabilities and routed by instrument, risk as lists, the domain's perp types, and
layers that never reach up. Real Engine, SimulatedBroker, RiskManager; hand-made bars."""
from __future__ import annotations

import ast
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from hydra_engine.brokers.capabilities import DEFAULT_ASSET_SPECS
from hydra_engine.brokers.sim import SimulatedBroker
from hydra_engine.domain import (Fill, FundingPayment, Instrument, InstrumentKind, Order, OrderType, Side,
                                 TimeInForce, TradeProposal)
from hydra_engine.gate import GateState, GateVerdict
from hydra_engine.ports import Broker, VenueCapabilities
from hydra_engine.risk import RiskManager
from hydra_engine.risk_rules import ENTRY_RULES, KILL_SWITCHES, SIZE_MODIFIERS
from hydra_engine.venues import VenueRouter

from .test_engine_risk_paths import DAY_S, HandMadeBars, build, buy

UTC = timezone.utc
ROOT = Path(__file__).resolve().parent.parent
HOURS = [datetime(2024, 3, 4, tzinfo=UTC) + timedelta(hours=h) for h in range(12)]


def btc_market(price: float = 60_000.0) -> HandMadeBars:
    return HandMadeBars({"BTC/USD": (3600, [(t, price, price) for t in HOURS])})


class Always:
    """A symbol gate rule that always gives ``state`` (a stand-in for the perp and LLM rules to come)."""

    scope, layer = "symbol", "test"

    def __init__(self, name, state, can_block=False):
        self.name, self.state, self.can_block = name, state, can_block
        self.asked = 0

    def check(self, ctx, symbol=None, side=None):
        self.asked += 1
        return GateVerdict(self.state, self.name, f"{self.name} says {self.state.name} for {symbol}")


class Broken:
    name, scope, layer = "broken", "symbol", "test"

    def check(self, ctx, symbol=None, side=None):
        raise RuntimeError("feed parse error")


def test_a_proposal_refused_by_the_gate_names_the_rule_and_the_state_in_the_decision(tmp_path):
    engine, _, _ = build(tmp_path, btc_market(), {HOURS[1]: [buy("BTC/USD", 60_000, 58_800, 62_400)]})
    engine.gate.add(Always("news_hold", GateState.RESTRICT))
    engine.run_cycle(HOURS[0])
    [decision] = engine.run_cycle(HOURS[1])["decisions"]
    assert not decision["approved"] and decision["rule"] == "news_hold" and decision["layer"] == "test"
    assert decision["gate"] == {"state": "RESTRICT", "rule": "news_hold"}
    assert engine.summary()["vetoes_by_rule"] == {"news_hold": 1}


def test_an_approved_decision_records_that_the_gate_allowed_it(tmp_path):
    engine, broker, _ = build(tmp_path, btc_market(), {HOURS[1]: [buy("BTC/USD", 60_000, 58_800, 62_400)]})
    engine.run_cycle(HOURS[0])
    [decision] = engine.run_cycle(HOURS[1])["decisions"]
    assert decision["approved"] and decision["gate"] == {"state": "ALLOW"}
    assert len(broker.open_orders()) == 1


def test_the_first_refusing_rule_wins_and_later_rules_are_not_asked(tmp_path):
    """The order of the list is the priority of the reasons: stale data before a plugin's rule."""
    market = btc_market()
    engine, _, _ = build(tmp_path, market, {HOURS[1]: [buy("BTC/USD", 60_000, 58_800, 62_400)]})
    later = Always("later", GateState.BLOCK)
    engine.gate.add(later)
    engine.run_cycle(HOURS[0])
    market.missing.add("BTC/USD")
    [decision] = engine.run_cycle(HOURS[1])["decisions"]
    assert decision["rule"] == "stale_data" and later.asked == 0


def test_a_gate_rule_that_raises_refuses_the_entry_and_the_cycle_goes_on(tmp_path):
    engine, broker, _ = build(tmp_path, btc_market(), {HOURS[1]: [buy("BTC/USD", 60_000, 58_800, 62_400)]})
    engine.gate.add(Broken())
    engine.run_cycle(HOURS[0])
    report = engine.run_cycle(HOURS[1])
    [decision] = report["decisions"]
    assert not decision["approved"] and decision["rule"] == "broken" and "feed parse error" in decision["reason"]
    assert broker.open_orders() == [] and engine.cycle == 2


def test_a_blocking_rule_flattens_a_held_symbol_with_its_reason(tmp_path):
    engine, broker, _ = build(tmp_path, btc_market(), {HOURS[1]: [buy("BTC/USD", 60_000, 58_800, 62_400)]})
    for t in HOURS[:4]:
        engine.run_cycle(t)
    assert "BTC/USD" in engine.positions
    engine.gate.add(Always("cascade_risk", GateState.BLOCK, can_block=True))
    report = engine.run_cycle(HOURS[4])
    assert [e["reason"] for e in report["exits"]] == ["gate:cascade_risk"]
    engine.run_cycle(HOURS[5])
    [trade] = engine.closed_trades
    assert trade["exit_reason"] == "gate:cascade_risk" and "BTC/USD" not in engine.positions


def test_a_kill_is_a_book_verdict_that_blocks(tmp_path):
    engine, _, _ = build(tmp_path, btc_market(), {})
    engine.risk.kill("operator", HOURS[0])
    engine.run_cycle(HOURS[0])
    from hydra_engine.gate import GateContext
    verdict = engine.gate.for_book(GateContext(HOURS[0], None, engine.regime, engine.cycle)).verdict
    assert verdict.state is GateState.BLOCK and verdict.rule == "kill_switch"


# ------------------------------------------------------------------ the book's public interface
def test_funding_accrues_on_the_position_and_a_liquidation_closes_it_with_its_reason(tmp_path):
    engine, _, _ = build(tmp_path, btc_market(), {HOURS[1]: [buy("BTC/USD", 60_000, 58_800, 62_400)]})
    for t in HOURS[:3]:
        engine.run_cycle(t)
    pos = engine.positions["BTC/USD"]
    pay = FundingPayment("BTC/USD", HOURS[3], Decimal("0.0001"), Decimal(60_000), pos.qty,
                         -(pos.qty * Decimal(60_000) * Decimal("0.0001")))
    assert engine.book.apply_funding(pay) and pos.funding_usd == pay.amount_usd < 0
    assert not engine.book.apply_funding(FundingPayment("ETH/USD", HOURS[3], Decimal("0.0001"), Decimal(3000),
                                                        Decimal(1), Decimal("-0.3")))
    liq = Fill("liq-1", "BTC/USD", Side.SELL, abs(pos.qty), Decimal(55_000), Decimal("1.00"), HOURS[4], "liq-1")
    trade = engine.book.apply_liquidation(liq)
    assert trade["exit_reason"] == "liquidation" and "BTC/USD" not in engine.positions
    state = engine.state()
    assert "funding_usd" not in str(state["positions"])   # the position is gone from the saved book too


def test_the_book_state_round_trips_through_restore(tmp_path):
    engine, _, _ = build(tmp_path, btc_market(), {HOURS[1]: [buy("BTC/USD", 60_000, 58_800, 62_400)]})
    for t in HOURS[:3]:
        engine.run_cycle(t)
    engine.positions["BTC/USD"].funding_usd = Decimal("-1.25")
    again, _, _ = build(tmp_path, btc_market(), {})
    again.restore(engine.state())
    assert again.positions == engine.positions and again.order_seq == engine.order_seq


# ------------------------------------------------------------------ venues
def test_venues_declare_capabilities_instead_of_being_probed():
    assert isinstance(SimulatedBroker.capabilities, VenueCapabilities)
    from hydra_engine.brokers.alpaca import AlpacaBroker
    caps = AlpacaBroker.capabilities
    assert caps.brackets and caps.native_trailing_stops and not caps.short_crypto
    engine_src = (ROOT / "hydra_engine" / "engine.py").read_text()
    for path in ("engine.py", "executor.py", "book.py"):
        src = (ROOT / "hydra_engine" / path).read_text()
        assert "getattr(self.broker" not in src and "supports_brackets" not in src, path
    assert "normalise_symbol" not in engine_src


def test_the_router_sends_orders_to_their_instruments_venue_and_sums_the_accounts():
    market = HandMadeBars({"BTC/USD": (3600, [(t, 60_000.0, 60_000.0) for t in HOURS]),
                           "SPY": (DAY_S, [(datetime(2024, 3, 4, 14, 30, tzinfo=UTC), 510.0, 511.0)])})
    spot = SimulatedBroker(market, DEFAULT_ASSET_SPECS, starting_cash_usd=Decimal(100_000))
    other = SimulatedBroker(market, DEFAULT_ASSET_SPECS, starting_cash_usd=Decimal(20_000))
    router = VenueRouter({"sim": spot, "perp": other},
                         {"BTC/USD": Instrument("BTC/USD", InstrumentKind.SPOT, venue="perp")}, default="sim")
    assert isinstance(router, Broker)
    assert router.account().equity_usd == Decimal(120_000)
    router.update_marks({"BTC/USD": 60_000.0, "SPY": 511.0})
    order = Order("c-1", "BTC/USD", Side.BUY, Decimal("0.1"), OrderType.MARKET, TimeInForce.GTC, HOURS[0], "t")
    router.submit(order)
    assert other.get_order("c-1") is not None and spot.get_order("c-1") is None
    assert router.get_order("c-1") is not None
    fills = router.poll_fills(HOURS[3])
    assert [f.client_order_id for f in fills] == ["c-1"]
    assert set(router.positions()) == {"BTC/USD"}
    # the kill switches read the sum: a loss on one venue is a loss of the book
    rm = RiskManager(__import__("hydra_engine.config", fromlist=["RiskConfig"]).RiskConfig())
    assert rm.on_equity(router.account().equity_usd, HOURS[3]) is None
    assert router.capabilities_for("BTC/USD") is other.capabilities
    with pytest.raises(ValueError, match="not configured"):
        VenueRouter({"sim": spot}, {"X": Instrument("X", InstrumentKind.PERP, venue="binance", max_leverage=5,
                                                    initial_margin_rate=0.2, maintenance_margin_rate=0.01,
                                                    funding_interval=timedelta(hours=8))}, default="sim")


# ------------------------------------------------------------------ domain additions for perps
def test_the_domain_types_for_perps_validate_their_fields():
    perp = Instrument("BTCUSDT", InstrumentKind.PERP, venue="perp_sim", max_leverage=20, initial_margin_rate=0.05,
                      maintenance_margin_rate=0.004, funding_interval=timedelta(hours=8))
    assert perp.kind is InstrumentKind.PERP
    with pytest.raises(ValueError, match="only a perp"):
        Instrument("SPY", InstrumentKind.EQUITY, max_leverage=2)
    with pytest.raises(ValueError, match="max_leverage"):
        Instrument("BTCUSDT", InstrumentKind.PERP, max_leverage=0.5)
    with pytest.raises(ValueError, match="leverage"):
        TradeProposal("s", "BTCUSDT", Side.BUY, 100, 95, 110, 0.6, timedelta(hours=1), leverage=0.0)
    assert TradeProposal("s", "BTCUSDT", Side.BUY, 100, 95, 110, 0.6, timedelta(hours=1)).leverage == 1.0
    assert Order("c", "SPY", Side.SELL, Decimal(1), OrderType.MARKET, TimeInForce.DAY, HOURS[0], "s").reduce_only is False
    with pytest.raises(ValueError):
        FundingPayment("BTCUSDT", datetime(2024, 1, 1), Decimal("0.0001"), Decimal(1), Decimal(1), Decimal(0))


# ------------------------------------------------------------------ risk as lists
def test_risk_is_three_lists_of_small_rules():
    assert [r.name for r in ENTRY_RULES] == ["entries_blocked", "exposure_unknown", "max_trades_per_day",
                                             "not_tradable", "not_shortable", "stale_data", "no_equity"]
    assert [m.field for m in SIZE_MODIFIERS] == ["vol_mult", "corr_mult"]
    assert [k.name for k in KILL_SWITCHES] == ["daily_loss", "drawdown", "extreme_vol_regime_break"]


def test_an_added_entry_rule_vetoes_by_its_own_name(tmp_path):
    class NoShortsOnFriday:
        name = "no_fridays"

        def check(self, rm, proposal, asset, portfolio, market):
            return (self.name, "not on a Monday (test)") if portfolio.now.weekday() == 0 else None

    engine, _, _ = build(tmp_path, btc_market(), {HOURS[1]: [buy("BTC/USD", 60_000, 58_800, 62_400)]})
    engine.risk.entry_rules.append(NoShortsOnFriday())
    engine.run_cycle(HOURS[0])
    [decision] = engine.run_cycle(HOURS[1])["decisions"]
    assert decision["rule"] == "no_fridays" and decision["layer"] == "risk"


# ------------------------------------------------------------------ layers never reach up
def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


@pytest.mark.parametrize("module", ["brokers/alpaca.py", "brokers/sim.py", "brokers/capabilities.py", "venues.py"])
def test_venues_do_not_import_the_regime_or_the_engine(module):
    names = _imports(ROOT / "hydra_engine" / module)
    assert not any(n.endswith(("regime", "regime_features", "engine", "risk", "gate")) for n in names), names


def test_the_engine_imports_no_venue():
    names = _imports(ROOT / "hydra_engine" / "engine.py")
    assert not any("brokers" in n or "alpaca" in n or "binance" in n for n in names), names


def test_no_module_in_hydra_engine_is_over_500_lines_but_those_that_must_be():
    # one adapter, the HMM, and the perp venue's order/fill/funding/liquidation state machine (one unit)
    allowed = {"brokers/alpaca.py", "regime.py", "perp/venue.py"}
    long = [str(p.relative_to(ROOT / "hydra_engine")) for p in (ROOT / "hydra_engine").rglob("*.py")
            if len(p.read_text().splitlines()) > 500]
    assert set(long) <= allowed, long


# ------------------------------------------------------------------ persistence optional
def test_a_session_without_store_or_log_gives_the_same_results(tmp_path):
    from hydra_engine.app import build_sim_session, run_session

    from .conftest import make_settings
    results = []
    for persist in (True, False):
        s = make_settings(tmp_path / str(persist), observation_cycles=2)
        session = build_sim_session(s, max_cycles=300, persist=persist)
        summary = run_session(session, max_cycles=300, progress=False)
        assert ("database" in summary) is persist and ("log" in summary) is persist
        results.append(({k: summary[k] for k in ("final_equity_usd", "closed_trades", "orders", "proposals")},
                        session.engine.closed_trades))
    assert results[0] == results[1]
    assert not (tmp_path / "False" / "hydra.db").exists() and not (tmp_path / "False" / "logs").exists()


# ------------------------------------------------------------------ explain shows the gate
def test_explain_shows_the_gate_verdict_of_each_decision(tmp_path, capsys):
    import argparse
    import json
    import shutil

    from hydra_engine.commands import explain as explain_cmd

    from .fixtures.build import SMALL
    log = tmp_path / SMALL.name
    shutil.copy(SMALL, log)
    journal = SMALL.with_name(SMALL.name.replace(".json", ".cycles.jsonl"))
    lines = [json.loads(x) for x in journal.read_text().splitlines() if x.strip()]
    for rec in lines:
        for d in rec.get("decisions", []):
            d["gate"] = ({"state": "ALLOW"} if d.get("approved")
                         else {"state": "RESTRICT", "rule": "news_hold"})
    (tmp_path / journal.name).write_text("".join(json.dumps(r) + "\n" for r in lines))
    parser = argparse.ArgumentParser()
    explain_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["explain", str(log), "--cycle", "2"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "gate: ALLOW" in out and "gate: RESTRICT by rule news_hold" in out


# ------------------------------------------------------------------ events reach plugins through the snapshot
def test_a_plugin_that_declares_an_event_need_sees_those_events_in_a_replay(tmp_path, monkeypatch):
    """The composition root builds the event feeds the plugins' data needs name (here the shipped macro
    calendar) and every snapshot carries the events known at its time -- never one not yet known."""
    from hydra_engine import app
    from hydra_engine.domain import Regime
    from hydra_engine.strategy import DataNeed, Strategy

    from .conftest import make_settings
    seen: list[tuple] = []

    class EventWatcher(Strategy):
        name, interface_version = "event_watcher", 1
        regimes = frozenset(Regime)
        assets = ("SPY",)
        data_needs = (DataNeed("events", "macro_release"), DataNeed("bars", "SPY"))

        def generate_signals(self, ctx):
            releases = ctx.market.events_of("macro_release")
            assert all(e.known_at <= ctx.now for e in releases)
            seen.append((ctx.now, len(releases), releases[-1].subject if releases else None))
            return []

        def propose(self, ctx, combined):
            return []

    monkeypatch.setattr(app, "build_strategies", lambda enabled, params: [EventWatcher()])
    s = make_settings(tmp_path, start="2024-03-01", end="2024-03-20", observation_cycles=0)
    session = app.build_sim_session(s, persist=False)
    app.run_session(session, progress=False)
    assert seen and all(n > 0 for _, n, _ in seen)
    counts = [n for _, n, _ in seen]
    assert counts == sorted(counts) and counts[-1] > counts[0]   # the March CPI/FOMC become known during the span


def test_a_signal_modifier_scales_signals_before_aggregation_and_the_trace_is_in_the_report(tmp_path):
    from hydra_engine.domain import Signal
    from hydra_engine.plugin_kinds import Adjustment, Modified, SignalModifier, scale

    class Halver(SignalModifier):
        name, interface_version = "halver", 1

        def modify(self, signals, ctx):
            return Modified(tuple(scale(s, 0.5) for s in signals),
                            tuple(Adjustment(s.symbol, s.source, 0.5, "test edge SPY->BTC") for s in signals))

    engine, _, _ = build(tmp_path, btc_market(), {})
    strat = engine.strategies[0]
    strat.generate_signals = lambda ctx: [Signal("BTC/USD", 0.8, 0.9, "scripted.test", ctx.now, timedelta(hours=6))]
    engine.modifiers = [Halver()]
    report = engine.run_cycle(HOURS[1])
    assert report["modifiers"] == [{"modifier": "halver", "symbol": "BTC/USD", "source": "scripted.test",
                                    "factor": 0.5, "reason": "test edge SPY->BTC"}]
    assert report["signals"][0]["confidence"] == pytest.approx(0.45)
