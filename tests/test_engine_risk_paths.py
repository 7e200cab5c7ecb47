"""The risk layer as the engine drives it: a kill switch cancels working entries, a loss cooldown starts
when the engine learns of the losing fill, and a held symbol without a price refuses entries instead of
crashing the cycle. Real Engine, SimulatedBroker, RiskManager and PositionManager; a scripted plugin, a
fixed regime reading and hand-made bars (each test needs one exact market path)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import numpy as np

from hydra_engine.aggregator import SignalAggregator
from hydra_engine.brokers.capabilities import DEFAULT_ASSET_SPECS
from hydra_engine.brokers.sim import SimulatedBroker
from hydra_engine.config import Settings
from hydra_engine.domain import Regime, RegimeReading, Side, TradeProposal
from hydra_engine.engine import Engine
from hydra_engine.ports import BarSeries, MarketSnapshot
from hydra_engine.positions import PositionManager
from hydra_engine.risk import RiskManager
from hydra_engine.strategy import Strategy
from hydra_engine.weights import StrategyWeights

UTC = timezone.utc
SESSION_OPEN = [datetime(2024, 3, d, 14, 30, tzinfo=UTC) for d in (4, 5, 6, 7, 8, 11, 12, 13)]
DAY_S = 23_400                                   # a regular session: 14:30 -> 21:00 UTC


class HandMadeBars:
    """``symbol -> (interval_s, [(open time, open, close)])``; a bar is seen once it has closed."""

    def __init__(self, series: dict[str, tuple[int, list[tuple[datetime, float, float]]]]):
        self.series = series
        self.missing: set[str] = set()

    def _closed(self, symbol, now):
        interval, rows = self.series[symbol]
        return interval, [r for r in rows if r[0].timestamp() + interval <= now.timestamp()]

    def snapshot(self, now):
        bars = {}
        for symbol in self.series:
            interval, rows = self._closed(symbol, now)
            if rows and symbol not in self.missing:
                ts, o, c = (np.array([r[i] if i else r[0].timestamp() for r in rows], dtype=float) for i in range(3))
                bars[symbol] = BarSeries(symbol, interval, ts, o, np.maximum(o, c), np.minimum(o, c), c, np.ones_like(c))
        return MarketSnapshot(now, bars)

    def next_bar_open(self, symbol, after, now):
        return next(((t, o) for t, o, _ in self._closed(symbol, now)[1] if t >= after), None)


class Scripted(Strategy):
    name = "scripted"
    regimes = frozenset(Regime) - {Regime.UNKNOWN}
    assets = ("SPY", "BTC/USD", "GLD")
    data_needs = ()

    def __init__(self, script: dict):
        self.script = script

    def generate_signals(self, ctx):
        return []

    def propose(self, ctx, combined):
        return list(self.script.pop(ctx.now, []))


class FixedRegime:
    name = "fixed"

    def __init__(self):
        self.reading: RegimeReading | None = None

    def detect(self, market):
        return self.reading or RegimeReading(Regime.TRENDING_UP, 0.8, "fixed", market.now, {"vol_percentile": 0.5})


def build(tmp_path, market, script, **risk):
    settings = Settings(engine={"observation_cycles": 0, "log_dir": str(tmp_path), "regime_refresh_cycles": 1},
                        universe={"symbols": ["SPY", "BTC/USD", "GLD"], "data_only": []},
                        storage={"url": f"sqlite:///{tmp_path}/h.db"}, risk=risk)
    broker = SimulatedBroker(market, DEFAULT_ASSET_SPECS, starting_cash_usd=Decimal(100_000))
    regime = FixedRegime()
    engine = Engine(settings, market=market, broker=broker, strategies=[Scripted(script)], regime_detector=regime,
                    aggregator=SignalAggregator(), weights=StrategyWeights(["scripted"]),
                    risk=RiskManager(settings.risk), position_manager=PositionManager(), session_id="t", mode="sim")
    return engine, broker, regime


def buy(symbol, entry, stop, target, days=5):
    return TradeProposal("scripted", symbol, Side.BUY, entry, stop, target, 0.6, timedelta(days=days))


def test_an_automatic_kill_cancels_a_working_entry_before_it_fills(tmp_path):
    """An SPY entry is queued for Monday's open on Friday night; a regime break with extreme volatility
    kills on Saturday. The queued entry must not open a position the kill then has to flatten."""
    market = HandMadeBars({"SPY": (DAY_S, [(t, p, p + 0.5) for t, p in zip(SESSION_OPEN, range(510, 502, -1))])})
    friday_night = datetime(2024, 3, 8, 22, tzinfo=UTC)
    engine, broker, regime = build(tmp_path, market, {friday_night: [buy("SPY", 510.5, 500.0, 530.0)]})
    notes, t = [], friday_night
    while t <= datetime(2024, 3, 13, tzinfo=UTC):
        if t == datetime(2024, 3, 9, tzinfo=UTC):
            regime.reading = RegimeReading(Regime.CRASH, 0.9, "fixed", t, {"vol_percentile": 0.99})
        report = engine.run_cycle(t)
        notes += report["notes"]
        t += timedelta(hours=1)
    assert engine.risk.kill_requested() is not None
    assert any("kill switch: working entry" in n and "canceled" in n for n in notes)
    assert broker.open_orders() == [] and engine.plans == {}
    assert engine.closed_trades == [] and broker.fees_paid == 0 and engine.positions == {}


def test_the_loss_cooldown_starts_when_the_loss_is_known_not_at_the_fill_bars_open(tmp_path):
    """A simulated fill is stamped at its daily bar's open (14:30) and known at its close (21:00): a
    four-hour cooldown counted from the stamp would be over before the engine saw the loss."""
    hours = [datetime(2024, 3, 1, tzinfo=UTC) + timedelta(hours=h) for h in range(24 * 8)]
    spy = [(SESSION_OPEN[0], 510, 510), (SESSION_OPEN[1], 510, 490), (SESSION_OPEN[2], 489, 489),
           (SESSION_OPEN[3], 489, 489)]
    market = HandMadeBars({"SPY": (DAY_S, spy), "BTC/USD": (3600, [(t, 60_000.0, 60_000.0) for t in hours])})
    known = datetime(2024, 3, 6, 21, tzinfo=UTC)
    engine, _, _ = build(tmp_path, market, {datetime(2024, 3, 4, 21, tzinfo=UTC): [buy("SPY", 510, 500, 530)],
                                            known: [buy("BTC/USD", 60_000, 58_800, 62_400, days=2)]},
                         max_consecutive_losses=1)
    for t in (datetime(2024, 3, 4, 21, tzinfo=UTC), datetime(2024, 3, 5, 21, tzinfo=UTC)):
        engine.run_cycle(t)
    report = engine.run_cycle(known)
    [trade] = engine.closed_trades
    assert Decimal(trade["pnl_usd"]) < 0 and trade["exit_time"] == "2024-03-06T14:30:00Z"
    assert engine.risk.state.cooldown_until == known + timedelta(hours=4)
    [decision] = report["decisions"]
    assert decision["symbol"] == "BTC/USD" and not decision["approved"] and decision["rule"] == "entries_blocked"


def test_a_held_symbol_without_a_price_refuses_entries_and_the_cycle_goes_on(tmp_path):
    """GLD is held and its bars are missing from one snapshot (a data outage): the book's exposure cannot
    be measured, so the SPY entry is refused by name -- before, the NaN mark crashed the cycle."""
    market = HandMadeBars({"SPY": (DAY_S, [(t, 510.0, 510.5) for t in SESSION_OPEN]),
                           "GLD": (DAY_S, [(t, 190.0, 190.2) for t in SESSION_OPEN])})
    outage = datetime(2024, 3, 7, 22, tzinfo=UTC)
    engine, _, _ = build(tmp_path, market, {datetime(2024, 3, 5, 22, tzinfo=UTC): [buy("GLD", 190.2, 186.0, 198.0)],
                                            outage: [buy("SPY", 510.5, 500.0, 530.0)]})
    engine.run_cycle(datetime(2024, 3, 5, 22, tzinfo=UTC))
    engine.run_cycle(datetime(2024, 3, 6, 22, tzinfo=UTC))
    assert "GLD" in engine.positions
    market.missing.add("GLD")
    report = engine.run_cycle(outage)
    [decision] = report["decisions"]
    assert not decision["approved"] and decision["rule"] == "exposure_unknown" and "GLD" in decision["reason"]
    assert report["orders"] == [] and "GLD" in engine.positions


def test_a_restored_stop_is_not_counted_as_a_pending_entry(tmp_path, monkeypatch):
    """After a restart the Alpaca adapter labels every working order it did not send itself "entry". A
    broker trailing stop the saved state knows (exit reasons) reduces exposure; counted as an entry it
    would take room from new entries."""
    from hydra_engine.domain import Order, OrderType, TimeInForce
    market = HandMadeBars({"SPY": (DAY_S, [(t, 510.0, 510.5) for t in SESSION_OPEN])})
    engine, broker, _ = build(tmp_path, market, {})
    now = datetime(2024, 3, 6, 22, tzinfo=UTC)
    stop = Order("t-scripted-SPY-000002", "SPY", Side.SELL, Decimal(10), OrderType.TRAILING_STOP, TimeInForce.GTC,
                 now, "scripted", purpose="entry", trail_percent=Decimal(3))
    entry = Order("t-scripted-SPY-000003", "SPY", Side.BUY, Decimal(2), OrderType.MARKET, TimeInForce.DAY,
                  now, "scripted", purpose="entry")
    monkeypatch.setattr(broker, "open_orders", lambda: [stop, entry])
    engine.exit_reasons[stop.client_order_id] = "trailing_stop"
    view = engine._portfolio_view(market.snapshot(now), now)
    assert view.pending_entries_usd == {"SPY": Decimal("1021.0")} and view.pending_entry_count == 1


def test_proposals_are_ranked_with_the_weights_of_trades_closed_by_this_cycles_fills(tmp_path):
    """Strategy a's stop-out is booked by the fill poll of the cycle in which b proposes: b's proposal is
    ranked (confidence x reward:risk x weight) with the weights that already know a's loss."""
    class A(Scripted):
        name = "a"

    class B(Scripted):
        name = "b"

    spy = [(SESSION_OPEN[0], 510, 510), (SESSION_OPEN[1], 510, 505), (SESSION_OPEN[2], 505, 495),
           (SESSION_OPEN[3], 494, 494)]
    market = HandMadeBars({"SPY": (DAY_S, spy), "GLD": (DAY_S, [(t, 190.0, 190.2) for t in SESSION_OPEN])})
    booked = datetime(2024, 3, 7, 22, tzinfo=UTC)
    strategies = [A({datetime(2024, 3, 4, 22, tzinfo=UTC): [
                      TradeProposal("a", "SPY", Side.BUY, 510, 500, 530, 0.6, timedelta(days=5))]}),
                  B({booked: [TradeProposal("b", "GLD", Side.BUY, 190.2, 186.0, 198.0, 0.6, timedelta(days=5))]})]
    settings = Settings(engine={"observation_cycles": 0, "log_dir": str(tmp_path), "regime_refresh_cycles": 1},
                        universe={"symbols": ["SPY", "GLD"], "data_only": []},
                        storage={"url": f"sqlite:///{tmp_path}/h.db"})
    weights = StrategyWeights(["a", "b"])
    engine = Engine(settings, market=market, broker=SimulatedBroker(market, DEFAULT_ASSET_SPECS,
                                                                   starting_cash_usd=Decimal(100_000)),
                    strategies=strategies, regime_detector=FixedRegime(), aggregator=SignalAggregator(),
                    weights=weights, risk=RiskManager(settings.risk), position_manager=PositionManager(),
                    session_id="t", mode="sim")
    for day in (4, 5, 6):
        engine.run_cycle(datetime(2024, 3, day, 22, tzinfo=UTC))
    report = engine.run_cycle(booked)
    [trade] = engine.closed_trades
    assert trade["strategy"] == "a" and trade["exit_reason"] == "stop" and Decimal(trade["pnl_usd"]) < 0
    [proposal] = report["proposals"]
    assert proposal["strategy"] == "b" and proposal["weight"] == round(weights.weight("b"), 6) > 0.5


class _Refitter:
    """Refits once, at the given cycle time, to a model that names the same market differently."""

    def __init__(self, at: datetime, fresh):
        self.at, self.fresh = at, fresh

    def due(self, detector, now):
        return "scheduled" if now == self.at else None

    def refit(self, detector, market, now, why):
        return self.fresh, {"at": now.isoformat(), "why": why, "ok": True, "trained_from": "x", "trained_to": "y",
                            "days": 1, "seconds": 0.0}


def test_a_refit_that_renames_the_market_is_not_a_regime_break(tmp_path):
    """The same bars, a new model: TRENDING_UP becomes CRASH with volatility at the 99th percentile. That
    is a relabel (no new data), and it must not trip the regime-break kill switch, which flattens."""
    market = HandMadeBars({"SPY": (DAY_S, [(t, 510.0, 510.5) for t in SESSION_OPEN])})
    engine, _, regime = build(tmp_path, market, {})
    regime.reading = RegimeReading(Regime.TRENDING_UP, 0.9, "fixed", SESSION_OPEN[0], {"vol_percentile": 0.99})
    renamed = FixedRegime()
    renamed.reading = RegimeReading(Regime.CRASH, 0.9, "fixed", SESSION_OPEN[0], {"vol_percentile": 0.99})
    refit_at = datetime(2024, 3, 6, 22, tzinfo=UTC)
    engine.regime_refitter = _Refitter(refit_at, renamed)
    for day in (4, 5, 6):
        report = engine.run_cycle(datetime(2024, 3, day, 22, tzinfo=UTC))
    assert report["regime"]["regime"] == "CRASH" and report["regime_refit"]["ok"]
    assert engine.risk.kill_requested() is None and report["mode"] != "killed"
    renamed.reading = RegimeReading(Regime.HIGH_VOL, 0.9, "fixed", SESSION_OPEN[0], {"vol_percentile": 0.99})
    engine.run_cycle(datetime(2024, 3, 7, 22, tzinfo=UTC))   # a real change under the same model still breaks
    assert engine.risk.kill_requested().startswith("extreme_vol_regime_break")


def test_a_cycle_committed_alone_carries_the_state_even_without_orders(tmp_path):
    """Paper commits every cycle: peak equity and the trailing stops' high-water marks move in quiet
    cycles too, and a hard kill after such cycles must not restore older ones."""
    from hydra_engine.store import Store
    market = HandMadeBars({"SPY": (DAY_S, [(t, 510.0, 510.5) for t in SESSION_OPEN])})
    engine, _, _ = build(tmp_path, market, {})
    engine.store, engine.store_batch = Store(f"sqlite:///{tmp_path}/paper.db"), 1
    for day in (4, 5):
        report = engine.run_cycle(datetime(2024, 3, day, 22, tzinfo=UTC))
        assert not report["orders"] and not report["fills"]
    assert engine.store.load_state(engine.state_key)["engine"]["cycle"] == 2


def test_a_proposals_atr_trail_reaches_the_position_and_exits_it(tmp_path):
    """A plugin asks for a 3-ATR trail: the position carries it, the engine trails it (no broker order
    type holds an ATR trail) and the trade closes as a trailing stop, above the fixed stop."""
    start = datetime(2024, 3, 1, tzinfo=UTC)
    path = [60_000.0] * 30 + [60_000.0 + 200 * k for k in range(1, 11)] + [61_200.0, 61_000.0, 60_800.0]
    rows = [(start + timedelta(hours=h), p, p) for h, p in enumerate(path)]
    market = HandMadeBars({"BTC/USD": (3600, rows)})
    entry_at = start + timedelta(hours=30)
    proposal = TradeProposal("scripted", "BTC/USD", Side.BUY, 60_000.0, 58_800.0, 66_000.0, 0.6, timedelta(days=2),
                             trailing_atr_mult=3.0)
    engine, _, _ = build(tmp_path, market, {entry_at: [proposal]})
    stops, t = [], entry_at
    while t <= start + timedelta(hours=len(path)):
        engine.run_cycle(t)
        if "BTC/USD" in engine.positions:
            pos = engine.positions["BTC/USD"]
            assert pos.trailing_atr_mult == 3.0
            stops.append(pos.stop_price)
        t += timedelta(hours=1)
    assert stops == sorted(stops) and stops[-1] > 58_800.0            # it ratcheted up, never down
    [trade] = engine.closed_trades
    assert trade["exit_reason"] == "trailing_stop" and float(trade["exit_price"]) > 58_800.0
    assert engine.native_stops == set()


def test_refusals_while_observing_or_blocked_are_counted_per_rule(tmp_path):
    """The run summary's vetoes per rule (what a review shows when the journal is missing) count the
    proposals refused because the engine was still observing or entries were blocked, like every other
    refusal: proposals = approved + the vetoes."""
    hours = [datetime(2024, 3, 4, tzinfo=UTC) + timedelta(hours=h) for h in range(6)]
    market = HandMadeBars({"BTC/USD": (3600, [(t, 60_000.0, 60_000.0) for t in hours])})
    script = {t: [buy("BTC/USD", 60_000, 58_800, 62_400)] for t in hours[1:4]}
    engine, _, _ = build(tmp_path, market, script)
    engine.settings = engine.settings.model_copy(update={"engine": engine.settings.engine.model_copy(
        update={"observation_cycles": 2})})
    engine.run_cycle(hours[1])                      # cycle 1: observing
    engine.halted = "reconciliation mismatch (test)"
    engine.run_cycle(hours[2])                      # cycle 2: observing
    engine.settings = engine.settings.model_copy(update={"engine": engine.settings.engine.model_copy(
        update={"observation_cycles": 0})})
    engine.run_cycle(hours[3])                      # cycle 3: blocked
    summary = engine.summary()
    assert summary["vetoes_by_rule"] == {"observe": 2, "entries_blocked": 1}
    assert summary["proposals"] == summary["approved"] + sum(summary["vetoes_by_rule"].values()) == 3


def test_an_out_of_reach_target_does_not_outrank_a_confident_proposal(tmp_path):
    """sma_crossover marks "no level" with a stop and target a million times away (reward:risk 1e6):
    uncapped, it outranked every other proposal whatever its confidence. Ranked at most 10, the
    confident 2:1 proposal comes first."""
    hours = [datetime(2024, 3, 4, tzinfo=UTC) + timedelta(hours=h) for h in range(3)]
    market = HandMadeBars({"BTC/USD": (3600, [(t, 60_000.0, 60_000.0) for t in hours]),
                           "GLD": (3600, [(t, 190.0, 190.0) for t in hours])})
    far = TradeProposal("scripted", "GLD", Side.BUY, 190.0, 190.0 / 1e6, 190.0 * 1e6, 0.01, timedelta(days=5))
    confident = buy("BTC/USD", 60_000, 58_800, 62_400)                   # 2:1 at confidence 0.6
    engine, _, _ = build(tmp_path, market, {hours[1]: [far, confident]})
    report = engine.run_cycle(hours[1])
    assert [p["symbol"] for p in report["proposals"]] == ["BTC/USD", "GLD"]
    assert report["proposals"][1]["reward_risk"] == 10.0 and report["proposals"][1]["expected_value"] == 0.1


class _Voices(Scripted):
    """Scripted proposals plus two signals on BTC/USD: a bullish source and a neutral (score 0) one."""

    def generate_signals(self, ctx):
        from hydra_engine.domain import Signal
        return [Signal("BTC/USD", 0.8, 0.9, "bull", ctx.now, timedelta(hours=4)),
                Signal("BTC/USD", 0.0, 0.9, "neutral", ctx.now, timedelta(hours=4))]


def test_only_sources_that_pointed_somewhere_learn_from_the_trade(tmp_path):
    """A long is stopped out: the bullish source missed; the neutral source predicted nothing and must
    not be counted as having bet against the trade (it used to earn a hit)."""
    hours = [datetime(2024, 3, 4, tzinfo=UTC) + timedelta(hours=h) for h in range(8)]
    path = [60_000.0, 60_000.0, 60_000.0, 58_000.0, 57_500.0, 57_500.0, 57_500.0, 57_500.0]
    market = HandMadeBars({"BTC/USD": (3600, [(t, p, p) for t, p in zip(hours, path)])})
    engine, _, _ = build(tmp_path, market, {})
    engine.strategies = [_Voices({hours[1]: [buy("BTC/USD", 60_000, 58_800, 62_400)]})]
    for t in hours[1:]:
        engine.run_cycle(t)
    [trade] = engine.closed_trades
    assert trade["exit_reason"] == "stop"
    assert engine.aggregator.outcomes("bull") == (0.0, 1.0)
    assert engine.aggregator.outcomes("neutral") == (0.0, 0.0)


def test_no_exit_is_sent_when_the_broker_is_already_flat(tmp_path):
    """An earlier exit filled after this cycle's fill poll (its fill is booked next cycle): the broker
    holds nothing, so a second exit would sell what is not there -- for a shortable stock, open a
    short. The engine notes it and sends nothing."""
    spy = [(SESSION_OPEN[0], 510, 510), (SESSION_OPEN[1], 510, 510), (SESSION_OPEN[2], 505, 490),
           (SESSION_OPEN[3], 489, 489)]
    market = HandMadeBars({"SPY": (DAY_S, spy)})
    closes = [t.replace(hour=21, minute=0) for t in SESSION_OPEN[:3]]
    engine, broker, _ = build(tmp_path, market, {closes[0]: [buy("SPY", 510, 500, 530)]})
    engine.run_cycle(closes[0])
    engine.run_cycle(closes[1])
    assert "SPY" in engine.positions and broker.positions()["SPY"].qty > 0
    del broker._positions["SPY"]                # sold by an exit whose fill this process has not seen yet
    broker._version += 1
    report = engine.run_cycle(closes[2])         # the close (490) is through the stop (500)
    assert report["orders"] == [] and broker.open_orders() == []
    assert any("not sent: the broker holds no position" in n for n in report["notes"]), report["notes"]
    assert "SPY" not in broker.positions()       # no short opened


def test_a_second_proposal_is_vetoed_by_the_engines_own_plans_when_the_brokers_lists_lag(tmp_path):
    """The broker has accepted the first entry but does not list it yet (nor a position): the engine's own
    entry plans still refuse a second entry on the symbol in the same cycle -- one order, not two."""
    hours = [datetime(2024, 3, 4, tzinfo=UTC) + timedelta(hours=h) for h in range(3)]
    market = HandMadeBars({"BTC/USD": (3600, [(t, 60_000.0, 60_000.0) for t in hours])})
    engine, broker, _ = build(tmp_path, market, {hours[1]: [buy("BTC/USD", 60_000, 58_800, 62_400),
                                                            buy("BTC/USD", 60_000, 58_500, 62_000)]})
    broker.open_orders = lambda: []                 # lagging lists: the accepted entry is not shown yet
    broker.positions = lambda: {}
    report = engine.run_cycle(hours[1])
    assert [d["approved"] for d in report["decisions"]] == [True, False]
    assert report["decisions"][1]["rule"] == "one_position_per_symbol"
    assert [o["purpose"] for o in report["orders"]] == ["entry"]
