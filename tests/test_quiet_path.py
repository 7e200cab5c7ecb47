"""The engine's quiet-bar fast path changes nothing but speed.

When no plugin wants a cycle (``Strategy.wants_cycle``) the engine skips signals, aggregation,
proposals, ranking and risk for that cycle (engine.py, steps 3-7). These tests run the same data twice —
once as shipped, once with every plugin forced awake (every cycle the full path) — and require identical
fills, closed trades, equity and, on the benchmark data, every cycle's report. They also check that the
fast path really was taken, and that the SMA plugin's vectorised wake set is causal and never misses a
crossover. No timing here: speed is measured in bench/.
"""
from __future__ import annotations

from datetime import date
from decimal import Decimal

import numpy as np
import pytest

from hydra_engine.backtest import backtest_settings, run_hydra
from strategies.liquidation_cascade import LiquidationCascadeHunter
from strategies.sma_crossover import SmaCrossover, SmaCrossoverParams, possible_crosses

from .conftest import make_settings, peer_gen_data


def _always_awake(monkeypatch, cls) -> None:
    monkeypatch.setattr(cls, "wants_cycle", lambda self, market: True)


def _outcome(engine) -> dict:
    broker = engine.broker
    return {"orders": [(o.client_order_id, o.symbol, o.side, o.qty, o.status, o.filled_avg_price, o.created_at)
                       for o in broker._orders.values()],
            "closed_trades": engine.closed_trades, "cash": broker.cash, "fees": broker.fees_paid,
            "equity": broker.account().equity_usd, "positions": broker.positions(),
            "stats": (engine.stats.cycles, engine.stats.proposals, engine.stats.approved, engine.stats.orders,
                      engine.stats.rejected, engine.stats.errors, dict(engine.stats.vetoes))}


@pytest.mark.parametrize("symbols", [1, 3])
def test_fast_path_reproduces_the_full_path_on_the_benchmark_data(hydra_peer, monkeypatch, symbols):
    """Seeded one-minute bars (gen_data.py), 1 and 3 instruments, 6,000 cycles: every cycle's report,
    every order and fill, the closed trades and the final equity are identical with and without the
    fast path; the fast path handles most cycles."""
    gen = peer_gen_data()
    frames = {f"S{k}": gen.make(6_000, gen.SEED + k) for k in range(symbols)}

    fast, clock, _ = hydra_peer.build(frames)
    fast_reports = [fast.run_cycle(now) for now in clock.ticks]

    lazy, clock, _ = hydra_peer.build(frames)     # Engine.advance: reports formatted only when read
    lazy_reports = []
    for k, now in enumerate(clock.ticks):
        lazy.advance(now)
        if k % 7 == 0:
            lazy_reports.append(lazy.last_report)

    with monkeypatch.context() as m:
        _always_awake(m, SmaCrossover)
        full, clock, _ = hydra_peer.build(frames)
        full_reports = [full.run_cycle(now) for now in clock.ticks]

    assert full.stats.quiet_cycles == 0
    assert fast.stats.quiet_cycles > 0.8 * len(clock.ticks)          # the fast path did the work
    assert sum(len(r["fills"]) for r in full_reports) > 50            # and there was trading to get right
    assert fast_reports == full_reports
    assert lazy_reports == full_reports[::7]
    assert _outcome(fast) == _outcome(full) == _outcome(lazy)


def test_fast_path_reproduces_the_full_path_on_real_data(shared_data, tmp_path, monkeypatch):
    """The golden window (2024 Q1, BTC/ETH/SPY, liquidation_cascade, HMM regime, session log and store):
    the same trades, fills, equity and cycle records with the fast path as with every cycle full."""
    calls = {"asked": 0, "quiet": 0}
    wants = LiquidationCascadeHunter.wants_cycle

    def counting(self, market):
        calls["asked"] += 1
        awake = wants(self, market)
        calls["quiet"] += not awake
        return awake

    def run(folder: str) -> dict:
        out = tmp_path / folder
        s = make_settings(out, data_dir=shared_data, start="2024-01-01", end="2024-04-01",
                          symbols=("BTC/USD", "ETH/USD", "SPY"),
                          broker={"fee_bps": 10.0, "slippage_bps": 5.0, "starting_cash_usd": 100_000.0},
                          strategies={"enabled": ["liquidation_cascade"]})
        s = backtest_settings(s, shared_data, date(2024, 1, 1), date(2024, 4, 1), out / "out")
        doc, _ = run_hydra(s, shared_data, out / "out", progress=False)
        return doc

    with monkeypatch.context() as m:
        m.setattr(LiquidationCascadeHunter, "wants_cycle", counting)
        fast = run("fast")
    with monkeypatch.context() as m:
        _always_awake(m, LiquidationCascadeHunter)
        full = run("full")

    assert calls["quiet"] > 0.5 * calls["asked"] > 0                  # most cycles took the fast path
    assert fast["fills"] and fast["trades"]
    assert fast["trades"] == full["trades"]
    assert fast["fills"] == full["fills"]
    assert fast["summary"]["final_equity_usd"] == full["summary"]["final_equity_usd"]
    assert fast["cycles"] == full["cycles"]


def _exact_cross(close: np.ndarray, k: int, p: SmaCrossoverParams) -> int:
    """``SmaCrossover._cross`` on the window a cycle sees when bar k is the newest."""
    return SmaCrossover({"symbols": ["X"], "fast": p.fast, "slow": p.slow, "tie_rel": p.tie_rel})._cross(close[:k + 1])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_possible_crosses_never_misses_a_crossover_and_is_causal(seed):
    rng = np.random.default_rng(seed)
    close = np.round(100 * np.exp(np.cumsum(0.002 * rng.standard_normal(4_000))), 2)
    close[1000:1200] = close[1000]          # flat stretch: exact ties, the tolerance's territory
    close[2000:2100:2] += 0.01              # a zig-zag around a level: near-ties
    p = SmaCrossoverParams(symbols=["X"], fast=5, slow=12)
    mask = possible_crosses(close, p.fast, p.slow, p.tie_rel)
    crosses = [k for k in range(len(close)) if _exact_cross(close, k, p)]
    assert len(crosses) > 100
    assert all(mask[k] for k in crosses)                              # never misses one
    extra = set(np.flatnonzero(mask)) - set(crosses)                  # wake-ups without a crossover:
    ties = set(range(1000, 1200 + p.slow)) | set(range(2000, 2100 + p.slow))
    assert len(extra - ties) <= 0.05 * len(crosses)                   # near-ties only, where they were made
    for cut in (11, 12, 13, 500, 1111, 2050):                         # no look-ahead: a prefix gives a prefix
        assert np.array_equal(possible_crosses(close[:cut], p.fast, p.slow, p.tie_rel), mask[:cut])


def test_a_plugin_without_prepare_is_awake_every_cycle():
    plugin = SmaCrossover({"symbols": ["X"]})
    assert plugin.wants_cycle(object()) is True                       # paper: no full history, no promise
    plugin.prepare({})
    from hydra_engine.ports import MarketSnapshot
    from hydra_engine.domain import UTC
    from datetime import datetime
    assert plugin.wants_cycle(MarketSnapshot(datetime(2024, 1, 1, tzinfo=UTC))) is True   # unknown symbol: doubt


def test_a_broken_wake_predicate_means_a_full_cycle(hydra_peer, monkeypatch):
    gen = peer_gen_data()
    frames = {"S0": gen.make(600, gen.SEED)}
    reference, clock, _ = hydra_peer.build(frames)
    expected = [reference.run_cycle(now) for now in clock.ticks]

    def broken(self, market):
        raise RuntimeError("predicate bug")
    monkeypatch.setattr(SmaCrossover, "wants_cycle", broken)
    engine, clock, _ = hydra_peer.build(frames)
    assert [engine.run_cycle(now) for now in clock.ticks] == expected
    assert engine.stats.quiet_cycles == 0 and engine.stats.errors == 0
    assert Decimal(expected[-1]["equity_usd"]) > 0


def test_sma_crossover_acts_on_its_own_crossover_only():
    """Another plugin's signal on the symbol is no crossover: before, sma_crossover bought and sold on the
    sign of the combined view, which included the hunter's open-interest and funding signals."""
    from datetime import datetime, timezone
    from hydra_engine.domain import Regime, RegimeReading
    from hydra_engine.ports import MarketSnapshot
    from hydra_engine.strategy import CombinedSignal, ExitRequest, StrategyContext

    now = datetime(2024, 3, 5, 21, tzinfo=timezone.utc)
    market = MarketSnapshot(now, closes={"BTC/USD": 63_301.1})
    plugin = SmaCrossover()
    other_up = CombinedSignal("BTC/USD", 0.43, 0.7, ({"source": "oi_cascade", "score": 0.75},))
    other_down = CombinedSignal("BTC/USD", -0.44, 0.4, ({"source": "funding_rate", "score": -0.44},))
    own_up = CombinedSignal("BTC/USD", 0.2, 0.6, ({"source": "sma_cross", "score": 1.0},
                                                  {"source": "funding_rate", "score": -0.44}))
    regime = RegimeReading(Regime.TRENDING_UP, 1.0, "t", now)
    flat, holding = (StrategyContext(now, market, regime, held) for held in ({}, {"BTC/USD": 0.03}))
    assert plugin.propose(flat, {"BTC/USD": other_up}) == []
    assert plugin.propose(holding, {"BTC/USD": other_down}) == []
    [entry] = plugin.propose(flat, {"BTC/USD": own_up})
    assert not isinstance(entry, ExitRequest) and entry.symbol == "BTC/USD"
