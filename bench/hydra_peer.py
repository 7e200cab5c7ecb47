"""HYDRA wired for the peer benchmark (shared/bench-peers): SMA(20)/SMA(50) long-only, all-in, 0.1 % fee
per side, filled at the signal bar's close — through the real engine core:

  BarFileMarketData (ReplayMarketData)  →  SimulatedClock  →  Engine.advance (run_cycle without returning its report)
  →  SimulatedBroker(fill_model="signal_close", fee 10 bps, slippage 0, exact fees)

Two pieces are benchmark-specific, and both are injected through the engine's ordinary ports:

* ``AllInSleeveRisk`` replaces the risk brain. The bible's hard limits (3 % per position, 25 % total
  exposure, daily trade count, cooldowns, kill switches) would refuse an all-in baseline by design and
  cannot be loosened by configuration (``risk.check_hard_limits``). This layer implements the same
  engine contract (``evaluate``/``on_equity``/``entries_blocked``/...) with one rule: each instrument
  has its own sleeve (starting cash; multi-asset = independent 100,000 sleeves) and an approved entry
  buys ``sleeve / (price × (1 + fee))`` rounded down to the asset's increment. It never kills or blocks.
  It is for benchmarks only — never for trading.
* ``FixedRegime`` is the regime detector: the peer strategy has no regime filter, so the detector
  reports one fixed known regime (TRENDING_UP) with confidence 1. The engine still calls it on its usual
  schedule; the HMM detector's cost is measured separately (bench/cycle_latency.py).

Everything else is the shipped engine: the snapshot, the plugin, the aggregator, ranking, the engine's
own vetoes, order submission with the broker's validation, fills polled at the next cycle, position
management, closed-trade accounting and the weight update.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Mapping

import pandas as pd

from hydra_engine.aggregator import SignalAggregator
from hydra_engine.brokers.capabilities import crypto_spec
from hydra_engine.brokers.sim import SimulatedBroker
from hydra_engine.clock import SimulatedClock
from hydra_engine.config import Settings
from hydra_engine.data.bars import BarFileMarketData
from hydra_engine.domain import ClosedTrade, Regime, RegimeReading, RiskDecision, TradeProposal
from hydra_engine import horizon
from hydra_engine.domain import UTC
from hydra_engine.engine import Engine
from hydra_engine.plugins import build_strategies
from hydra_engine.positions import PositionManager
from hydra_engine.weights import StrategyWeights

CASH = Decimal("100000")
FEE_BPS = 10.0           # 0.1 % of notional per side
QTY_STEP = Decimal("1e-18")


class FixedRegime:
    name = "fixed_regime"

    def __init__(self, regime: Regime = Regime.TRENDING_UP):
        self.regime = regime

    def detect(self, market) -> RegimeReading:
        return RegimeReading(self.regime, 1.0, self.name, market.now, {"why": "benchmark: fixed regime"})

    horizon_stateless = True   # detect() keeps no state: a replay span keeps only its last refresh

    def horizon_regime_until(self, market):
        """Event-horizon replay: the label never changes (each refresh is still run, stamped with its time)."""
        return datetime.max.replace(tzinfo=UTC) - timedelta(days=2)


class AllInSleeveRisk:
    """Benchmark risk layer: all-in per instrument sleeve, no limits (see the module docstring)."""

    name = "all_in_sleeve (benchmark only)"
    # event-horizon replay: on_equity/on_market/blocked/kill_requested never change state or fire, so a
    # quiet cycle's risk checks can be skipped (hydra_engine/horizon.py)
    horizon_inert = True

    def __init__(self, symbols, sleeve_usd: Decimal = CASH, fee_bps: float = FEE_BPS):
        self.sleeves = {s: Decimal(sleeve_usd) for s in symbols}
        self.fee = Decimal(str(fee_bps)) / Decimal(10000)
        self._bindings: Counter[str] = Counter()

    # the engine's risk contract (see hydra_engine/risk.py) -----------------------------------
    def on_equity(self, equity_usd, now):
        return None

    def on_market(self, regime, vol_pct, now, regime_break=None, market=None):
        return None

    def blocked(self, now):
        return None

    def entries_blocked(self, now):
        return None

    def kill_requested(self):
        return None

    def on_entry_filled(self, now):
        pass

    def on_trade_closed(self, trade: ClosedTrade, now):
        # exact (unrounded) round-trip P&L back into the instrument's sleeve
        pnl = (Decimal(trade.exit_price) - Decimal(trade.entry_price)) * Decimal(trade.qty) - Decimal(trade.fees_usd)
        self.sleeves[trade.symbol] += pnl

    def evaluate(self, p: TradeProposal, asset, view, market=None) -> RiskDecision:
        sleeve = self.sleeves.get(p.symbol, Decimal(0))
        price = Decimal(str(p.entry_price))
        qty = asset.round_qty(sleeve / (price * (1 + self.fee))) if sleeve > 0 else Decimal(0)
        if qty <= 0:
            return RiskDecision(p, False, rule="all_in_sleeve", reason=f"sleeve {sleeve} too small")
        self._bindings["all_in_sleeve"] += 1
        return RiskDecision(p, True, qty=qty, notional_usd=qty * price, rule="all_in_sleeve",
                            reason=f"all-in: sleeve ${sleeve:.6f} at {price}")

    def binding_counts(self):
        return dict(self._bindings)

    def to_state(self):
        return {"kind": "all_in_sleeve", "sleeves": {k: str(v) for k, v in self.sleeves.items()}}

    def load_state(self, state):
        self.sleeves.update({k: Decimal(v) for k, v in state.get("sleeves", {}).items()})


def bench_settings(symbols: list[str]) -> Settings:
    return Settings(engine={"observation_cycles": 0, "regime_refresh_cycles": 10, "history_bars": 500},
                    universe={"symbols": symbols, "data_only": []},
                    strategies={"enabled": ["sma_crossover"],
                                "params": {"sma_crossover": {"symbols": symbols, "fast": 20, "slow": 50}}},
                    broker={"starting_cash_usd": float(CASH) * len(symbols), "fee_bps": FEE_BPS, "slippage_bps": 0.0},
                    data={"start": None, "end": None})


def build(frames: Mapping[str, pd.DataFrame | str | Path], *, fill_model: str = "signal_close",
          history_bars: int = 500) -> tuple[Engine, SimulatedClock, BarFileMarketData]:
    """Engine + clock over ``frames`` (symbol -> OHLCV frame or file), no log and no store."""
    symbols = list(frames)
    settings = bench_settings(symbols)
    market = BarFileMarketData(frames, interval=timedelta(minutes=1), history_bars=history_bars)
    assets = {s: crypto_spec(s, min_order_size=Decimal(0), qty_increment=QTY_STEP, price_increment=Decimal("0.01"))
              for s in symbols}
    broker = SimulatedBroker(market, assets, starting_cash_usd=CASH * len(symbols), fee_bps=FEE_BPS,
                             slippage_bps=0.0, fill_model=fill_model, fee_quantum=None)
    strategies = build_strategies(settings.strategies.enabled, settings.strategies.params)
    engine = Engine(settings, market=market, broker=broker, strategies=strategies, regime_detector=FixedRegime(),
                    aggregator=SignalAggregator(), weights=StrategyWeights([s.name for s in strategies]),
                    risk=AllInSleeveRisk(symbols), position_manager=PositionManager(),
                    session_id="bench-sma", mode="backtest", session_log=None, store=None)
    return engine, SimulatedClock(market.timeline()), market


def run(engine: Engine, clock: SimulatedClock, max_cycles: int | None = None) -> int:
    """Every tick accounted for; the event-horizon driver skips the ticks the promises allow (set
    HYDRA_HORIZON__ENABLED=false for a plain tick-by-tick run)."""
    return horizon.run(engine, clock, max_ticks=max_cycles)


def results(engine: Engine) -> tuple[int, Decimal]:
    """(entries filled, final equity = cash + open positions at the last close)."""
    entries = sum(1 for o in engine.broker._orders.values()
                  if o.purpose == "entry" and o.status.value == "filled")
    return entries, engine.broker.account().equity_usd
