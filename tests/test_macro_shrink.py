"""Issue #18, pre-event exposure shrink: with ``shrink_before_release = true`` the macro scalper's window rule
closes what any strategy holds on the event's assets before a real release (the FOMC of 2022-11-02, 14:00
New York, from the shipped macro calendar), through the entry gate's ``flatten``; off, nothing is closed."""
from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from hydra_engine.app import build_sim_session, run_session
from hydra_engine.data.event_feeds import macro_calendar_feed
from hydra_engine.domain import UTC, Position, Side
from hydra_engine.gate import EntryGate, GateContext, GateState
from hydra_engine.ports import BrokerPosition, MarketSnapshot
from strategies.macro_events import MacroEventScalper

from .conftest import make_settings

FOMC = datetime(2022, 11, 2, 18, 0, tzinfo=UTC)          # 14:00 New York (EDT)


def _gate(shared, shrink):
    rule = MacroEventScalper({"shrink_before_release": shrink}).gate_rules()[0]
    return rule, EntryGate([], [rule]), macro_calendar_feed(shared)


def test_the_rule_blocks_held_symbols_only_before_the_release_and_only_when_asked_to(shared_data):
    rule, gate, feed = _gate(shared_data, True)
    assert rule.can_block

    def ctx(now):
        return GateContext(now, MarketSnapshot(now, events=feed.events(now)), None)

    before = FOMC - timedelta(hours=1)
    out = gate.flatten(ctx(before), ["SPY", "MSFT", "GLD"])
    assert set(out) == {"SPY", "GLD"} and out["SPY"].state is GateState.BLOCK
    assert "FOMC release 2022-11-02 14:00" in out["SPY"].reason and "shrink" in out["SPY"].reason
    # an entry in the window is still only restricted (the reason a person reads is the window's)
    entry = gate.for_symbol(ctx(before), "SPY", Side.BUY).verdict
    assert entry.state is GateState.RESTRICT and "restricted until 14:15" in entry.reason
    assert gate.flatten(ctx(FOMC - timedelta(hours=2, minutes=1)), ["SPY"]) == {}    # window not begun
    assert gate.flatten(ctx(FOMC + timedelta(minutes=5)), ["SPY"]) == {}              # released: too late
    off_rule, off_gate, _ = _gate(shared_data, False)
    assert not off_rule.can_block and off_gate.flatten(ctx(before), ["SPY"]) == {}


def _session(tmp_path, shared, shrink):
    settings = make_settings(tmp_path, data_dir=shared, start="2022-11-01", end="2022-11-03", symbols=("SPY",),
                             data_only=(), observation_cycles=0, engine={"regime_detector": "trend_vol_rule"},
                             strategies={"enabled": ["macro_events"],
                                         "params": {"macro_events": {"symbols": ["SPY"], "shrink_before_release": shrink,
                                                                     "move_threshold": 1000.0}}})
    session = build_sim_session(settings, persist=False)
    engine = session.engine
    # another strategy's SPY long, opened before the span (held 20 shares at 380)
    qty, price = Decimal(20), Decimal(380)
    engine.broker._positions["SPY"] = BrokerPosition("SPY", qty, price)
    engine.broker.cash -= qty * price
    engine.book.positions["SPY"] = Position("SPY", qty, price, "metals_margin", datetime(2022, 10, 25, tzinfo=UTC),
                                            stop_price=300.0, target_price=500.0, initial_stop_price=300.0)
    run_session(session, progress=False)
    return engine


@pytest.mark.parametrize("shrink", [True, False])
def test_a_real_fomc_closes_another_strategys_spy_before_the_release_only_when_shrink_is_on(tmp_path, shared_data, shrink):
    engine = _session(tmp_path, shared_data, shrink)
    exits = [o for o in engine.broker._orders.values() if o.symbol == "SPY" and o.purpose == "exit"]
    if not shrink:
        assert not exits and "SPY" in engine.book.positions
        return
    assert len(exits) == 1
    o = exits[0]
    # decided on the window's first tick: 12:00 New York, 2 h before the release
    assert o.created_at == FOMC - timedelta(hours=2)
    trade = next(t for t in engine.closed_trades if t["symbol"] == "SPY")
    assert trade["strategy"] == "metals_margin" and "macro_event_window" in trade["exit_reason"]
    assert trade["exit_time"] < FOMC.isoformat().replace("+00:00", "Z")     # filled before the release
    assert "SPY" not in engine.book.positions
