"""Closed-trade accounting (Engine._apply_entry_fill / _apply_exit_fill) pinned to the cent: gross P&L on
longs and shorts, both sides' fees, volume-weighted prices over sliced fills, and the R multiple against
the initial stop re-anchored at the real fill. Fills are fed to the real Engine by hand (no market run)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from hydra_engine.domain import Fill, Side, TradeProposal
from hydra_engine.book import PendingPlan

from .test_engine_risk_paths import HandMadeBars, build

D = Decimal
T = datetime(2024, 3, 5, 14, 30, tzinfo=timezone.utc)


def _engine(tmp_path):
    market = HandMadeBars({"SPY": (23_400, [(T, 100.0, 100.0)])})
    engine, _, _ = build(tmp_path, market, {})
    return engine


def _enter(engine, proposal: TradeProposal, fills, contributors=()):
    coid = "S1-scripted-SPY-entry"
    engine.plans[coid] = PendingPlan(proposal, "TRENDING_UP", 0.8, contributors=contributors)
    for i, (qty, price, fee) in enumerate(fills):
        assert engine.apply_fill(Fill(coid, "SPY", proposal.side, D(qty), D(price), D(fee), T, f"e{i}")) is None


def _exit(engine, side: Side, fills, reason="target"):
    coid = "S1-scripted-SPY-exit"
    engine.exit_reasons[coid] = reason
    out = None
    for i, (qty, price, fee) in enumerate(fills):
        out = engine.apply_fill(Fill(coid, "SPY", side, D(qty), D(price), D(fee), T + timedelta(days=1), f"x{i}"))
    return out


def test_a_short_round_trip_books_gross_both_fees_and_r_against_the_initial_stop(tmp_path):
    """Short 10 @ 100 (fee 0.10), stop 102, target 96; the stop trails to 99; covered @ 96 (fee 0.096).
    gross = (96 − 100) × 10 × −1 = 40; fees 0.196; P&L 39.804; risk = |100 − 102| × 10 = 20 → R 1.9902."""
    engine = _engine(tmp_path)
    _enter(engine, TradeProposal("scripted", "SPY", Side.SELL, 100.0, 102.0, 96.0, 0.6, timedelta(days=5)),
           [("10", "100", "0.10")])
    pos = engine.positions["SPY"]
    assert pos.qty == -10 and pos.initial_stop_price == 102.0
    pos.stop_price = 99.0                          # trailed: the R multiple still uses the initial stop
    trade = _exit(engine, Side.BUY, [("10", "96", "0.096")])
    assert trade["side"] == "sell" and D(trade["pnl_usd"]) == D("39.804")
    assert D(trade["fees_usd"]) == D("0.196")
    assert trade["r_multiple"] == 1.9902
    assert "SPY" not in engine.positions


def test_sliced_entry_and_exit_use_volume_weighted_prices_and_every_slices_fee(tmp_path):
    """Long entry 4 @ 100 (fee 0.04) + 6 @ 101 (fee 0.0606) → avg 100.6, entry fees 0.1006; exit 5 @ 105
    (fee 0.0525) + 5 @ 107 (fee 0.0535) → avg 106, exit fees 0.106. gross 54, P&L 53.7934; initial stop 98
    (the plan's, anchored at the first fill at the plan's entry) → risk 26 → R 2.068977."""
    engine = _engine(tmp_path)
    _enter(engine, TradeProposal("scripted", "SPY", Side.BUY, 100.0, 98.0, 110.0, 0.6, timedelta(days=5)),
           [("4", "100", "0.04"), ("6", "101", "0.0606")])
    pos = engine.positions["SPY"]
    assert (pos.qty, pos.avg_entry_price, pos.entry_fees_usd) == (10, D("100.6"), D("0.1006"))
    assert _exit(engine, Side.SELL, [("5", "105", "0.0525")]) is None      # half sold: still managed
    assert engine.positions["SPY"].qty == 5
    trade = _exit(engine, Side.SELL, [("5", "107", "0.0535")])
    assert D(trade["qty"]) == 10 and D(trade["entry_price"]) == D("100.6") and D(trade["exit_price"]) == D(106)
    assert D(trade["fees_usd"]) == D("0.2066")
    assert D(trade["pnl_usd"]) == D("53.7934")
    assert trade["r_multiple"] == 2.068977


def test_the_initial_stop_keeps_the_plans_distance_from_the_real_fill(tmp_path):
    """Plan: entry 100, stop 98 (2 %). Filled @ 101 → initial stop 98.98, risk (101 − 98.98) × 10 = 20.2.
    Sold @ 103.02 with no fees: P&L 20.2 → exactly 1 R (not 20.2 / 30 against the unscaled stop)."""
    engine = _engine(tmp_path)
    _enter(engine, TradeProposal("scripted", "SPY", Side.BUY, 100.0, 98.0, 110.0, 0.6, timedelta(days=5)),
           [("10", "101", "0")])
    assert abs(engine.positions["SPY"].initial_stop_price - 98.98) < 1e-9
    trade = _exit(engine, Side.SELL, [("10", "103.02", "0")])
    assert D(trade["pnl_usd"]) == D("20.2")
    assert trade["r_multiple"] == 1.0


def test_a_trade_whose_fees_eat_its_gross_gain_is_scored_as_a_loss(tmp_path):
    """+$0.10 gross, $0.30 fees: P&L −$0.20. The signal that called it gets a miss, and it counts toward
    the loss streak."""
    engine = _engine(tmp_path)
    _enter(engine, TradeProposal("scripted", "SPY", Side.BUY, 100.0, 98.0, 110.0, 0.6, timedelta(days=5)),
           [("10", "100", "0.15")], contributors=({"source": "sig", "score": 0.7, "weight": 1.0},))
    trade = _exit(engine, Side.SELL, [("10", "100.01", "0.15")])
    assert D(trade["pnl_usd"]) == D("-0.2")
    assert engine.aggregator.outcomes("sig") == (0.0, 1.0)
    assert engine.risk.state.loss_streak == 1


def test_slices_after_a_dropped_position_average_only_what_the_new_position_holds(tmp_path):
    """4 @ 100 booked, then the position is dropped (closed at the broker, --adopt), then 3 @ 200 and
    3 @ 100 fill: the new position is 6 at 150. Weighting by every slice booked (10) gave 170; the plan
    still counts all 10 booked, so it ends with its order. A saved plan keeps both quantities."""
    from hydra_engine.book import plan_from_dict as _plan_from_dict
    from hydra_engine.tradelog import to_jsonable
    engine = _engine(tmp_path)
    proposal = TradeProposal("scripted", "SPY", Side.BUY, 100.0, 95.0, 110.0, 0.6, timedelta(days=5))
    coid = "S1-scripted-SPY-entry"
    engine.plans[coid] = plan = PendingPlan(proposal, "TRENDING_UP", 0.8)
    fill = lambda i, qty, price: Fill(coid, "SPY", Side.BUY, D(qty), D(price), D(0), T, f"e{i}")  # noqa: E731
    engine.apply_fill(fill(0, "4", "100"))
    del engine.positions["SPY"]
    engine.apply_fill(fill(1, "3", "200"))
    engine.apply_fill(fill(2, "3", "100"))
    pos = engine.positions["SPY"]
    assert (pos.qty, pos.avg_entry_price) == (D(6), D(150))
    assert (plan.booked_qty, plan.position_qty) == (D(10), D(6))
    again = _plan_from_dict(to_jsonable(plan))
    assert (again.booked_qty, again.position_qty) == (D(10), D(6))
    old = {k: v for k, v in to_jsonable(plan).items() if k != "position_qty"}   # saved before the field existed
    assert _plan_from_dict(old).position_qty == D(10)
