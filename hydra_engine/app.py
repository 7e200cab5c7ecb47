"""Wiring: build an engine for a mode from the settings, and run a session with a clock.

This is the only place that knows which implementation backs each port: replay data and the
simulated broker offline; Alpaca data and broker on paper. Everything downstream is shared.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Callable
from datetime import datetime, timedelta
from pathlib import Path

from . import __version__
from .aggregator import SignalAggregator
from .brokers.capabilities import DEFAULT_ASSET_SPECS
from .brokers.sim import SimulatedBroker
from .run_notes import FoldedWarnings
from .clock import LiveClock, SimulatedClock
from .config import Settings, utc_stamp
from .data.event_feeds import event_feeds_for
from .data.replay import ReplayMarketData
from .domain import UTC
from .engine import Engine
from .llm.wiring import replay_llm
from .plugins import build_modifiers, build_scorers, build_strategies, discover_all
from .positions import PositionManager
from .regime import TrendVolRule, load_detector
from .regime_features import regime_history_days
from .regime_refit import RegimeRefitter
from .risk import RiskManager
from .store import Store
from .tradelog import SessionLog
from .weights import StrategyWeights

log = logging.getLogger(__name__)


@dataclass
class Session:
    engine: Engine
    clock: SimulatedClock | LiveClock
    session_log: SessionLog | None     # None (and store None): persistence off
    store: Store | None
    before_cycle: Callable[[Engine, datetime], None] | None = None   # e.g. paper: kill control, reconcile
    on_close: Callable[[], None] | None = None    # e.g. paper: stop the LLM analyst's thread


def build_regime_detector(settings: Settings):
    """The fitted HMM from ``models/regime_hmm.json``; without one, the trend/volatility rule (it says so)."""
    if settings.engine.regime_detector == "trend_vol_rule":
        return TrendVolRule()
    return load_detector()


def build_regime_refitter(settings: Settings, *, history_dir: Path, log_dir: Path) -> RegimeRefitter | None:
    """The in-loop refit schedule (``engine.regime_refit_days``), for the HMM detector only."""
    days = settings.engine.regime_refit_days
    if settings.engine.regime_detector != "hmm" or days <= 0:
        return None
    return RegimeRefitter(every=timedelta(days=days), history_dir=history_dir, save_dir=Path(log_dir) / "models")


REPLAY_MODES = ("sim", "backtest")


def install_regime_labeller(settings: Settings) -> str:
    """Install the perp regime labeller every perp consumer reads (``perp.stats.set_regime_labeller``):
    the trained XGBoost classifier when ``[regime_model] perp_labeller = "classifier"`` and its file
    exists, else the rule labeller. Returns the installed labeller's name (logged)."""
    from .ml.regime_classifier import labeller_for
    labeller = labeller_for(settings)
    log.info("perp regime labeller: %s", labeller.name)
    return labeller.name


def plugin_gate_rules(strategies) -> list:
    """The entry-gate rules the enabled plugins provide (an optional ``gate_rules()`` method)."""
    return [rule for s in strategies if callable(getattr(s, "gate_rules", None)) for rule in s.gate_rules()]


def intraday_symbols(strategies) -> list[str]:
    """The symbols whose intraday candles the plugins ask for (``DataNeed("intraday", symbol)``)."""
    return list(dict.fromkeys(n.symbol for s in strategies for n in s.data_needs if n.kind == "intraday"))


def plugin_ticks(strategies, event_feeds, market) -> None:
    """Extra replay clock ticks the plugins ask for around their events (``cycle_times(events, start, end)``):
    cycles only, never data (a snapshot still shows only what has closed and what is known)."""
    wanting = [s for s in strategies if callable(getattr(s, "cycle_times", None))]
    if not wanting:
        return
    events = [e for f in event_feeds for e in getattr(f, "all_events", ())]
    for s in wanting:
        market.add_ticks(s.cycle_times(events, market.start, market.end))


def build_core(settings: Settings, *, market, broker, session_id: str, mode: str, log_dir: Path,
               metadata: dict, store_batch: int, history_dir: Path | None = None, persist: bool = True,
               gate_rules: list | None = None, modifiers: list | None = None, scorers: list | None = None,
               risk: RiskManager | None = None) -> tuple[Engine, SessionLog | None, Store | None]:
    """The one composition root every mode goes through (paper, backtest, sim; sweep workers next).
    ``persist=False`` builds no store and no session log (a parallel sweep worker keeps its results in
    memory): the engine runs the same cycles and gives the same results."""
    discover_all()   # a plugin of any kind installed with a wrong interface version stops the session here
    strategies = build_strategies(settings.strategies.enabled, settings.strategies.params)
    if modifiers is None:   # the configured ones ([modifiers] enabled); a caller's list replaces them
        modifiers = build_modifiers(settings.modifiers.enabled, settings.modifiers.params)
    if scorers is None:     # the configured ones ([scorers] enabled); a caller's list replaces them
        scorers = build_scorers(settings.scorers.enabled, settings.scorers.params)
        if (mode in ("paper", "live") and settings.scorers.record_inputs_live
                and "ml_signal_scorer" not in settings.scorers.enabled):
            # the live-only features (order book, long/short, liquidations) exist only now: recorded from the
            # first day, unscored, so that a later retraining can learn from them (issue #21, ml/recorded.py)
            scorers += build_scorers(["ml_signal_scorer"], {"ml_signal_scorer": {"record_only": True}})
    from .ml.loop import in_training_replay
    if not in_training_replay():   # a retrain's own replay reads the labeller of the session running it (#21)
        install_regime_labeller(settings)   # the trained perp regime classifier when installed, else the rule
    started = datetime.now(UTC)
    # the session's return is measured from what the account holds now: a paper account is rarely at the
    # configured starting cash (the simulated broker is built with it)
    starting_equity = broker.account().equity_usd
    store = Store(settings.storage.url, root=settings.resolve_path(".")) if persist else None
    session_log = None if not persist else SessionLog(log_dir, started, {
        "session_id": session_id, "hydra_version": __version__, "mode": mode,
        "config_hash": settings.config_hash(),
        # what this session used, which the mode decides (broker.kind/data.kind only name the paper setup)
        "broker": "sim" if mode in REPLAY_MODES else "alpaca", "data": "replay" if mode in REPLAY_MODES else "alpaca",
        "symbols": settings.universe.symbols, "strategies": [s.name for s in strategies],
        "starting_equity_usd": str(starting_equity), **metadata})
    # a plugin may provide entry-gate rules (the macro scalper's pre-release window): `gate_rules()`
    gate_rules = [*(gate_rules or ()), *plugin_gate_rules(strategies)]
    engine = Engine(settings, market=market, broker=broker, strategies=strategies,
                    regime_detector=build_regime_detector(settings), aggregator=SignalAggregator(),
                    weights=StrategyWeights([s.name for s in strategies]), risk=risk or RiskManager(settings.risk),
                    position_manager=PositionManager(), session_id=session_id, mode=mode,
                    session_log=session_log, store=store, store_batch=store_batch,
                    regime_refitter=build_regime_refitter(
                        settings, history_dir=history_dir or settings.resolve_path(settings.data.replay_dir),
                        log_dir=log_dir), gate_rules=gate_rules, modifiers=modifiers, scorers=scorers)
    engine.starting_equity_usd = starting_equity
    from .ml.loop import attach_ml_loop   # issue #21: live monitoring and scheduled retraining of the models
    attach_ml_loop(engine, settings, mode=mode, data_dir=history_dir or settings.resolve_path(settings.data.replay_dir),
                   log_dir=log_dir)
    return engine, session_log, store


def build_sim_session(settings: Settings, *, mode: str = "sim", data_dir: Path | None = None,
                      log_dir: Path | None = None, max_cycles: int | None = None, persist: bool = True) -> Session:
    """A replay session over the configured span, or over its first ``max_cycles`` cycles."""
    strategies = build_strategies(settings.strategies.enabled, settings.strategies.params)  # fail fast
    data_cfg = settings.data
    folder = data_dir or settings.resolve_path(data_cfg.replay_dir)
    event_feeds = event_feeds_for(strategies, folder)   # what the plugins' data needs name; a bad file fails here
    perps = settings.perps.symbols if settings.perps.enabled else []   # the perp module's symbols (#20)
    from .data.macro_daily import macro_needs
    macro = macro_needs(strategies, folder)   # VIX3M, FRED rates ... only when a plugin declares them (#17)
    market = ReplayMarketData(folder, [*settings.universe.symbols, *perps],
                              data_only=[*settings.universe.data_only, *macro.bars], series_needs=macro.series,
                              history_bars=settings.engine.history_bars, start=data_cfg.start, end=data_cfg.end,
                              crypto_stale_after_s=data_cfg.crypto_stale_after_s,
                              equity_stale_after_s=data_cfg.equity_stale_after_s,
                              regime_history_days=regime_history_days(settings), event_feeds=event_feeds,
                              intraday=intraday_symbols(strategies))
    plugin_ticks(strategies, event_feeds, market)
    ticks = market.timeline()
    if not ticks:
        raise ValueError(f"no data between {data_cfg.start} and {data_cfg.end} in {folder}")
    # the id names what runs: the configuration (span included), the first day and, for a shortened
    # replay, its length -- so `run --cycles 5` is its own session and never replaces a full run's rows
    shortened = f"-{max_cycles}c" if max_cycles is not None and max_cycles < len(ticks) else ""
    ticks = ticks[:max_cycles]
    unknown = [s for s in settings.universe.symbols if s not in DEFAULT_ASSET_SPECS]
    if unknown:
        raise ValueError(f"universe.symbols {unknown} have no asset specification for the simulated broker")
    broker = SimulatedBroker(market, DEFAULT_ASSET_SPECS, starting_cash_usd=settings.broker.starting_cash_usd,
                             fee_bps=settings.broker.fee_bps, slippage_bps=settings.broker.slippage_bps)
    session_id = f"{mode}-{settings.config_hash()[:8]}-{utc_stamp(ticks[0])[:8]}{shortened}"
    extra: dict = {}
    venues_meta: dict = {}
    if perps:   # the simulated USD-M account beside the simulated Alpaca book, one router, one session
        from .perp.wiring import build_perp_module, replay_span
        start, end = replay_span(market)
        module = build_perp_module(settings, market=market, folder=folder, main_broker=broker, main_venue="alpaca",
                                   start=start, end=end)
        broker = module.router
        extra = {"gate_rules": module.gate_rules, **module.risk_kwargs}
        venues_meta = {"venues": {"alpaca": "simulated Alpaca broker", "perp": "simulated Binance USD-M"},
                       "perp_symbols": perps,
                       "perp_starting_balance_usdt": settings.perps.starting_balance_usdt}
    llm = replay_llm(settings, ticks[0], ticks[-1])   # the recorded verdicts, or none: never a client
    engine, session_log, store = build_core(
        settings, market=market, broker=broker, session_id=session_id, mode=mode,
        log_dir=log_dir or settings.resolve_path(settings.engine.log_dir),
        metadata={"data_folder": str(folder), "data_start": ticks[0], "data_end": ticks[-1],
                  "fee_bps": settings.broker.fee_bps, "slippage_bps": settings.broker.slippage_bps,
                  "data_quality": {k: v for k, v in vars(market.quality).items() if v}, **venues_meta,
                  **llm.metadata},
        store_batch=500, history_dir=folder, persist=persist,
        **{**extra, "gate_rules": [*extra.get("gate_rules", []), *llm.gate_rules]})
    llm.attach(engine)
    replaced = store.forget_session(session_id) if store else 0  # ids are deterministic: a re-run replaces
    if replaced:
        log.info("replacing the %d stored cycles of an earlier run of %s", replaced, session_id)
    return Session(engine, SimulatedClock(ticks), session_log, store)


def run_session(session: Session, *, max_cycles: int | None = None, progress: bool = True) -> dict:
    """Drive the engine with the session's clock, then close the log and return the summary."""
    engine = session.engine
    total = len(session.clock.ticks) if isinstance(session.clock, SimulatedClock) else max_cycles
    if not isinstance(session.clock, SimulatedClock):
        print(f"HYDRA {engine.mode}: a cycle every {session.clock.interval_s} s"
              + (f" for {max_cycles} cycles" if max_cycles else " until Ctrl-C"), file=sys.stderr)
    if max_cycles is not None and total is not None:
        total = min(total, max_cycles)
    # the live view on a terminal, one line per cycle otherwise, notifications (hydra_engine/live_view.py)
    from .live_view import watchers_for
    watchers = watchers_for(session, progress=progress, total=total)

    folded = FoldedWarnings(lambda: engine.cycle)   # library warnings become notes, not raw log lines (#17)
    ran = [0]

    def tick(now: datetime) -> bool:
        ran[0] += 1
        engine.final_cycle = max_cycles is not None and ran[0] >= max_cycles   # issue #16: it books its fills
        if session.before_cycle is not None:
            session.before_cycle(engine, now)
        report = engine.run_cycle(now)
        for w in watchers:
            w.on_cycle(engine, report, now)
        return True

    try:
        for w in watchers:
            w.start()
        with folded:
            if isinstance(session.clock, SimulatedClock) and session.before_cycle is None:
                # a replay: the event-horizon driver (hydra_engine/horizon.py) skips the ticks on which
                # nothing can happen and catches them up exactly; watchers see the visited cycles
                from . import horizon

                def after(now: datetime) -> None:
                    for w in watchers:
                        w.on_cycle(engine, engine.last_report, now)

                horizon.run(engine, session.clock, max_ticks=max_cycles, after=after, mark_final=True)
            else:
                session.clock.run(tick, max_ticks=max_cycles)
    except KeyboardInterrupt:   # Ctrl-C in a replay ends it as the live clock's does: cleanly, with the summary
        log.info("session stopped by the user after %d cycles", engine.cycle)
    finally:
        if session.on_close is not None:
            session.on_close()
        summary = engine.summary()
        if folded.seen:
            summary["library_notes"] = folded.notes()
        for w in watchers:
            w.stop(summary)
        if session.session_log is not None:
            session.session_log.close(datetime.now(UTC), summary)
        if session.store is not None:
            session.store.save_state(engine.state_key, engine.state(), datetime.now(UTC))
            session.store.flush()
    if session.session_log is not None:
        summary["log"] = str(session.session_log.path)
        summary["journal"] = str(session.session_log.journal_path)
    if session.store is not None:
        summary["database"] = session.store.url
    return summary
