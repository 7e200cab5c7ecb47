"""The cycle: the strategy bible's loop in one readable place.

observe → detect regime → generate signals → propose (regime-compatible strategies only) → rank by
expected value (confidence × reward:risk × strategy weight) → filter (the entry gate, then risk) →
execute → manage open positions (stop, target, trailing stop, time) → adapt strategy weights.

The engine owns no I/O and no bookkeeping of its own: clock, market data, broker, store and log are
injected; the :class:`~hydra_engine.book.Book` holds positions and plans and books fills; the
:class:`~hydra_engine.executor.Executor` sends orders; the :class:`~hydra_engine.gate.EntryGate` is the one
answer to "may we open a position?". So the same code runs the offline simulation, backtests and Alpaca
paper trading. Fills are taken from the broker at the start of each cycle, so an order sent in cycle *t*
is filled by cycle *t+1*.
"""
from __future__ import annotations

import dataclasses

import logging
from datetime import datetime
from decimal import Decimal

from .book import Book, closed_trade_from_dict
from .config import Settings
from .engine_state import EngineState
from .regime_step import RegimeStep
from .cycle_report import RunStats, format_report, new_report, refused, session_summary
from .domain import UTC, Fill, Regime, RegimeReading, Signal, TradeProposal
from .executor import Executor, order_dict
from .gate import EntryGate, GateContext, GateState
from .gate_rules import (HaltRule, MarketClosedRule, ObservationRule, OnePositionRule, RegimeUnknownRule,
                         RiskBlockRule, StaleDataRule)
from .ports import Broker, BrokerError, MarketData, MarketSnapshot
from .plugin_kinds import SignalContext, apply_modifiers, below_threshold, score_signals, with_scores
from .positions import ExitInstruction, PositionManager
from .kill_log import KillLog
from .risk import PortfolioView, RiskManager
from .strategy import ExitRequest, Strategy, StrategyContext
from .tradelog import SessionLog, to_jsonable

log = logging.getLogger(__name__)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_RANKED_REWARD_RISK = 10.0
_ALLOW = {"state": GateState.ALLOW.name}


def _ranked_rr(p: TradeProposal) -> float:
    """A proposal's reward:risk as the ranking counts it: at most 10. A level farther than that is a
    plugin's "no level" (sma_crossover's out-of-reach stop and target: it exits on its crossover), not a
    promise; uncapped, its 1e6 outranked every other strategy whatever its confidence and weight."""
    return min(p.reward_risk, MAX_RANKED_REWARD_RISK)


def default_gate(settings: Settings, engine: "Engine") -> EntryGate:
    """Today's reasons to refuse an entry, in the order they are reported."""
    return EntryGate(
        book_rules=[ObservationRule(lambda: engine.settings.engine.observation_cycles), HaltRule(lambda: engine.halted),
                    RiskBlockRule(engine.risk)],
        symbol_rules=[StaleDataRule(), OnePositionRule(engine.book, engine.broker), RegimeUnknownRule(),
                      MarketClosedRule(engine.broker)])


class Engine(EngineState, RegimeStep):
    def __init__(self, settings: Settings, *, market: MarketData, broker: Broker, strategies: list[Strategy],
                 regime_detector, aggregator, weights, risk: RiskManager, position_manager: PositionManager,
                 session_id: str, mode: str, session_log: SessionLog | None = None, store=None,
                 store_batch: int = 1, regime_refitter=None, gate_rules: list | None = None,
                 modifiers: list | None = None, scorers: list | None = None):
        self.settings = settings
        self.market = market
        self.broker = broker
        self.strategies = strategies
        self.regime_detector = regime_detector
        self.regime_refitter = regime_refitter           # None: the model changes only by `hydra train`
        self.regime_refits: list[dict] = []
        self.kill_log = KillLog(settings.truth.backtest_auto_resume_days, enabled=mode == "backtest")
        self.regime_stale_cycles = 0                     # cycles whose regime was UNKNOWN for stale inputs (#17)
        self.regime_stale_since: datetime | None = None  # the first such cycle
        self.aggregator = aggregator
        self.weights = weights
        self.risk = risk
        self.position_manager = position_manager
        self.modifiers = list(modifiers or ())          # signal modifiers (e.g. the cross-asset graph), in order
        self.scorers = list(scorers or ())              # signal scorers (the ML meta-label model), issue #21
        self._ml: dict = {}                             # this cycle's (strategy, symbol) -> (probability, scorer)
        self.session_id = session_id
        self.mode = mode
        self.session_log = session_log                   # None and store None: persistence off (sweep workers)
        self.store = store
        self.store_batch = store_batch
        self.cycle = 0
        self.starting_equity_usd = Decimal(str(settings.broker.starting_cash_usd))   # the account's, once known
        self.stats = RunStats()
        self.book = Book(broker, symbols=settings.universe.symbols, strategy_names=[s.name for s in strategies],
                         listener=self, order_dict=order_dict)
        self.executor = Executor(broker, self.book, session_id=session_id, stats=self.stats)
        self.halted: str | None = None                   # e.g. a reconciliation mismatch: no entries
        self.gate = default_gate(settings, self)
        for rule in gate_rules or ():
            self.gate.add(rule)
        # called once a cycle right after OBSERVE as ``hook(now, snapshot, report)`` (e.g. the LLM analyst's
        # scan trigger and verdict trace); one that raises is recorded in the cycle's errors and skipped
        self.cycle_hooks: list = []
        self.regime = RegimeReading(Regime.UNKNOWN, 0.0, "none", _EPOCH, {"why": "not detected yet"})
        self._gating: tuple = (None, [], [])             # (reading, strategies run, strategies gated)
        self._vol_pct: tuple = (None, None)              # (reading, reference vol percentile when it came)
        self._last_report: dict | None = None
        self._unformatted: dict | None = None            # the last report, if its formatting was deferred
        self.closed_trades: list[dict] = []
        self.caught_up_fills: list[tuple[Fill, dict | None]] = []   # fills applied before cycle 1 (restart)
        self.startup_notes: list[str] = []               # said by the first cycle (e.g. fills recovered at start-up)
        self.faults: dict[str, float] = {}               # broker retries, 429s, waits: the summary's "faults"
        self.startup_orders: list[dict] = []             # recorded by the next cycle: orders resolved at start-up
                                                         # (sent by a killed process) and a kill's closing orders
        # issue #16: the paper session's checks that belong inside a cycle, each (engine, report, trades, now):
        # after the cycle's fill poll (reconciliation, so a fill just booked is never a mismatch) and at its
        # end, before it is recorded (faults and slow cycles of *this* cycle; the final cycle's fills)
        self.after_fills_hooks: list = []
        self.cycle_end_hooks: list = []
        self.summary_sections: dict = {}                 # name -> callable: extra sections of the summary
        self.state_sections: dict = {}                   # name -> object with to_state()/load_state(): resumable
        self.final_cycle = False                         # set by the driver: the session ends after this cycle
        self.market_now: MarketSnapshot | None = None    # the last cycle's snapshot (horizon promises read it)
        self._update_marks = broker.update_marks if broker.capabilities.marks_from_engine else None
        history = getattr(market, "history", None)       # replay data: plugins may pre-compute (causally)
        if history is not None:
            for strat in strategies:
                wanted = [n.symbol for n in strat.data_needs if n.kind == "bars"]
                strat.prepare({s: h for s in wanted if (h := history(s)) is not None})

    # the book's state, read by tests, commands and paper start-up
    positions = property(lambda self: self.book.positions)
    plans = property(lambda self: self.book.plans)
    exit_reasons = property(lambda self: self.book.exit_reasons)
    native_stops = property(lambda self: self.book.native_stops)
    unresolved = property(lambda self: self.book.unresolved)
    order_seq = property(lambda self: self.executor.order_seq,
                         lambda self, value: setattr(self.executor, "order_seq", value))
    fills_known_at = property(lambda self: self.book.fills_known_at,
                              lambda self, value: setattr(self.book, "fills_known_at", value))

    # ================================================================== the cycle
    def run_cycle(self, now: datetime) -> dict:
        """Run one cycle and return its report (the JSON-ready record of what it saw and did)."""
        self.advance(now)
        return self.last_report

    def advance(self, now: datetime) -> None:
        """Run one cycle without handing its report back (``last_report`` still returns it; its JSON
        formatting waits until something reads it). For drivers that ignore the report."""
        self.cycle += 1
        report = new_report(self.cycle, now)
        trades: list[dict] = []
        try:
            self._cycle(now, report, trades)
        except BrokerError as exc:
            # a broker call that still fails after the adapter's retries: skip the rest of the cycle --
            # nothing more is sent -- and record what happened; the next cycle starts afresh
            report["errors"].append(f"cycle cut short: {type(exc).__name__}: {exc}")
            report["notes"].append("broker unavailable: the rest of this cycle was skipped (no further orders)")
            report.setdefault("regime", to_jsonable(self.regime))
            last = self.last_report
            if last:
                report.setdefault("equity_usd", last.get("equity_usd"))
                report.setdefault("cash_usd", last.get("cash_usd"))
        self._run_hooks(self.cycle_end_hooks, report, trades, now)
        self._finish_cycle(report, trades, now)

    def _run_hooks(self, hooks: list, report: dict, trades: list[dict], now: datetime) -> None:
        for hook in hooks:
            try:
                hook(self, report, trades, now)
            except BrokerError as exc:   # a check the broker could not answer: said, and the cycle goes on
                report["errors"].append(f"{getattr(hook, '__name__', 'hook')}: {type(exc).__name__}: {exc}")

    @property
    def last_report(self) -> dict | None:
        """The last cycle's report, JSON-ready."""
        if self._unformatted is not None:
            format_report(self._unformatted)
            self._unformatted = None
        return self._last_report

    def _cycle(self, now: datetime, report: dict, trades: list[dict]) -> None:
        self._book_fills(now, report, trades)             # executions since the last cycle
        self._run_hooks(self.after_fills_hooks, report, trades, now)
        for t in trades:                                  # 9. ADAPT weights before this cycle ranks by them
            self.weights.update(closed_trade_from_dict(t))
        for pos in self.book.settle_orders(now, report):  # entries done: the venue may trail them now
            self.executor.protect(pos, now, report)
        market = self._observe(now, report)               # 1. OBSERVE
        self.market_now = market                          # what replay promises read (hydra_engine/horizon.py)
        for hook in self.cycle_hooks:
            try:
                hook(now, market, report)
            except Exception as exc:  # noqa: BLE001 -- a side task must not stop the cycle
                report["errors"].append(f"cycle hook {getattr(hook, 'name', type(hook).__name__)}: "
                                        f"{type(exc).__name__}: {exc}")
        self._detect_regime(market, now, report)          # 2. DETECT REGIME
        self.kill_log.step(self, now, report)             # kills recorded; a backtest's auto-resume (#17)
        ctx = GateContext(now, market, self.regime, self.cycle, {}, None)
        book_verdict = self._book_mode(ctx, report)
        # 3.-7. SIGNALS, PROPOSALS, RANK, FILTER, EXECUTE. The quiet-bar fast path: when no plugin wants
        # this cycle (Strategy.wants_cycle) none of these steps could produce anything, so they are skipped
        if self._some_plugin_wakes(market):
            signals, combined = self._signals(now, market, report)
            proposals, exit_requests = self._propose(now, market, combined, report)
            ranked = self._rank(proposals, report)
            self._filter_and_execute(ranked, combined, market, ctx, book_verdict, now, report)
        else:
            self.stats.quiet_cycles += 1
            exit_requests = []
            if self._gating[0] is not self.regime:   # what the full path reports when every plugin stands by
                regime = self.regime.regime
                self._gating = (self.regime, [s.name for s in self.strategies if s.trades_in(regime)],
                                [s.name for s in self.strategies if not s.trades_in(regime)])
            report["strategies_run"], report["strategies_gated"] = self._gating[1][:], self._gating[2][:]
        self._manage(market, ctx, exit_requests, now, report)   # 8. MANAGE open positions
        report["weights"] = self.weights.as_dict()             # 9. the weights, adapted above
        report["equity_usd"] = report["cash_usd"] = self.broker.account()

    def _book_mode(self, ctx: GateContext, report: dict):
        """The entry gate's book verdict; a refusal sets the cycle's mode (observe, killed, blocked) and
        says why. Also what a skipped cycle reports (``horizon.catch_up``): one code path."""
        book_verdict = self.gate.for_book(ctx)
        if book_verdict.verdict.state is not GateState.ALLOW:
            report["mode"] = ("observe" if book_verdict.verdict.rule == "observe"
                              else "killed" if self.risk.kill_requested() else "blocked")
            if report["mode"] != "observe":
                report["notes"].append(book_verdict.verdict.reason)
        return book_verdict

    # ================================================================== steps
    def _book_fills(self, now: datetime, report: dict, trades: list[dict]) -> None:
        if self.caught_up_fills:  # applied at start-up, recorded by the first cycle
            for fill, trade in self.caught_up_fills:
                report["fills"].append(to_jsonable(fill))
                if trade:
                    trades.append(trade)
            self.caught_up_fills = []
        if self.startup_notes:
            report["notes"] += self.startup_notes
            self.startup_notes = []
        if self.startup_orders:
            report["orders"] += self.startup_orders
            self.startup_orders = []
        self.poll_and_book_fills(now, report, trades)

    def poll_and_book_fills(self, now: datetime, report: dict, trades: list[dict]) -> int:
        """Poll the broker's fills and book them into ``report`` (and ``trades``); returns how many."""
        self.book.fills_known_at = now
        n = 0
        try:
            # a perp venue settles funding too: the book takes payments and fills in time order
            perp = self.broker.capabilities.settles_funding
            payments = self.broker.settle_funding(now) if perp else ()
            fills = self.broker.poll_fills(now)
            n = self.book.apply_venue_events(payments, fills, self.broker.venue_exit_reason if perp else None,
                                             report, trades)
        except BrokerError as exc:
            report["errors"].append(f"poll_fills: {type(exc).__name__}: {exc}")
        return n

    def _observe(self, now: datetime, report: dict) -> MarketSnapshot:
        market = self.market.snapshot(now)
        prices = market.prices()
        if self._update_marks is not None:
            self._update_marks(prices)
        report["prices"] = prices   # rounded by format_report
        report["stale_symbols"] = dict(market.stale)
        for feed, why in market.feed_problems.items():  # e.g. Binance down: its strategies stand down
            report["notes"].append(f"data feed {feed} unhealthy: {why}")
        kill_reason = self.risk.on_equity(self.broker.account().equity_usd, now)
        if kill_reason:
            report["notes"].append(f"kill switch fired: {kill_reason}")
        return market

    def _some_plugin_wakes(self, market: MarketSnapshot) -> bool:
        for strat in self.strategies:
            try:
                if strat.wants_cycle(market):
                    return True
            except Exception:  # a broken predicate proves nothing: take the full cycle
                return True
        return False

    def _held_by(self) -> dict[str, dict[str, float]]:
        held: dict[str, dict[str, float]] = {}
        for sym, pos in self.book.positions.items():
            held.setdefault(pos.strategy, {})[sym] = float(pos.qty)
        return held

    def _signals(self, now: datetime, market: MarketSnapshot, report: dict) -> tuple[list[Signal], dict]:
        """3. Each plugin's signals (a plugin that raises stands down for this cycle), then aggregation."""
        held_by = self._held_by()
        signals: list[Signal] = []
        owners: list[str] = []   # the plugin of each signal (its score goes to that plugin's proposals)
        for strat in self.strategies:
            ctx = StrategyContext(now, market, self.regime, held_by.get(strat.name, {}))
            try:
                produced = strat.generate_signals(ctx)
                signals.extend(produced)
                if produced:
                    self.stats.act(strat.name, "signals", len(produced))
                owners += [strat.name] * (len(signals) - len(owners))
            except Exception as exc:  # one plugin's failure stands that plugin down, not the engine
                report["errors"].append(f"{strat.name}.generate_signals: {type(exc).__name__}: {exc}")
        if self.modifiers:   # each scaling is recorded with the reason (the edge) that caused it
            signals, trace = apply_modifiers(self.modifiers, signals, SignalContext(now, market, self.regime),
                                             report["errors"])
            report["modifiers"] = trace
        report["signals"] = list(signals)   # made JSON-ready by format_report, when something reads the report
        if self.scorers:   # each signal's ml_score, or why it abstained (the report's "ml_scores")
            self._ml, report["ml_scores"] = score_signals(self.scorers, signals, owners, SignalContext(
                now, market, self.regime), report["errors"])
        combined = self.aggregator.combine(signals, now)
        report["aggregated"] = {s: {"score": round(c.score, 6), "confidence": round(c.confidence, 6),
                                    "contributors": list(c.contributors)} for s, c in combined.items()}
        return signals, combined

    def _propose(self, now: datetime, market: MarketSnapshot, combined: dict,
                 report: dict) -> tuple[list[TradeProposal], list[ExitRequest]]:
        """4. Proposals from regime-compatible plugins; exit requests from every plugin."""
        held_by = self._held_by()
        proposals: list[TradeProposal] = []
        exit_requests: list[ExitRequest] = []
        for strat in self.strategies:
            ctx = StrategyContext(now, market, self.regime, held_by.get(strat.name, {}))
            mine = {s: combined[s] for s in strat.assets if s in combined}
            try:
                items = strat.propose(ctx, mine)
            except Exception as exc:
                report["errors"].append(f"{strat.name}.propose: {type(exc).__name__}: {exc}")
                continue
            exit_requests.extend(i for i in items if isinstance(i, ExitRequest))
            if strat.trades_in(self.regime.regime):
                report["strategies_run"].append(strat.name)
                mine = [i for i in items if isinstance(i, TradeProposal)]
                proposals.extend(mine)
                if mine:
                    self.stats.act(strat.name, "proposals", len(mine))
            else:
                report["strategies_gated"].append(strat.name)
                self.stats.act(strat.name, "regime_gated_cycles")
        return proposals, exit_requests

    def _rank(self, proposals: list[TradeProposal], report: dict) -> list[TradeProposal]:
        """5. By expected value = confidence × reward:risk × strategy weight (stable: ties keep plugin order);
        a scorer's probability replaces the confidence where it scored (``with_scores``)."""
        proposals = with_scores(proposals, ml := self._ml if self.scorers else {})
        scored = [(p, _ranked_rr(p), self.weights.weight(p.strategy)) for p in proposals]
        scored.sort(key=lambda e: -e[0].confidence * e[1] * e[2])
        for p, rr, w in scored:
            report["proposals"].append({**to_jsonable({k: getattr(p, k) for k in (
                "strategy", "symbol", "side", "entry_price", "stop_price", "target_price", "confidence",
                "expected_holding", "thesis")}), "reward_risk": round(rr, 6), "weight": round(w, 6),
                "expected_value": round(p.confidence * rr * w, 6),
                **({"ml_score": round(m[0], 6), "scorer": m[1]} if (m := ml.get((p.strategy, p.symbol))) else {})})
        self.stats.proposals += len(scored)
        return [p for p, _, _ in scored]

    def _filter_and_execute(self, ranked: list[TradeProposal], combined: dict, market: MarketSnapshot,
                            ctx: GateContext, book_verdict, now: datetime, report: dict) -> None:
        """6. FILTER: the entry gate (book, then symbol), then the risk layer sizes or vetoes; 7. EXECUTE."""
        if not ranked:
            return
        v = book_verdict.verdict
        if v.state is not GateState.ALLOW:
            rule = "observe" if v.rule == "observe" else "entries_blocked"
            self.stats.veto(rule, len(ranked))
            gate = {"state": v.state.name, "rule": v.rule}
            report["decisions"] += [refused(p.strategy, p.symbol, "engine", rule, v.reason, gate) for p in ranked]
            return
        view = self._portfolio_view(market, now)
        for p in ranked:
            decision, p = self._decide(p, market, view, ctx)   # the risk layer may lower a perp's leverage
            report["decisions"].append(decision)
            if decision["approved"]:
                view_of = combined.get(p.symbol)
                self.executor.enter(p, Decimal(decision["qty"]), now, report, self.regime,
                                    view_of.contributors if view_of else ())

    def _decide(self, p: TradeProposal, market: MarketSnapshot, view: PortfolioView,
                ctx: GateContext) -> tuple[dict, TradeProposal]:
        if p.extended_hours:
            ctx = dataclasses.replace(ctx, extended_hours=True)
        low = below_threshold(p, self._ml, self.settings.scorers.threshold) if self.scorers else None
        if low:   # the scorer's verdict: too unlikely to pay its costs
            self.stats.veto(low[0])
            return refused(p.strategy, p.symbol, "scorer", *low, _ALLOW), p
        gated = self.gate.for_symbol(ctx, p.symbol, p.side)
        v = gated.verdict
        if v.state is not GateState.ALLOW:
            self.stats.veto(v.rule)
            return refused(p.strategy, p.symbol, gated.layer, v.rule, v.reason, {"state": v.state.name, "rule": v.rule}), p
        d = self.risk.evaluate(p, self.broker.asset(p.symbol), view, market)
        if d.approved:
            self.stats.approved += 1
        else:
            self.stats.veto(d.rule)
        return {"strategy": p.strategy, "symbol": p.symbol, "approved": d.approved, "layer": "risk", "rule": d.rule,
                "reason": d.reason, "qty": str(d.qty), "notional_usd": str(d.notional_usd),
                "details": to_jsonable(d.details), "gate": _ALLOW}, d.proposal

    def _manage(self, market: MarketSnapshot, ctx: GateContext, exit_requests: list[ExitRequest],
                now: datetime, report: dict) -> None:
        """8. Stops, targets, trails and time limits; a kill flattens; plugins' own exit requests; a
        symbol the gate BLOCKs is closed."""
        kill = self.risk.kill_requested()
        if kill is not None and self.book.plans:
            self.executor.cancel_working_entries(report)
        positions = self.book.positions
        exits = self.position_manager.manage(positions, market, now, kill=kill is not None,
                                             native_stops=self.book.native_stops)
        if exit_requests:
            exits += [ExitInstruction(r.symbol, "strategy", market.price(r.symbol), r.reason) for r in exit_requests
                      if r.symbol in positions and positions[r.symbol].strategy == r.strategy]
        if positions:
            exits += [ExitInstruction(s, f"gate:{v.rule}", market.price(s), v.reason)
                      for s, v in self.gate.flatten(ctx, list(positions)).items()]
        seen: set[str] = set()
        for ex in exits:
            if ex.symbol not in seen:
                seen.add(ex.symbol)
                self.executor.exit(ex, now, report)

    def _finish_cycle(self, report: dict, trades: list[dict], now: datetime) -> None:
        self.stats.cycles += 1
        self.stats.errors += len(report["errors"])
        self.closed_trades.extend(trades)
        self._last_report, self._unformatted = report, report
        if self.session_log or self.store:
            self._persist(self.last_report, trades, now)

    def _portfolio_view(self, market: MarketSnapshot, now: datetime) -> PortfolioView:
        """One view per cycle: approvals reserve room in it, so several entries in one cycle cannot
        together break a limit; working entry orders count as exposure before they fill."""
        return PortfolioView.of(now, self.broker.account(), self.broker.open_orders(), self.book, market)

    def summary(self) -> dict:
        summary = session_summary(self)
        if self.regime_stale_cycles:   # issue #17: said in the run summary, not only per cycle
            summary["regime_stale_cycles"] = self.regime_stale_cycles
            summary["regime_stale_from"] = to_jsonable(self.regime_stale_since)
        if self.kill_log.entries:      # the latest kill, for the console; the backtest reports them all
            summary["kill"] = self.kill_log.as_json()[-1]
            summary["kills"] = self.kill_log.as_json()
            summary["kill_policy"] = self.kill_log.policy
        for name, section in self.summary_sections.items():   # e.g. the ML monitors (#21)
            summary[name] = to_jsonable(section())
        return summary
