"""Event-horizon replay (issue #24 item 1, hydra_engine/horizon.py): skipping quiet ticks changes nothing.

Property tests run random data and configurations both ways -- tick by tick and with skipping -- through
the real engine core (replay data, simulated broker with its fill model, the sma_crossover plugin or a
variant with close stops, targets, percent trails and time limits) with a session log and a SQLite store
attached, and require identical orders, fills, closed trades, equity, high-water marks, run statistics,
the journal after ``load_session`` expands its span records, the document's cycle summaries and the
store's rows. Seeded and bounded (hypothesis ``derandomize``), a few seconds.
"""
from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from sqlmodel import Session as DbSession, select

from hydra_engine import horizon
from hydra_engine.aggregator import SignalAggregator
from hydra_engine.brokers.capabilities import crypto_spec
from hydra_engine.brokers.sim import SimulatedBroker
from hydra_engine.clock import SimulatedClock
from hydra_engine.config import Settings
from hydra_engine.data.bars import BarFileMarketData
from hydra_engine.domain import UTC, Regime, RegimeReading, Side, TradeProposal
from hydra_engine.engine import Engine
from hydra_engine.positions import PositionManager
from hydra_engine.config import RiskConfig
from hydra_engine.risk import RiskManager
from hydra_engine.store import CycleRow, FillRow, OrderRow, Store, TradeRow
from hydra_engine.tradelog import SessionLog, load_session, to_jsonable
from hydra_engine.weights import StrategyWeights
from strategies.sma_crossover import SmaCrossover

START = datetime(2024, 3, 1, tzinfo=UTC)


class _Fixed:
    """A fixed regime that promises its label (as the benchmark's FixedRegime)."""
    name = "fixed_regime"

    def detect(self, market):
        return RegimeReading(Regime.TRENDING_UP, 1.0, self.name, market.now, {"why": "test"})

    def horizon_regime_until(self, market):
        return horizon.FAR


class _Stateless(_Fixed):
    horizon_stateless = True


class _NoPromise(_Fixed):
    """The same readings without a promise: spans must stop before every scheduled refresh."""
    horizon_regime_until = None


class _InertRisk:
    """All-in per symbol sleeve, never blocks (bench/hydra_peer.AllInSleeveRisk without the import)."""
    horizon_inert = True

    def __init__(self, symbols):
        self.sleeves = {s: Decimal(10000) for s in symbols}

    def on_equity(self, equity_usd, now): return None
    def on_market(self, *a, **k): return None
    def blocked(self, now): return None
    def entries_blocked(self, now): return None
    def kill_requested(self): return None
    def on_entry_filled(self, now): pass
    def on_trade_closed(self, trade, now): pass
    def binding_counts(self): return {}
    def to_state(self): return {"sleeves": {k: str(v) for k, v in self.sleeves.items()}}
    def load_state(self, state): pass

    def evaluate(self, p, asset, view, market=None):
        from hydra_engine.domain import RiskDecision
        price = Decimal(str(p.entry_price))
        qty = asset.round_qty(self.sleeves[p.symbol] / (price * Decimal("1.002")))
        return RiskDecision(p, qty > 0, qty=qty, notional_usd=qty * price, rule="sleeve", reason="test")


class _StopsSma(SmaCrossover):
    """sma_crossover with close protective exits (long and short), so stops, targets, percent trails and
    time limits fire inside what would otherwise be quiet spans."""
    levels = (0.01, 0.02, None, 30.0, False)   # stop %, target %, trail %, max holding minutes, shorts

    def propose(self, ctx, combined):
        out = []
        stop_f, target_f, trail, minutes, shorts = self.levels
        for item in super().propose(ctx, combined):
            if isinstance(item, TradeProposal):
                p = item.entry_price
                item = TradeProposal(strategy=item.strategy, symbol=item.symbol, side=Side.BUY, entry_price=p,
                                     stop_price=p * (1 - stop_f), target_price=p * (1 + target_f),
                                     confidence=item.confidence, expected_holding=timedelta(minutes=minutes),
                                     trailing_stop_pct=trail)
            out.append(item)
        if shorts:   # a fast-below-slow cross while flat: short it
            for symbol, view in combined.items():
                cross = next((c["score"] for c in view.contributors if c["source"] == "sma_cross"), 0.0)
                if cross < 0 and not ctx.held.get(symbol):
                    p = ctx.market.price(symbol)
                    out.append(TradeProposal(strategy=self.name, symbol=symbol, side=Side.SELL, entry_price=p,
                                             stop_price=p * (1 + stop_f), target_price=p * (1 - target_f),
                                             confidence=1.0, expected_holding=timedelta(minutes=minutes),
                                             trailing_stop_pct=trail))
        return out


def _frames(seed: int, n: int, symbols: int, drop: float, vol: float) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    out = {}
    for k in range(symbols):
        ret = rng.normal(0, vol, n)
        close = 100 * np.exp(np.cumsum(ret))
        open_ = np.concatenate([[100.0], close[:-1]])
        wig = np.abs(rng.normal(0, vol / 2, n)) * close
        idx = pd.date_range(START, periods=n, freq="1min", tz="UTC")
        f = pd.DataFrame({"open": open_, "high": np.maximum(open_, close) + wig,
                          "low": np.minimum(open_, close) - wig, "close": close,
                          "volume": np.full(n, 1.0)}, index=idx)
        if drop and k > 0:   # other symbols miss some bars: several bar clocks, stale moments
            f = f[rng.random(n) > drop]
        out[f"S{k}"] = f
    return out


def _build(frames, *, fast, slow, refresh, observe, levels, detector, tmp: Path | None, tag: str,
           short_allowed=False, risk: dict | None = None, fill_model: str = "next_open",
           truth: dict | None = None):
    symbols = list(frames)
    settings = Settings(engine={"observation_cycles": observe, "regime_refresh_cycles": refresh, "history_bars": 200},
                        **({"truth": truth} if truth else {}),
                        universe={"symbols": symbols, "data_only": []},
                        strategies={"enabled": ["sma_crossover"],
                                    "params": {"sma_crossover": {"symbols": symbols, "fast": fast, "slow": slow}}},
                        broker={"starting_cash_usd": 10000.0 * len(symbols), "fee_bps": 10.0, "slippage_bps": 0.0},
                        data={"start": None, "end": None})
    market = BarFileMarketData(frames, interval=timedelta(minutes=1), history_bars=200)
    assets = {s: crypto_spec(s, min_order_size=Decimal(0), qty_increment=Decimal("1e-8"),
                             price_increment=Decimal("0.01")) for s in symbols}
    broker = SimulatedBroker(market, assets, starting_cash_usd=Decimal(10000 * len(symbols)), fee_bps=10.0,
                             slippage_bps=0.0, fill_model=fill_model)
    if levels is None:
        strat = SmaCrossover({"symbols": symbols, "fast": fast, "slow": slow})
    else:
        strat = _StopsSma({"symbols": symbols, "fast": fast, "slow": slow})
        strat.levels = levels
    log = store = None
    if tmp is not None:
        log = SessionLog(tmp / tag, START, {"session_id": "h", "mode": "backtest"}, snapshot_every=50)
        log.fsync_every = 10_000
        log.write_snapshot = lambda: None   # the document is written once, at close (pure-Python json: slow)
        store = Store(f"sqlite:///{tmp / tag / 'h.db'}")
    engine = Engine(settings, market=market, broker=broker, strategies=[strat], regime_detector=detector,
                    aggregator=SignalAggregator(), weights=StrategyWeights([strat.name]), risk=_InertRisk(symbols) if risk is None else RiskManager(RiskConfig(**risk)),
                    position_manager=PositionManager(), session_id="h", mode="backtest", session_log=log,
                    store=store, store_batch=25)
    return engine, SimulatedClock(market.timeline())


def _outcome(engine, tmp: Path | None, tag: str) -> dict:
    out = {
        "cycle": engine.cycle,
        "orders": [to_jsonable(o) for o in engine.broker._orders.values()],
        "trades": engine.closed_trades,
        "equity": str(engine.broker.account().equity_usd),
        "cash": str(engine.broker.account().cash_usd),
        "positions": {s: (str(p.qty), p.high_water_mark, p.stop_price) for s, p in engine.positions.items()},
        "stats": to_jsonable(engine.stats),
        "summary": engine.summary(),
        "last_report": engine.last_report,
        "regime": to_jsonable(engine.regime),
    }
    if tmp is not None:
        del engine.session_log.write_snapshot
        engine.session_log.close(START, out["summary"])
        engine.store.flush()
        doc = load_session(engine.session_log.path)
        out["journal"] = doc["cycle_details"]
        out["doc"] = {k: doc[k] for k in ("orders", "fills", "trades", "cycles")}
        with DbSession(engine.store.engine) as s:
            out["store"] = {cls.__name__: [{k: v for k, v in r.model_dump().items() if k != "id"}
                                           for r in s.exec(select(cls)).all()]
                            for cls in (CycleRow, OrderRow, FillRow, TradeRow)}
        out["journal_lines"] = len(engine.session_log.journal_path.read_text().splitlines())
    return out


def _both(tmp: Path | None, frames, **kw) -> tuple[dict, dict]:
    results = []
    for mode in ("off", "on"):
        tag = f"{mode}-{len(list(tmp.iterdir())) if tmp else 0}"
        engine, clock = _build(frames, tmp=tmp, tag=tag, **kw)
        assert horizon.run(engine, clock, mode=mode) == len(clock.ticks)
        results.append(_outcome(engine, tmp, tag))
    return results[0], results[1]


def _assert_same(off: dict, on: dict) -> None:
    for key in off:
        if key == "journal_lines":
            continue
        assert on[key] == off[key], f"{key} differs with skipping"


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10_000), n=st.integers(120, 400), symbols=st.integers(1, 3),
       drop=st.sampled_from([0.0, 0.05]), vol=st.sampled_from([0.002, 0.006]),
       fast=st.integers(2, 8), slow_gap=st.integers(2, 20), refresh=st.sampled_from([1, 7, 10]),
       observe=st.sampled_from([0, 5, 60]),
       levels=st.one_of(st.none(), st.tuples(st.sampled_from([0.003, 0.01]), st.sampled_from([0.004, 0.02]),
                                              st.sampled_from([None, 0.5, 1.5]), st.sampled_from([3.0, 45.0, 1e5]),
                                              st.booleans())),
       promise=st.booleans())
def test_skipping_equals_every_tick_with_log_and_store(tmp_path_factory, seed, n, symbols, drop, vol, fast,
                                                        slow_gap, refresh, observe, levels, promise):
    tmp = tmp_path_factory.mktemp("hz")
    frames = _frames(seed, n, symbols, drop, vol)
    off, on = _both(tmp, frames, fast=fast, slow=fast + slow_gap, refresh=refresh, observe=observe,
                    levels=levels, detector=_Stateless() if promise else _NoPromise())
    _assert_same(off, on)
    assert on["journal_lines"] <= off["journal_lines"]


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10_000), n=st.integers(200, 3000), symbols=st.integers(1, 4),
       drop=st.sampled_from([0.0, 0.03]), vol=st.sampled_from([0.001, 0.004, 0.01]),
       fast=st.integers(2, 20), slow_gap=st.integers(2, 40),
       levels=st.one_of(st.none(), st.tuples(st.sampled_from([0.002, 0.01, 0.05]), st.sampled_from([0.003, 0.03]),
                                              st.sampled_from([None, 0.2, 1.0]), st.sampled_from([2.0, 90.0, 1e5]),
                                              st.booleans())))
def test_skipping_equals_every_tick_without_persistence(seed, n, symbols, drop, vol, fast, slow_gap, levels):
    """The lean catch-up (no log, no store: the benchmark's and sweeps' configuration)."""
    frames = _frames(seed, n, symbols, drop, vol)
    off, on = _both(None, frames, fast=fast, slow=fast + slow_gap, refresh=10, observe=0, levels=levels,
                    detector=_Stateless() if seed % 2 else _Fixed())
    _assert_same(off, on)


@pytest.mark.parametrize("levels,vol", [((0.01, 0.02, None, 90.0, True), 0.002),
                                        ((0.01, 0.02, 0.5, 1e5, True), 0.002),    # found a real bug: the trail
                                        ((0.05, 0.03, 1.0, 1e5, True), 0.001)])   # ratcheted ahead of the walk
def test_positions_held_through_spans(levels, vol):
    """Long and short positions with stops, targets, percent trails and time limits held across spans."""
    frames = _frames(0, 2000, 2, 0.03, vol)
    calls = []
    real = horizon.catch_up
    horizon.catch_up = lambda e, t: (calls.append(bool(e.book.positions)), real(e, t))
    try:
        off, on = _both(None, frames, fast=5, slow=30, refresh=10, observe=0, levels=levels, detector=_Fixed())
    finally:
        horizon.catch_up = real
    _assert_same(off, on)
    assert sum(calls) > 50          # spans taken while positions were held
    assert {t["exit_reason"] for t in off["trades"]} - {"strategy"}   # protective exits fired


def test_spans_are_taken_and_journal_is_shorter(tmp_path):
    """Not a vacuous equality: on the quiet seeded series most ticks are skipped, one journal line per span."""
    frames = _frames(7, 800, 1, 0.0, 0.002)
    off, on = _both(tmp_path, frames, fast=10, slow=40, refresh=10, observe=0, levels=None, detector=_Fixed())
    _assert_same(off, on)
    assert off["journal_lines"] == 800
    assert on["journal_lines"] < 400
    assert off["stats"]["quiet_cycles"] > 600


def test_check_mode_runs_every_tick_and_verifies_promises(monkeypatch):
    frames = _frames(3, 800, 2, 0.0, 0.004)
    engine, clock = _build(frames, fast=5, slow=20, refresh=10, observe=0, levels=(0.01, 0.02, 0.5, 30.0, True),
                           detector=_Fixed(), tmp=None, tag="x")
    calls = []
    monkeypatch.setattr(horizon, "catch_up", lambda *a: calls.append(a))
    horizon.run(engine, clock, mode="check")
    assert calls == [] and engine.cycle == len(clock.ticks)


def test_a_wrong_promise_is_caught_by_check_mode():
    """A plugin that promises to sleep but trades: check mode names the cycle instead of going on wrong."""
    frames = _frames(5, 600, 1, 0.0, 0.004)
    engine, clock = _build(frames, fast=3, slow=10, refresh=10, observe=0, levels=None, detector=_Fixed(),
                           tmp=None, tag="x")
    engine.strategies[0].horizon_next_wake = lambda market: horizon.FAR   # a lie
    with pytest.raises(horizon.HorizonBroken, match="promised quiet"):
        horizon.run(engine, clock, mode="check")


def test_a_component_without_a_promise_forces_every_tick(monkeypatch):
    frames = _frames(5, 400, 1, 0.0, 0.002)
    engine, clock = _build(frames, fast=3, slow=30, refresh=10, observe=0, levels=None, detector=_Fixed(),
                           tmp=None, tag="x")
    monkeypatch.setattr(type(engine.strategies[0]), "horizon_next_wake", None, raising=False)
    del type(engine.strategies[0]).horizon_next_wake
    calls = []
    monkeypatch.setattr(horizon, "catch_up", lambda *a: calls.append(a))
    horizon.run(engine, clock, mode="on")
    assert calls == []


def test_a_risk_layer_without_a_promise_forces_every_tick(monkeypatch):
    frames = _frames(5, 400, 1, 0.0, 0.002)
    engine, clock = _build(frames, fast=3, slow=30, refresh=10, observe=0, levels=None, detector=_Fixed(),
                           tmp=None, tag="x")
    engine.risk.horizon_inert = False
    calls = []
    monkeypatch.setattr(horizon, "catch_up", lambda *a: calls.append(a))
    horizon.run(engine, clock, mode="on")
    assert calls == []


def test_span_record_expands_and_a_damaged_one_is_named(tmp_path):
    from hydra_engine.tradelog import CorruptLog
    log = SessionLog(tmp_path, START, {"session_id": "x"})
    base = {"cycle": 1, "ts": "2024-03-01T00:01:00Z", "mode": "trade", "orders": [], "fills": [], "notes": [],
            "prices": {"A": 1.0}, "equity_usd": "10.00"}
    reps = [{**base, "cycle": 1 + k, "ts": f"2024-03-01T00:0{1 + k}:00Z", "prices": {"A": 1.0 + k}} for k in range(3)]
    log.record_span(reps)
    log.close(START, {})
    lines = log.journal_path.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["span"]["cycles"] == 3
    doc = load_session(log.path)
    assert doc["cycle_details"] == [{**r, "trades": []} for r in reps]
    assert [list(d) for d in doc["cycle_details"]] == [list(r) + ["trades"] for r in reps]
    assert [c["cycle"] for c in doc["cycles"]] == [1, 2, 3]
    bad = json.loads(lines[0])
    bad["span"]["each"]["ts"] = bad["span"]["each"]["ts"][:2]
    log.journal_path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(CorruptLog, match="line 1.*damaged span record"):
        load_session(log.path)


def test_the_benchmark_reference_is_reproduced_with_skipping(hydra_peer):
    """bench/hydra_peer.run drives the event-horizon replay: the exact 100k reference (bench/README.md)."""
    from .conftest import peer_gen_data
    gen = peer_gen_data()
    frame = gen.make(100_000, gen.SEED)
    engine, clock, _ = hydra_peer.build({"SYN": frame})
    calls = []
    real = horizon.catch_up
    horizon.catch_up = lambda e, t: (calls.append(len(t)), real(e, t))
    try:
        assert hydra_peer.run(engine, clock) == 100_000
    finally:
        horizon.catch_up = real
    trades, equity = hydra_peer.results(engine)
    assert trades == 1124
    assert equity.quantize(Decimal("0.000001")) == Decimal("8287.345153")
    assert engine.cycle == engine.stats.cycles == 100_000
    assert engine.stats.errors == 0 and engine.stats.rejected == 0
    assert sum(calls) > 50_000   # most ticks were caught up, not run


def test_long_spans_are_written_in_bounded_records(tmp_path, monkeypatch):
    """A span longer than SPAN_MAX cycles is written as several span records: same journal after expansion."""
    monkeypatch.setattr(horizon, "SPAN_MAX", 5)
    frames = _frames(11, 400, 1, 0.0, 0.002)
    off, on = _both(tmp_path, frames, fast=10, slow=40, refresh=10, observe=0, levels=None, detector=_Stateless())
    _assert_same(off, on)
    assert off["journal_lines"] > on["journal_lines"] >= 400 // 5 * 0.5


def test_compare_runs_both_ways_and_names_a_difference(monkeypatch):
    """The debug diff: empty on a correct run; a catch-up that forgets a cycle is named."""
    frames = _frames(9, 600, 2, 0.0, 0.004)

    def build():
        return _build(frames, fast=4, slow=15, refresh=10, observe=0, levels=(0.01, 0.02, 0.5, 30.0, True),
                      detector=_Fixed(), tmp=None, tag="x")

    assert horizon.compare(build) == []
    real = horizon.catch_up

    def forgetful(engine, ticks):
        real(engine, ticks)
        engine.stats.quiet_cycles -= 1
    monkeypatch.setattr(horizon, "catch_up", forgetful)
    diff = horizon.compare(build)
    assert diff and diff[0].startswith("stats:")


@pytest.mark.parametrize("tmp", [False, True])
def test_last_report_after_a_span_is_the_skipped_cycles_own(tmp, tmp_path):
    """After a span ``last_report`` is the last skipped cycle's report, as tick by tick (the broker-down
    fallback and end-of-session summary read it), with and without a log."""
    frames = _frames(4, 500, 2, 0.03, 0.003)
    seen: dict[str, dict[int, dict]] = {"off": {}, "on": {}}
    for mode in ("off", "on"):
        engine, clock = _build(frames, fast=4, slow=20, refresh=7, observe=0, levels=(0.01, 0.02, 0.5, 60.0, True),
                               detector=_Stateless(), tmp=tmp_path if tmp else None, tag=mode)
        real = horizon.catch_up

        def spy(e, t, real=real, mode=mode):
            real(e, t)
            seen[mode][e.cycle] = json.loads(json.dumps(e.last_report))
        horizon.catch_up = spy
        try:
            horizon.run(engine, clock, mode=mode,
                        after=lambda now, e=engine, mode=mode: seen[mode].__setitem__(e.cycle, json.loads(json.dumps(e.last_report))))
        finally:
            horizon.catch_up = real
    caught = list(seen["on"])
    assert len(seen["on"]) < len(seen["off"]) == 500
    assert all(seen["on"][c] == seen["off"][c] for c in caught)


# ---------------------------------------------------------------- a promise right after a cycle that booked fills
def _both_after_fills(tmp, frames, risk, **kw):
    """Both ways, counting (with skipping) the spans that start right after a visited cycle which booked
    fills (issue #24 item 2: such a cycle promises once its orders are done and its book waits on nothing)."""
    results, after_fills = [], []
    for mode in ("off", "on"):
        tag = f"{mode}-{len(list(tmp.iterdir())) if tmp else 0}"
        engine, clock = _build(frames, tmp=tmp, tag=tag, risk=risk, **kw)
        if risk is None:   # half the cash per sleeve: a loss never leaves the next all-in entry unaffordable
            engine.risk.sleeves = {s: Decimal(5000) for s in engine.risk.sleeves}
        real = horizon.catch_up

        def spy(e, t):
            rep = e._last_report   # the visited cycle the span follows (raw or formatted: "fills" either way)
            after_fills.append(bool(rep["fills"]) and mode == "on")
            assert not e.broker.open_orders() and not (e.book.plans or e.book.exit_reasons or e.book.unresolved)
            return real(e, t)
        horizon.catch_up = spy
        try:
            assert horizon.run(engine, clock, mode=mode) == len(clock.ticks)
        finally:
            horizon.catch_up = real
        out = _outcome(engine, tmp, tag)
        out["risk_state"] = engine.risk.to_state()
        out["kills"] = engine.kill_log.as_json()
        results.append(out)
    return results[0], results[1], sum(after_fills)


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10_000), n=st.integers(300, 2500), symbols=st.integers(1, 3),
       drop=st.sampled_from([0.0, 0.03]), vol=st.sampled_from([0.001, 0.004, 0.01]),
       fast=st.integers(2, 12), slow_gap=st.integers(2, 30),
       fill_model=st.sampled_from(["signal_close", "next_open"]),
       levels=st.one_of(st.none(), st.tuples(st.sampled_from([0.002, 0.01]), st.sampled_from([0.003, 0.03]),
                                              st.sampled_from([None, 0.5]), st.sampled_from([3.0, 1e5]),
                                              st.booleans())),
       risk=st.sampled_from(["inert", "shipped", "tight"]), persist=st.booleans())
def test_skipping_after_fill_cycles_equals_every_tick(tmp_path_factory, seed, n, symbols, drop, vol, fast,
                                                      slow_gap, fill_model, levels, risk, persist):
    """The promise after a cycle that booked fills (entries and exits, stops and targets, long and short,
    both fill models, the inert and the shipped risk layer with tight limits, with and without journal and
    store): identical orders, trades, equity, positions, statistics, reports, journal, store, risk state."""
    tmp = tmp_path_factory.mktemp("hf") if persist else None
    frames = _frames(seed, n, symbols, drop, vol)
    off, on, _ = _both_after_fills(tmp, frames, None if risk == "inert" else _TIGHT if risk == "tight" else {},
                                   fast=fast, slow=fast + slow_gap, refresh=10, observe=0, levels=levels,
                                   detector=_Stateless() if seed % 2 else _Fixed(), fill_model=fill_model)
    _assert_same(off, on)


@pytest.mark.parametrize("fill_model", ["signal_close", "next_open"])
@pytest.mark.parametrize("levels", [None, (0.01, 0.02, 0.5, 1e5, True)])
@pytest.mark.parametrize("risk", ["inert", "shipped"])
def test_spans_start_right_after_fill_cycles(fill_model, levels, risk):
    """Not vacuous: on a seeded series many fill cycles are followed by a span (the settle cycle after them
    is no longer visited: entries and exits with the inert risk layer, exits to a flat book with the shipped
    one), and the outcome is identical tick by tick."""
    frames = _frames(21, 3000, 1, 0.0, 0.003)
    off, on, after_fills = _both_after_fills(None, frames, None if risk == "inert" else {}, fast=3, slow=10,
                                             refresh=10, observe=0, levels=levels, detector=_Fixed(),
                                             fill_model=fill_model)
    _assert_same(off, on)
    trades = len(off["trades"])
    assert trades > 20 and after_fills > (trades // 2 if risk == "inert" else trades // 3)


# ---------------------------------------------------------------- the shipped risk layer's promise
_TIGHT = {"max_daily_loss_pct": 0.02, "max_drawdown_pct": 0.05, "max_consecutive_losses": 1,
          "max_trades_per_day": 3, "max_position_pct": 3.0}


def _runs(tmp, frames, modes, *, kill_at=None, **kw):
    """(outcome with risk state and kill log, span lengths) per mode; with log and store when ``tmp``; the
    kill tripped by hand before the run when ``kill_at`` (a time)."""
    results = []
    for mode in modes:
        tag = f"{mode}-{len(list(tmp.iterdir())) if tmp else 0}"
        engine, clock = _build(frames, tmp=tmp, tag=tag, **kw)
        spans = []
        real = horizon.catch_up
        horizon.catch_up = lambda e, t: (spans.append(len(t)), real(e, t))
        if kill_at is not None:
            engine.risk.kill("test kill", kill_at)
        try:
            assert horizon.run(engine, clock, mode=mode) == len(clock.ticks)
        finally:
            horizon.catch_up = real
        out = _outcome(engine, tmp, tag)
        out["risk_state"] = engine.risk.to_state()
        out["kills"] = engine.kill_log.as_json()
        results.append((out, spans))
    return results


def _both_risk(tmp, frames, risk, **kw):
    results = _runs(tmp, frames, ("off", "on"), risk=risk, **kw)
    return results[0][0], results[1][0], results[1][1]


@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10_000), n=st.integers(400, 3200), symbols=st.integers(1, 3),
       vol=st.sampled_from([0.001, 0.004]), fast=st.integers(2, 10), slow_gap=st.integers(5, 40),
       levels=st.one_of(st.none(), st.tuples(st.sampled_from([0.002, 0.01]), st.sampled_from([0.003, 0.03]),
                                              st.sampled_from([None, 0.5]), st.sampled_from([5.0, 1e5]),
                                              st.booleans())),
       tight=st.booleans(), persist=st.booleans())
def test_risk_manager_promise_skipping_equals_every_tick(tmp_path_factory, seed, n, symbols, vol, fast, slow_gap,
                                                         levels, tight, persist):
    """The shipped RiskManager (risk.py) promises on a flat book: identical orders, trades, equity, journal,
    store, risk state (day, day start, peak, trade count, cooldown, kill) and kill log, with its tight limits
    (kills, cooldowns and the day's trade cap firing between spans) and without; runs span several days."""
    tmp = tmp_path_factory.mktemp("hr") if persist else None
    frames = _frames(seed, n, symbols, 0.02, vol)
    off, on, spans = _both_risk(tmp, frames, _TIGHT if tight else {}, fast=fast, slow=fast + slow_gap,
                                refresh=10, observe=0, levels=levels, detector=_Stateless() if seed % 2 else _Fixed())
    _assert_same(off, on)
    assert spans, "no span was taken with the RiskManager"


def test_risk_manager_spans_are_taken_around_cooldowns_and_day_rolls():
    """Not vacuous: on a seeded 3-day series cooldowns (one loss: 4 h) and the day's trade cap block entries
    between spans, spans cross UTC midnights (day roll caught up), and the outcome is identical."""
    frames = _frames(11, 4300, 2, 0.0, 0.003)
    off, on, spans = _both_risk(None, frames, {"max_consecutive_losses": 1, "max_trades_per_day": 8}, fast=10,
                                slow=40, refresh=10, observe=0, levels=(0.002, 0.003, None, 5.0, False),
                                detector=_Fixed())
    _assert_same(off, on)
    assert off["stats"]["vetoes"].get("entries_blocked", 0) > 50     # cooldowns / the cap were in force
    assert off["risk_state"]["cooldown_until"] is not None and off["risk_state"]["day"] == "2024-03-03"
    assert len(off["trades"]) > 10 and sum(spans) > 400


def test_risk_manager_without_promise_conditions_forces_every_tick(monkeypatch):
    """A held position, an unknown kill switch or a kill: the RiskManager promises nothing."""
    frames = _frames(5, 400, 1, 0.0, 0.002)
    engine, clock = _build(frames, fast=3, slow=30, refresh=10, observe=0, levels=None, detector=_Fixed(),
                           tmp=None, tag="x", risk={})
    engine.risk.kill_switches.append(type("Custom", (), {"name": "custom", "on": "equity",
                                                         "fire": lambda self, rm, eq: None})())
    calls = []
    monkeypatch.setattr(horizon, "catch_up", lambda *a: calls.append(a))
    horizon.run(engine, clock, mode="on")
    assert calls == []
    engine, clock = _build(frames, fast=3, slow=30, refresh=10, observe=0, levels=None, detector=_Fixed(),
                           tmp=None, tag="x", risk={})
    engine.risk.kill("test", START)   # killed: the next cycle logs the kill, so the first promise waits for it
    assert horizon.kill_log_horizon(engine) is None


# ---------------------------------------------------------------- a killed or blocked flat book (issue #24)
def _both_killed(tmp, frames, *, kill_at: int | None, truth: dict | None, risk: dict, **kw):
    """Both ways and in check mode, with log and store when ``tmp``; the kill tripped by hand before the
    run when ``kill_at`` (a time; None: only the run's own switches)."""
    (off, _), (on, spans), (check, _) = _runs(tmp, frames, ("off", "on", "check"), kill_at=kill_at, risk=risk,
                                              truth=truth, **kw)
    return off, on, check, spans


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(seed=st.integers(0, 10_000), n=st.integers(600, 2400), symbols=st.integers(1, 2),
       kill_at=st.sampled_from([None, START, START - timedelta(hours=1)]), resume_days=st.sampled_from([0, 0.1, 0.45]),
       tight=st.booleans(), persist=st.booleans())
def test_killed_or_blocked_flat_book_skipping_equals_every_tick(tmp_path_factory, seed, n, symbols, kill_at,
                                                                 resume_days, tight, persist):
    """A killed (by hand, or by the tight switches) or blocked (cooldown, the day's trade cap) flat book
    promises: the skipped cycles report the gate's mode and note ("killed" + the kill reason, "blocked" +
    the cooldown's hours left), the kill log's automatic resume is visited on its tick, and orders, trades,
    equity, journal (span records expanded), document, store, risk state and kill log are identical tick
    by tick, skipping, and in check mode (every promise verified)."""
    tmp = tmp_path_factory.mktemp("hk") if persist else None
    frames = _frames(seed, n, symbols, 0.0, 0.004)
    off, on, check, spans = _both_killed(tmp, frames, kill_at=kill_at, truth={"backtest_auto_resume_days": resume_days},
                                         risk=_TIGHT if tight else {}, fast=3, slow=15, refresh=10, observe=0,
                                         levels=(0.002, 0.004, None, 5.0, False), detector=_Fixed())
    _assert_same(off, on)
    _assert_same(off, check)
    if kill_at is not None:
        assert off["kills"] and spans


def test_killed_spans_report_the_kill_and_resume_on_time(tmp_path):
    """Not vacuous: a kill at the start with a 0.25-day automatic resume on a 2-day series -- the killed
    cycles are mostly skipped, every one of them (skipped or visited) reports mode "killed" with the kill
    reason as its note in the journal, the resume happens at the same cycle both ways, and trading resumes."""
    frames = _frames(3, 2880, 1, 0.0, 0.004)
    off, on, check, spans = _both_killed(tmp_path, frames, kill_at=START, truth={"backtest_auto_resume_days": 0.25},
                                         risk={}, fast=3, slow=15, refresh=10, observe=0,
                                         levels=(0.002, 0.004, None, 5.0, False), detector=_Fixed())
    _assert_same(off, on)
    _assert_same(off, check)
    killed = [c for c in on["journal"] if c["mode"] == "killed"]
    assert len(killed) >= 300 and sum(spans) >= 300
    assert {tuple(c["notes"]) for c in killed} == {("kill switch (manual): test kill",)}
    (kill,) = on["kills"]
    assert kill["resumed_by"] == "auto_resume"
    assert datetime.fromisoformat(kill["resumed_at"]) - datetime.fromisoformat(kill["at"]) == timedelta(hours=6)
    assert any(t["entry_time"] > kill["resumed_at"] for t in on["trades"])


# ---------------------------------------------------------------- the regime refitter's and HMM detector's promises
def test_refitter_promise_is_the_first_time_a_refit_is_due():
    """``refitter_until`` against ``RegimeRefitter.due`` itself, on every branch of its schedule: not due
    anywhere before the promised time (hourly probes), due at it."""
    from hydra_engine.horizon_promises import refitter_until
    from hydra_engine.regime import HMMRegimeDetector
    from hydra_engine.regime_refit import RegimeRefitter

    def det(end):
        d = HMMRegimeDetector()
        d.params = {"training": {"end": end}}
        return d
    now = datetime(2024, 6, 10, 13, 30, tzinfo=UTC)
    cases = [(None, det("2024-05-01"), 90), (now - timedelta(days=3, hours=5), det("2024-05-01"), 7),
             (now - timedelta(hours=2), HMMRegimeDetector(), 7), (None, det("2024-06-01"), 14)]
    for last, d, days in cases:
        r = RegimeRefitter(every=timedelta(days=days), history_dir=None, save_dir=None, last_attempt=last)
        until = refitter_until(r, d, now)
        assert until is not None and until > now, (last, d.params)
        t = now
        while t < until:
            assert r.due(d, t) is None, (last, t)
            t += timedelta(hours=1)
        assert r.due(d, until), (last, until)
    due_now = RegimeRefitter(every=timedelta(days=90), history_dir=None, save_dir=None)
    assert refitter_until(due_now, det("2024-07-01"), now) is None        # fitted on days after now
    assert refitter_until(due_now, HMMRegimeDetector(), now) is None      # no model, never tried


def _real_span(shared_data, tmp_path, start, end, mode, strategies=("sma_crossover",), perps=False):
    from hydra_engine.app import build_sim_session
    from hydra_engine.backtest import _defer_snapshots, backtest_settings
    from hydra_engine.config import load_settings
    s = backtest_settings(load_settings(Path(__file__).resolve().parents[1] / "hydra.toml"), shared_data,
                          date.fromisoformat(start), date.fromisoformat(end), tmp_path / mode)
    # the shipped configuration restricted to what promises: RiskManager, the HMM detector and its 90-day
    # refitter; sma_crossover stands in for the shipped plugins (which do not promise yet)
    s = s.model_copy(update={
        "strategies": s.strategies.model_copy(update={"enabled": list(strategies), "params": {
            **s.strategies.params, "sma_crossover": {"symbols": ["BTC/USD", "ETH/USD", "SPY", "GLD"], "fast": 20,
                                                     "slow": 50}}}),
        "perps": s.perps.model_copy(update={"enabled": perps}),
        "modifiers": s.modifiers.model_copy(update={"enabled": []})})
    session = build_sim_session(s, mode="backtest", data_dir=shared_data, log_dir=tmp_path / mode)
    _defer_snapshots(session.session_log)
    engine = session.engine
    assert type(engine.risk).__name__ == "RiskManager" and engine.regime_refitter is not None
    assert type(engine.regime_detector).__name__ == "HMMRegimeDetector"
    spans = []
    real = horizon.catch_up
    horizon.catch_up = lambda e, t: (spans.append(len(t)), real(e, t))
    try:
        horizon.run(engine, session.clock, mode=mode)
    finally:
        horizon.catch_up = real
    return horizon.outcome(engine), spans, engine


def test_real_data_shipped_risk_regime_and_refitter_promises(shared_data, tmp_path):
    """Two months of hourly real data (/work/shared/data), the shipped RiskManager, HMM detector and 90-day
    refitter: ``[horizon] check`` verifies every promise, and skipping equals every tick (orders, trades,
    equity, statistics, summary, last report); spans run past the 10-cycle regime refresh (the HMM's
    promise) and a refit happens in the span."""
    check, _, _ = _real_span(shared_data, tmp_path, "2024-01-01", "2024-03-01", "check")
    off, _, _ = _real_span(shared_data, tmp_path, "2024-01-01", "2024-03-01", "off")
    on, spans, engine = _real_span(shared_data, tmp_path, "2024-01-01", "2024-03-01", "on")
    assert [k for k in off if off[k] != on[k]] == [] and check == off
    assert engine.regime_refits and sum(spans) > 150 and max(spans) > 10


# ---------------------------------------------------------------- liquidation_cascade's promise
def test_liquidation_cascade_promise_against_wants_cycle(shared_data):
    """May 2021 (real funding and hourly open interest, the crash's cascades): at every hourly tick the
    plugin's promise is compared with ``wants_cycle`` itself on every tick up to it -- never True before
    the promised time -- and the promise is not vacuous (it wakes, and it promises most of the month)."""
    from hydra_engine.data.replay import ReplayMarketData
    from strategies.liquidation_cascade import LiquidationCascadeHunter
    data = ReplayMarketData(shared_data, ["BTC/USD", "ETH/USD"], start=date(2021, 5, 1), end=date(2021, 6, 1))
    plugin = LiquidationCascadeHunter({})
    ticks = [datetime(2021, 5, 1, tzinfo=UTC) + timedelta(hours=h) for h in range(31 * 24)]
    wants = [plugin.wants_cycle(data.snapshot(t)) for t in ticks]
    assert sum(wants) >= 5
    promised = 0
    for i, t in enumerate(ticks):
        until = plugin.horizon_next_wake(data.snapshot(t), data=data)
        assert until is not None
        if wants[i]:
            assert until <= t
        later = [j for j in range(i + 1, len(ticks)) if ticks[j] < until]
        assert not any(wants[j] for j in later), (t, until)
        promised += bool(later)
    assert promised > len(ticks) / 2


def test_real_data_liquidation_cascade_skipping_equals_every_tick(shared_data, tmp_path):
    """The shipped liquidation hunter with the shipped RiskManager, HMM detector and refitter on three months of
    real data: check mode verifies every promise; skipping equals every tick; most ticks are skipped."""
    args = ("2024-01-01", "2024-04-01")
    check, _, _ = _real_span(shared_data, tmp_path, *args, "check", strategies=("liquidation_cascade",))
    off, _, _ = _real_span(shared_data, tmp_path, *args, "off", strategies=("liquidation_cascade",))
    on, spans, engine = _real_span(shared_data, tmp_path, *args, "on", strategies=("liquidation_cascade",))
    assert [k for k in off if off[k] != on[k]] == [] and check == off
    assert off["trades"] and sum(spans) > len(engine.market.timeline()) / 2


# ---------------------------------------------------------------- issue #24: the perp venue and a killed book, real data
def test_real_data_killed_book_and_flat_perp_venue_skipping_equals_every_tick(shared_data, tmp_path):
    """January to April 2020 on /work/shared/data with the shipped perp module on (BTCUSDT/ETHUSDT: the venue
    settles funding), the shipped RiskManager, HMM detector and refitter and liquidation_cascade: the
    extreme-vol regime-break kill fires on 2020-03-05 and (backtest_auto_resume_days = 0) stays. Check mode
    verifies every promise (the flat venue's, the killed book's); skipping equals every tick (orders,
    trades, equity, statistics, summary with the kill log, last report); most killed cycles are skipped and
    each reports mode "killed" with the kill's reason."""
    args = ("2020-01-01", "2020-04-01")
    kw = {"strategies": ("liquidation_cascade",), "perps": True}
    check, _, _ = _real_span(shared_data, tmp_path, *args, "check", **kw)
    off, _, _ = _real_span(shared_data, tmp_path, *args, "off", **kw)
    on, spans, engine = _real_span(shared_data, tmp_path, *args, "on", **kw)
    assert engine.broker.capabilities.settles_funding
    assert [k for k in off if off[k] != on[k]] == [] and check == off
    (kill,) = on["summary"]["kills"]
    assert kill["rule"] == "extreme_vol_regime_break" and kill["at"].startswith("2020-03-05")
    killed_ticks = sum(1 for t in engine.market.timeline() if t.isoformat() > kill["at"])
    assert sum(spans) > killed_ticks / 2
    assert on["last_report"]["mode"] == "killed" and on["last_report"]["notes"] == [
        f"kill switch (extreme_vol_regime_break): {engine.risk.state.kill_reason}"]
