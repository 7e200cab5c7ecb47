"""The cycle: the strategy bible's loop in one readable place.

observe → detect regime → generate signals → propose (regime-compatible strategies only) → rank by
expected value (confidence × reward:risk × strategy weight) → filter (risk) → execute → manage open
positions (stop, target, trailing stop, time) → adapt strategy weights.

The engine owns no I/O of its own: clock, market data, broker, store and log are injected, so the
same code runs the offline simulation, backtests and Alpaca paper trading. Fills are taken from the
broker at the start of each cycle, so an order sent in cycle *t* is filled by cycle *t+1*.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal

from .config import Settings
from .domain import (UTC, AssetClass, ClosedTrade, Fill, Order, OrderStatus, OrderType, Position, Regime,
                     RegimeReading, Side, Signal, TimeInForce, TradeProposal, make_client_order_id)
from .ports import ZERO, Account, Broker, BrokerError, MarketData, MarketSnapshot, UnknownOrderOutcome, to_decimal
from .regime import TrendVolRule
from .positions import ExitInstruction, PositionManager, uses_native_trailing
from .risk import PortfolioView, RiskManager
from .strategy import ExitRequest, Strategy, StrategyContext
from .tradelog import SessionLog, to_jsonable

log = logging.getLogger(__name__)
_VOL_RULE = TrendVolRule()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CENT = Decimal("0.01")
_CLOSED_FIELDS = tuple(ClosedTrade.__dataclass_fields__)   # plain str/float fields
MAX_FEE_SHARE = Decimal("0.02")   # a coin fee above 2 % of the fill is not a fee: leave it to reconciliation


@dataclass(slots=True)
class PendingPlan:
    """What an entry order should become once filled: the proposal's protective plan."""

    proposal: TradeProposal
    regime: str
    regime_confidence: float
    contributors: tuple = ()      # the signals behind the entry, scored when the trade closes
    bracket: bool = False         # the broker holds the stop and target (bracket legs) at the plan's prices
    held_before: Decimal | None = None   # the broker's quantity (dust) before an entry whose fee is taken in coins
    booked_qty: Decimal = ZERO    # filled so far (every slice booked, so the plan can end with its order)
    position_qty: Decimal = ZERO  # of that, the part in the current position: less once --adopt dropped a
                                  # position the broker no longer held and a later slice opened a new one
    fee_coins: Decimal = ZERO     # of which the broker kept as its fee (Alpaca crypto)


@dataclass(slots=True)
class RunStats:
    cycles: int = 0
    proposals: int = 0
    approved: int = 0
    vetoes: dict[str, int] = field(default_factory=dict)
    orders: int = 0
    rejected: int = 0
    errors: int = 0
    quiet_cycles: int = 0      # cycles in which no plugin woke: steps 3-7 skipped (the quiet-bar fast path)


MAX_RANKED_REWARD_RISK = 10.0


def _ranked_rr(p: TradeProposal) -> float:
    """A proposal's reward:risk as the ranking counts it: at most 10. A level farther than that is a
    plugin's "no level" (sma_crossover's out-of-reach stop and target: it exits on its crossover), not a
    promise; uncapped, its 1e6 outranked every other strategy whatever its confidence and weight."""
    return min(p.reward_risk, MAX_RANKED_REWARD_RISK)


def _order_dict(o: Order) -> dict:
    """An order as the cycle report records it: ``to_jsonable`` of these fields, with the enums and
    strings written out (it runs for every order sent or refused)."""
    j = to_jsonable
    return {"client_order_id": o.client_order_id, "symbol": o.symbol, "side": o.side.value, "qty": j(o.qty),
            "order_type": o.order_type.value, "time_in_force": o.time_in_force.value, "created_at": j(o.created_at),
            "strategy": o.strategy, "purpose": o.purpose, "status": o.status.value, "broker_order_id": o.broker_order_id,
            "filled_qty": j(o.filled_qty), "filled_avg_price": j(o.filled_avg_price), "reject_reason": o.reject_reason,
            "limit_price": j(o.limit_price), "stop_price": j(o.stop_price), "trail_percent": j(o.trail_percent),
            "take_profit_price": j(o.take_profit_price), "stop_loss_price": j(o.stop_loss_price)}


def _format_report(report: dict) -> None:
    """Turn a cycle report's raw values (see Engine.advance) into their JSON-ready form, in place and
    keeping the key order: ISO time, prices rounded to 8 places (non-finite ones dropped), a copy of
    the regime reading, weights rounded to 6 places, equity and cash to the cent."""
    report["ts"] = to_jsonable(report["ts"])
    if "prices" in report:
        report["prices"] = {s: round(p, 8) for s, p in report["prices"].items() if math.isfinite(p)}
    if "regime" in report:
        report["regime"] = dict(report["regime"])
    if "weights" in report:
        report["weights"] = {k: round(v, 6) for k, v in report["weights"].items()}
    account = report.get("equity_usd")
    if isinstance(account, Account):
        report["equity_usd"] = str(account.equity_usd.quantize(CENT))
        report["cash_usd"] = str(account.cash_usd.quantize(CENT))


class Engine:
    def __init__(self, settings: Settings, *, market: MarketData, broker: Broker, strategies: list[Strategy],
                 regime_detector, aggregator, weights, risk: RiskManager, position_manager: PositionManager,
                 session_id: str, mode: str, session_log: SessionLog | None = None, store=None,
                 store_batch: int = 1, regime_refitter=None):
        self.settings = settings
        self.market = market
        self.broker = broker
        self.strategies = strategies
        self.regime_detector = regime_detector
        self.regime_refitter = regime_refitter           # None: the model changes only by `hydra train`
        self.regime_refits: list[dict] = []
        self.aggregator = aggregator
        self.weights = weights
        self.risk = risk
        self.position_manager = position_manager
        self.session_id = session_id
        self.mode = mode
        self.session_log = session_log
        self.store = store
        self.store_batch = store_batch
        self.cycle = 0
        self.order_seq = 0
        self.starting_equity_usd = Decimal(str(settings.broker.starting_cash_usd))   # the account's, once known
        self.positions: dict[str, Position] = {}
        self.plans: dict[str, PendingPlan] = {}          # client_order_id -> entry plan
        self.exit_reasons: dict[str, str] = {}           # client_order_id -> why we exit
        self.exit_booked: dict[str, Decimal] = {}        # exit client_order_id -> quantity booked from its fills
        self.regime = RegimeReading(Regime.UNKNOWN, 0.0, "none", _EPOCH, {"why": "not detected yet"})
        self._regime_json: tuple = (None, None)          # (reading, its to_jsonable form): the cycle log's copy
        self._gating: tuple = (None, [], [])             # (reading, strategies run, strategies gated)
        self._vol_pct: tuple = (None, None)              # (reading, reference vol percentile when it came)
        self.stats = RunStats()
        self._last_report: dict | None = None
        self._unformatted: dict | None = None            # the last report, if its formatting was deferred
        self.closed_trades: list[dict] = []
        self.native_stops: set[str] = set()              # symbols whose trailing stop the broker holds
        self.entry_sources: dict[str, list] = {}         # symbol -> (source, score) behind the open entry
        self.halted: str | None = None                   # e.g. a reconciliation mismatch: no entries
        self.caught_up_fills: list[tuple[Fill, dict | None]] = []   # issue #7: fills applied before cycle 1
        self.startup_notes: list[str] = []               # said by the first cycle (e.g. fills recovered at start-up)
        self.unresolved: dict[str, Order] = {}           # submits whose outcome the broker did not tell
        self._kill_canceled: set[str] = set()           # entries a kill switch has asked the broker to cancel
        self.fills_known_at: datetime | None = None      # when the fills being applied became known (cycle time)
        self._update_marks = getattr(broker, "update_marks", None)   # simulated brokers are told the prices
        history = getattr(market, "history", None)       # replay data: plugins may pre-compute (causally)
        if history is not None:
            for strat in strategies:
                wanted = [n.symbol for n in strat.data_needs if n.kind == "bars"]
                strat.prepare({s: h for s in wanted if (h := history(s)) is not None})

    # ================================================================== the cycle
    def run_cycle(self, now: datetime) -> dict:
        """Run one cycle and return its report (the JSON-ready record of what it saw and did)."""
        self.advance(now)
        return self.last_report

    def advance(self, now: datetime) -> None:
        """Run one cycle without handing its report back. The report is still written to the session
        log and the store when there are any, and ``last_report`` still returns it; only its JSON
        formatting (time stamp, rounded prices, regime and weight copies, equity strings: several µs)
        waits until something reads it. For drivers that ignore the report, e.g. the benchmarks."""
        self.cycle += 1
        # "ts", "prices", "regime", "weights", "equity_usd" and "cash_usd" hold raw values (the datetime,
        # float prices, the shared regime dict, the Account) until _format_report makes them JSON-ready
        report: dict = {"cycle": self.cycle, "ts": now, "mode": "trade", "signals": [],
                        "aggregated": {}, "strategies_run": [], "strategies_gated": [], "proposals": [],
                        "decisions": [], "orders": [], "fills": [], "exits": [], "errors": [], "notes": []}
        trades: list[dict] = []
        try:
            self._cycle(now, report, trades)
        except BrokerError as exc:
            # issue #7: a broker call that still fails after the adapter's retries (a 5xx storm, a
            # malformed body) used to escape the cycle: the cycle's record (orders already sent
            # included) was lost and the live loop could stop. Skip the rest of the cycle -- nothing
            # more is sent -- and record what happened; the next cycle starts afresh.
            report["errors"].append(f"cycle cut short: {type(exc).__name__}: {exc}")
            report["notes"].append("broker unavailable: the rest of this cycle was skipped (no further orders)")
            report.setdefault("regime", to_jsonable(self.regime))
            last = self.last_report
            if last:
                report.setdefault("equity_usd", last.get("equity_usd"))
                report.setdefault("cash_usd", last.get("cash_usd"))
        self._finish_cycle(report, trades, now)

    @property
    def last_report(self) -> dict | None:
        """The last cycle's report, JSON-ready."""
        if self._unformatted is not None:
            _format_report(self._unformatted)
            self._unformatted = None
        return self._last_report

    def _cycle(self, now: datetime, report: dict, trades: list[dict]) -> None:
        cfg = self.settings.engine
        # --- executions since the last cycle (entries become managed positions, exits close trades)
        if self.caught_up_fills:  # issue #7: applied at start-up, recorded by the first cycle
            for fill, trade in self.caught_up_fills:
                report["fills"].append(to_jsonable(fill))
                if trade:
                    trades.append(trade)
            self.caught_up_fills = []
        if self.startup_notes:
            report["notes"] += self.startup_notes
            self.startup_notes = []
        self.fills_known_at = now
        try:
            for fill in self.broker.poll_fills(now):
                report["fills"].append(to_jsonable(fill))
                trade = self._apply_fill(fill, report)
                if trade:
                    trades.append(trade)
        except BrokerError as exc:
            report["errors"].append(f"poll_fills: {type(exc).__name__}: {exc}")
        # --- ADAPT strategy weights on the trades these fills closed: before this cycle ranks its proposals
        # by confidence x reward:risk x weight, and before anything below can cut the cycle short
        for t in trades:
            self.weights.update(closed_trade_from_dict(t))
        for coid, order in list(self.unresolved.items()) if self.unresolved else ():  # ask again about unknown outcomes
            try:
                known = self.broker.get_order(coid)
            except BrokerError:
                continue
            if known is not None or now - order.created_at > timedelta(minutes=10):
                del self.unresolved[coid]
                if known is None:  # never reached the broker: drop the plan, say so
                    self.plans.pop(coid, None)
                    self._forget_exit(coid)
                    report["notes"].append(f"order {coid} was never accepted by the broker")
        for coid in list(self.plans) + list(self.exit_reasons) if self.plans or self.exit_reasons else ():
            try:
                order = self.broker.get_order(coid)
            except BrokerError:
                continue
            if order is None:
                if coid in self.plans and coid not in self.unresolved:
                    # a plan restored after a restart whose order the broker never accepted (its submit's
                    # outcome was still unknown when the process died): it would block the symbol forever
                    del self.plans[coid]
                    report["notes"].append(f"order {coid} is unknown to the broker: its entry plan is dropped")
                continue
            booked = self.plans[coid].booked_qty if coid in self.plans else self.exit_booked.get(coid, ZERO)
            if order.status.is_open or booked < order.filled_qty:
                continue        # still working, or a slice is still to come through the fill poll
            if order.status is not OrderStatus.FILLED:
                report["orders"].append(_order_dict(order))   # rejected/canceled at fill time (maybe partly filled)
            plan = self.plans.pop(coid, None)
            if self.exit_reasons.get(coid) == "trailing_stop" and order.status is not OrderStatus.FILLED:
                # the broker's trailing stop ended unfilled (canceled, expired, rejected): nothing holds the
                # stop there any more, so the engine manages it again
                if order.symbol in self.native_stops:
                    self.native_stops.discard(order.symbol)
                    report["notes"].append(f"{order.symbol}: the broker's trailing stop {coid} ended "
                                           f"{order.status.value}; the engine manages the stop again")
            self._forget_exit(coid)
            pos = self.positions.get(plan.proposal.symbol) if plan is not None and plan.booked_qty else None
            if pos is not None and order.status is OrderStatus.FILLED and pos.symbol not in self.native_stops:
                self._place_native_trailing(pos, now, report)  # the entry is done: the broker may trail it now

        # --- 1. OBSERVE
        market = self.market.snapshot(now)
        prices = market.prices()
        if self._update_marks is not None:
            self._update_marks(prices)
        report["prices"] = prices   # rounded by _format_report
        report["stale_symbols"] = dict(market.stale)
        for feed, why in market.feed_problems.items():  # e.g. Binance down: its strategies stand down
            report["notes"].append(f"data feed {feed} unhealthy: {why}")
        account = self.broker.account()
        kill_reason = self.risk.on_equity(account.equity_usd, now)
        if kill_reason:
            report["notes"].append(f"kill switch fired: {kill_reason}")

        # --- 2. DETECT REGIME (every regime_refresh_cycles)
        model_changed = False
        if self.cycle == 1 or self.cycle % cfg.regime_refresh_cycles == 0:
            model_changed = self._refit_regime_if_due(market, now, report)
            try:
                self.regime = self.regime_detector.detect(market)
            except Exception as exc:  # a broken detector restricts entries, it does not stop the loop
                self.regime = RegimeReading(Regime.UNKNOWN, 0.0, getattr(self.regime_detector, "name", "?"), now,
                                            {"why": f"detector failed: {exc}"})
                report["errors"].append(f"regime: {exc}")
        if self._regime_json[0] is not self.regime:   # converted once per reading, not once per cycle
            self._regime_json = (self.regime, to_jsonable(self.regime))
        report["regime"] = self._regime_json[1]   # copied by _format_report
        # a new model names the same market afresh: a changed name then is a relabel, not a regime break
        market_kill = self.risk.on_market(self.regime, self._vol_percentile(market), now,
                                          regime_break=False if model_changed else None)
        if market_kill:
            report["notes"].append(f"kill switch fired: {market_kill}")

        observing = self.cycle <= cfg.observation_cycles
        blocked = self.halted or self.risk.entries_blocked(now)
        if observing:
            report["mode"] = "observe"
        elif blocked:
            report["mode"] = "killed" if self.risk.kill_requested() else "blocked"
            report["notes"].append(blocked)

        # --- 3.-7. SIGNALS, PROPOSALS, RANK, FILTER (risk), EXECUTE. The quiet-bar fast path: when no
        # plugin wants this cycle (Strategy.wants_cycle), none of these steps could produce a signal, a
        # proposal, an order or an exit request, so they are skipped; everything around them (fills,
        # marks, kill switches, regime, position management, weights, the report) runs as always.
        if self._some_plugin_wakes(market):
            exit_requests = self._signals_to_orders(now, market, report, observing, blocked)
        else:
            self.stats.quiet_cycles += 1
            exit_requests = []
            # what the full path reports when every plugin stands by (the split changes only with the reading)
            if self._gating[0] is not self.regime:
                regime = self.regime.regime
                self._gating = (self.regime, [s.name for s in self.strategies if s.trades_in(regime)],
                                [s.name for s in self.strategies if not s.trades_in(regime)])
            report["strategies_run"], report["strategies_gated"] = self._gating[1][:], self._gating[2][:]

        # --- 8. MANAGE open positions
        kill = self.risk.kill_requested()
        if kill is not None and self.plans:
            self._cancel_working_entries(report)
        exits = self.position_manager.manage(self.positions, market, now, kill=kill is not None,
                                             native_stops=self.native_stops)
        if exit_requests:
            exits += [ExitInstruction(r.symbol, "strategy", market.price(r.symbol), r.reason) for r in exit_requests
                      if r.symbol in self.positions and self.positions[r.symbol].strategy == r.strategy]
        seen: set[str] = set()
        for ex in exits:
            if ex.symbol in seen:
                continue
            seen.add(ex.symbol)
            self._execute_exit(ex, now, report)

        # --- 9. the strategy weights, adapted above on the trades this cycle's fills closed
        report["weights"] = self.weights.as_dict()   # rounded by _format_report

        account = self.broker.account()
        report["equity_usd"] = report["cash_usd"] = account   # formatted by _format_report

    def _cancel_working_entries(self, report: dict) -> None:
        """A kill switch stops new exposure: a working entry (queued for the next open, or the rest of a
        partly filled one) is canceled once; whatever of it filled is a position and is flattened."""
        try:
            working = [o for o in self.broker.open_orders() if o.client_order_id in self.plans
                       and o.client_order_id not in self._kill_canceled]
        except BrokerError as exc:
            report["errors"].append(f"kill switch: working entries not listed ({exc}); retried next cycle")
            return
        for o in working:
            try:
                self.broker.cancel(o.client_order_id)
            except BrokerError as exc:
                report["errors"].append(f"kill switch: entry {o.client_order_id} not canceled: {exc}")
                continue
            self._kill_canceled.add(o.client_order_id)
            report["notes"].append(f"kill switch: working entry {o.client_order_id} ({o.side.value} {o.qty} "
                                   f"{o.symbol}) canceled")

    def _some_plugin_wakes(self, market: MarketSnapshot) -> bool:
        for strat in self.strategies:
            try:
                if strat.wants_cycle(market):
                    return True
            except Exception:  # a broken predicate proves nothing: take the full cycle
                return True
        return False

    def _signals_to_orders(self, now: datetime, market: MarketSnapshot, report: dict, observing: bool,
                           blocked) -> list[ExitRequest]:
        """Steps 3-7 of the cycle; returns the plugins' exit requests for step 8."""
        # --- 3. SIGNALS and 4. PROPOSALS
        held_by: dict[str, dict[str, float]] = {}
        for sym, pos in self.positions.items():
            held_by.setdefault(pos.strategy, {})[sym] = float(pos.qty)
        signals: list[Signal] = []
        for strat in self.strategies:
            ctx = StrategyContext(now, market, self.regime, held_by.get(strat.name, {}))
            try:
                produced = strat.generate_signals(ctx)
            except Exception as exc:  # one plugin's failure stands that plugin down, not the engine
                report["errors"].append(f"{strat.name}.generate_signals: {type(exc).__name__}: {exc}")
                produced = []
            signals.extend(produced)
        report["signals"] = [to_jsonable(s) for s in signals]
        combined = self.aggregator.combine(signals, now)
        report["aggregated"] = {s: {"score": round(c.score, 6), "confidence": round(c.confidence, 6),
                                    "contributors": list(c.contributors)} for s, c in combined.items()}

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
                proposals.extend(i for i in items if isinstance(i, TradeProposal))
            else:
                report["strategies_gated"].append(strat.name)

        # --- 5. RANK by expected value = confidence × reward:risk × strategy weight
        scored = [(p, _ranked_rr(p), self.weights.weight(p.strategy)) for p in proposals]
        scored.sort(key=lambda e: -e[0].confidence * e[1] * e[2])    # stable: ties keep the plugin order
        ranked = [p for p, _, _ in scored]
        for p, rr, w in scored:
            report["proposals"].append({**to_jsonable({k: getattr(p, k) for k in (
                "strategy", "symbol", "side", "entry_price", "stop_price", "target_price", "confidence",
                "expected_holding", "thesis")}), "reward_risk": round(rr, 6), "weight": round(w, 6),
                "expected_value": round(p.confidence * rr * w, 6)})
        self.stats.proposals += len(ranked)

        # --- 6. FILTER (risk) and 7. EXECUTE
        if ranked and not observing and not blocked:
            view = self._portfolio_view(market, now)
            for p in ranked:
                decision = self._decide(p, market, view, now)
                report["decisions"].append(decision)
                if decision["approved"]:
                    view_of = combined.get(p.symbol)
                    self._execute_entry(p, Decimal(decision["qty"]), now, report,
                                        view_of.contributors if view_of else ())
        elif ranked:
            why = "observation phase" if observing else blocked
            rule = "observe" if observing else "entries_blocked"
            self.stats.vetoes[rule] = self.stats.vetoes.get(rule, 0) + len(ranked)
            for p in ranked:
                report["decisions"].append({"strategy": p.strategy, "symbol": p.symbol, "approved": False,
                                            "layer": "engine", "rule": rule,
                                            "reason": why, "qty": "0", "notional_usd": "0", "details": {}})
        return exit_requests

    def _finish_cycle(self, report: dict, trades: list[dict], now: datetime) -> None:
        self.stats.cycles += 1
        self.stats.errors += len(report["errors"])
        self.closed_trades.extend(trades)
        self._last_report, self._unformatted = report, report
        if self.session_log or self.store:
            self._persist(self.last_report, trades, now)

    # ================================================================== steps
    def _refit_regime_if_due(self, market: MarketSnapshot, now: datetime, report: dict) -> bool:
        """Refit the regime model on the history known now, when the schedule says so (issue #4).
        True when the detector was replaced."""
        if self.regime_refitter is None:
            return False
        why = self.regime_refitter.due(self.regime_detector, now)
        if not why:
            return False
        fresh, record = self.regime_refitter.refit(self.regime_detector, market, now, why)
        self.regime_refits.append(record)
        report["regime_refit"] = record
        if fresh is None:
            aside = self.regime_refitter.set_aside(self.regime_detector, now)
            if aside is None:
                report["notes"].append(f"regime refit failed ({record['error']}): keeping the current model")
                return False
            trained_to = self.regime_detector.params["training"]["end"]
            record["set_aside"] = True     # the loaded model no longer reads the regime (see backtest notes)
            self.regime_detector = aside
            report["notes"].append(f"regime refit failed ({record['error']}); the loaded model was fitted on days up "
                                   f"to {trained_to}, after this cycle: regime UNKNOWN (no entries) until a refit "
                                   "succeeds (tried again each day)")
            return True
        self.regime_detector = fresh
        report["notes"].append(f"regime model refitted on {record['trained_from']}..{record['trained_to']} "
                               f"({record['days']} days, {record['seconds']} s) because {why}")
        return True

    def _vol_percentile(self, market: MarketSnapshot) -> float | None:
        """Where the reference market's 20-bar realised volatility ranks in its visible history (SPY,
        else BTC/USD): the "extreme volatility" half of the regime-break kill switch, whichever
        detector names the regime."""
        if self._vol_pct[0] is self.regime:  # a break can only come with a new reading: once per reading
            return self._vol_pct[1]
        pct = self.regime.details.get("vol_percentile")
        if pct is None:
            pct = _VOL_RULE.detect(market).details.get("vol_percentile")
        self._vol_pct = (self.regime, pct)
        return pct
    def _portfolio_view(self, market: MarketSnapshot, now: datetime) -> PortfolioView:
        """One view per cycle: approvals reserve room in it, so several entries in one cycle cannot
        together break a limit; working entry orders count as exposure before they fill."""
        account = self.broker.account()
        pending: dict[str, Decimal] = {}
        count, unpriced = 0, []
        for o in self.broker.open_orders():
            # after a restart the adapter labels every working order it did not send "entry"; the saved
            # exit reasons know the stops and exits among them (they reduce exposure, never add to it)
            if o.purpose == "entry" and o.client_order_id not in self.exit_reasons:
                price = market.price(o.symbol)
                if not math.isfinite(price):     # never counted as $0: the risk layer refuses entries instead
                    unpriced.append(o.symbol)
                    price = 0.0
                pending[o.symbol] = pending.get(o.symbol, ZERO) + o.qty * to_decimal(price)
                count += 1
        marks = {}
        for s in self.positions:
            price = market.price(s)
            if math.isfinite(price):
                marks[s] = price
            else:
                unpriced.append(s)
        return PortfolioView(now, account.equity_usd, account.buying_power_usd, self.positions, marks,
                             pending_entries_usd=pending, pending_entry_count=count, unpriced=unpriced)

    def _decide(self, p: TradeProposal, market: MarketSnapshot, view: PortfolioView, now: datetime) -> dict:
        base = {"strategy": p.strategy, "symbol": p.symbol}
        veto = None
        if not market.tradable(p.symbol):
            veto = ("data", "stale_data", f"no entries on {p.symbol}: {market.stale.get(p.symbol, 'no data')}")
        elif (p.symbol in self.positions or any(o.symbol == p.symbol for o in self.broker.open_orders())
              or any(o.symbol == p.symbol for o in self.unresolved.values())
              # issue #7: an entry can fill between this cycle's fill poll and this check -- then it is
              # neither a local position nor a working order. Our pending entry plans and (asked only
              # after the open orders, so the race has no gap) the broker's own book close that window.
              or any(plan.proposal.symbol == p.symbol for plan in self.plans.values())
              or self._broker_holds(p.symbol)):
            veto = ("engine", "one_position_per_symbol", f"{p.symbol} already has a position or a working order")
        elif self.regime.regime is Regime.UNKNOWN:
            veto = ("regime", "regime_unknown", f"regime unknown ({self.regime.details.get('why', '')}): entries restricted")
        elif not self.broker.is_market_open(p.symbol, now):
            veto = ("execution", "market_closed", f"market closed for {p.symbol}")
        if veto:
            layer, rule, reason = veto
            self.stats.vetoes[rule] = self.stats.vetoes.get(rule, 0) + 1
            return {**base, "approved": False, "layer": layer, "rule": rule, "reason": reason,
                    "qty": "0", "notional_usd": "0", "details": {}}
        d = self.risk.evaluate(p, self.broker.asset(p.symbol), view, market)
        if d.approved:
            self.stats.approved += 1
        else:
            self.stats.vetoes[d.rule] = self.stats.vetoes.get(d.rule, 0) + 1
        return {**base, "approved": d.approved, "layer": "risk", "rule": d.rule, "reason": d.reason,
                "qty": str(d.qty), "notional_usd": str(d.notional_usd), "details": to_jsonable(d.details)}

    def _broker_qty(self, symbol: str) -> Decimal | None:
        """The broker's signed quantity in ``symbol`` (None when it cannot say). The broker may name a
        crypto pair without its slash (``BTCUSD``); no other key can mean ``symbol``."""
        from .brokers.capabilities import normalise_symbol
        try:
            held = self.broker.positions()
        except BrokerError:
            return None
        for key in dict.fromkeys((symbol, symbol.replace("/", ""))):
            p = held.get(key)
            if p is not None and normalise_symbol(key, None, [symbol]) == symbol:
                return p.qty
        return ZERO

    def _fee_in_asset(self, symbol: str) -> bool:
        return self.broker.asset(symbol).asset_class in getattr(self.broker, "fees_in_received_asset", ())

    def dust_below(self, symbol: str) -> Decimal:
        """A holding smaller than this is dust: no order can sell it. Where the broker takes its fee out of
        the coins bought (Alpaca crypto), a round trip leaves less than one order increment behind."""
        return self.broker.asset(symbol).min_order_size if self._fee_in_asset(symbol) else ZERO

    def _broker_holds(self, symbol: str) -> bool:
        """True when the broker holds a position in ``symbol`` (or cannot say: then no entry either)."""
        qty = self._broker_qty(symbol)
        return qty is None or (qty != 0 and abs(qty) >= self.dust_below(symbol))

    def _next_coid(self, strategy: str, symbol: str) -> str:
        self.order_seq += 1
        return make_client_order_id(self.session_id, strategy, symbol, self.order_seq)

    def _tif(self, symbol: str) -> TimeInForce:
        return TimeInForce.GTC if self.broker.asset(symbol).asset_class is AssetClass.CRYPTO else TimeInForce.DAY

    def _submit(self, order: Order, report: dict) -> Order | None:
        try:
            sent = self.broker.submit(order)
        except UnknownOrderOutcome as exc:
            # the broker may have accepted it: keep it (and its plan) so a later fill is matched, and
            # treat the symbol as having a working order; it is never re-sent blindly
            order.status, order.reject_reason = OrderStatus.UNKNOWN, f"outcome unknown: {exc}"
            report["orders"].append(_order_dict(order))
            report["errors"].append(f"order {order.client_order_id}: outcome unknown ({exc.user_hint})")
            self.unresolved[order.client_order_id] = order
            return order
        except BrokerError as exc:
            order.status, order.reject_reason = OrderStatus.REJECTED, f"{type(exc).__name__}: {exc}"
            report["orders"].append(_order_dict(order))
            report["errors"].append(f"order {order.client_order_id} refused: {type(exc).__name__}: {exc} "
                                    f"({exc.user_hint})")
            self.stats.rejected += 1
            return None
        report["orders"].append(_order_dict(sent))
        self.stats.orders += 1
        return sent

    def _execute_entry(self, p: TradeProposal, qty: Decimal, now: datetime, report: dict,
                       contributors: tuple = ()) -> None:
        bracket = self._bracket_entry(p, qty)
        if bracket:   # Alpaca brackets take whole shares: round down (never more risk than approved)
            qty = qty.to_integral_value(rounding=ROUND_DOWN)
        order = Order(self._next_coid(p.strategy, p.symbol), p.symbol, p.side, qty, OrderType.MARKET,
                      TimeInForce.GTC if bracket else self._tif(p.symbol), now, p.strategy, purpose="entry",
                      take_profit_price=to_decimal(p.target_price) if bracket else None,
                      stop_loss_price=to_decimal(p.stop_price) if bracket else None)
        # the fee comes out of the coins bought: the fill is measured against what the broker held before
        held_before = self._broker_qty(p.symbol) if self._fee_in_asset(p.symbol) else None
        sent = self._submit(order, report)
        if sent:
            self.plans[order.client_order_id] = PendingPlan(p, self.regime.regime.value, self.regime.confidence,
                                                            contributors, bracket=bool(sent.legs),
                                                            held_before=held_before)
            for leg in sent.legs:   # a leg's fill closes the trade with the leg's reason
                self.exit_reasons[leg.client_order_id] = "target" if leg.order_type is OrderType.LIMIT else "stop"

    def _bracket_entry(self, p: TradeProposal, qty: Decimal) -> bool:
        """Issue #3: on a broker that holds brackets (Alpaca), an equity entry of at least one whole share
        carries its stop and target as broker-side legs (GTC, so they outlive the session), which protect
        the position between cycles and while HYDRA is down. The engine still watches the same levels
        and, for any other exit, cancels the legs first. A percent trail goes to a native trailing stop
        instead (Alpaca holds one protective order per share); a fraction of a share stays engine-managed."""
        if not getattr(self.broker, "supports_brackets", False) or p.trailing_stop_pct or p.trailing_atr_mult or qty < 1:
            return False
        asset = self.broker.asset(p.symbol)
        return asset.asset_class is AssetClass.EQUITY and (not asset.order_types or OrderType.STOP in asset.order_types)

    def _execute_exit(self, ex: ExitInstruction, now: datetime, report: dict) -> None:
        pos = self.positions[ex.symbol]
        working = [o for o in self.broker.open_orders() if o.symbol == ex.symbol]
        # an exit is already working: never send a second one. After a restart the broker adapter does not
        # know an earlier process's exit as one; the saved exit reasons do (exits are market orders)
        if any(o.purpose == "exit" or (o.order_type is OrderType.MARKET and o.client_order_id in self.exit_reasons)
               for o in working):
            return
        for o in working:  # cancel what holds the shares (e.g. a native trailing stop)
            self.broker.cancel(o.client_order_id)
            self._forget_exit(o.client_order_id)
        held, dust = self._broker_qty(ex.symbol), self.dust_below(ex.symbol)
        if held is not None and (held == 0 or abs(held) < dust):
            # issue #7: an exit sent earlier (by this process or a crashed one) filled after this cycle's
            # fill poll: the broker is flat already, and a second exit would sell what is not there (a
            # short, for equities). The fill is booked by the next poll.
            report["notes"].append(f"{ex.reason} exit for {ex.symbol} not sent: the broker holds no position "
                                   "(an earlier exit filled; its fill is booked next cycle)")
            return
        self.native_stops.discard(ex.symbol)
        qty = abs(pos.qty)
        if held is not None and pos.qty > 0 and self._fee_in_asset(ex.symbol):
            # sell the coins the broker holds, up to this position and any earlier dust (the broker rounds
            # down to its increment): asking for more is refused with "insufficient balance" and the stop
            # never executes; coins bought by hand beyond the dust are not HYDRA's to sell
            qty = min(abs(held), abs(pos.qty) + dust)
        order = Order(self._next_coid(pos.strategy, ex.symbol), ex.symbol, pos.side.opposite(), qty,
                      OrderType.MARKET, self._tif(ex.symbol), now, pos.strategy, purpose="exit")
        report["exits"].append({"symbol": ex.symbol, "reason": ex.reason, "trigger_price": ex.trigger_price,
                                "detail": ex.detail, "client_order_id": order.client_order_id})
        if self._submit(order, report):
            self.exit_reasons[order.client_order_id] = ex.reason

    def _place_native_trailing(self, pos: Position, now: datetime, report: dict | None = None) -> None:
        """Alpaca equities hold a percent trail at the broker (it keeps trailing between cycles);
        everything else is trailed by the position manager with the same rule. Placed once the entry
        order is done: a sell while the rest of a partly filled buy still works is a wash trade to Alpaca."""
        if not getattr(self.broker, "supports_native_trailing", False):
            return
        if pos.trailing_atr_mult or not uses_native_trailing(self.broker.asset(pos.symbol), pos.trailing_stop_pct):
            return  # an ATR trail has no broker order type: the engine trails it
        if abs(pos.qty) != abs(pos.qty).to_integral_value():
            return  # Alpaca takes fractional quantities only on market/day orders: trail it in the engine
        order = Order(self._next_coid(pos.strategy, pos.symbol), pos.symbol, pos.side.opposite(), abs(pos.qty),
                      OrderType.TRAILING_STOP, TimeInForce.GTC, now, pos.strategy, purpose="stop",
                      trail_percent=to_decimal(pos.trailing_stop_pct))
        try:
            sent = self.broker.submit(order)
        except BrokerError as exc:  # the engine-managed trail still protects the position
            log.warning("native trailing stop for %s refused (%s); trailing in the engine", pos.symbol, exc)
            return
        self.exit_reasons[order.client_order_id] = "trailing_stop"
        self.native_stops.add(pos.symbol)
        if report is not None:
            report["orders"].append(_order_dict(sent))

    def _known(self, fill: Fill) -> datetime:
        """When the engine learnt of a fill: a loss cooldown or a day's trade count starts then, not at the
        broker's fill time -- a simulated fill is stamped at its bar's open, a late-reported one hours back."""
        return max(fill.ts, self.fills_known_at) if self.fills_known_at is not None else fill.ts

    def _apply_fill(self, fill: Fill, report: dict | None = None) -> dict | None:
        coid = fill.client_order_id
        if coid in self.plans:
            self._apply_entry_fill(self.plans[coid], fill, report)
            return None
        if coid in self.exit_reasons:
            return self._apply_exit_fill(coid, fill, report)
        return self._apply_untracked_fill(fill)

    def _apply_entry_fill(self, plan: PendingPlan, fill: Fill, report: dict | None) -> None:
        """An entry's fill -- or one slice of it: an order can fill in parts (Alpaca paper simulates partial
        fills too). The first slice opens the managed position, later slices add to it. The plan stays
        until the broker reports the order done and every slice booked (see ``_cycle``)."""
        bought, fees, fee_coins = fill.qty, fill.fee_usd, ZERO
        if plan.held_before is not None and fill.side is Side.BUY:
            # the slices booked so far are in the broker's quantity -- unless that position is gone (closed
            # at the broker and dropped by --adopt while the rest of the entry still worked): then only dust
            pos = self.positions.get(fill.symbol)
            booked = abs(pos.qty) if plan.position_qty and pos is not None else ZERO
            received = self._received_coins(fill, plan.held_before + booked, report)
            if received is not None:
                fee_coins = fill.qty - received
                bought, fees = received, fees + fee_coins * fill.price
        if plan.position_qty and fill.symbol in self.positions:     # a further slice of the same entry
            pos = self.positions[fill.symbol]
            total = plan.position_qty + fill.qty
            pos.avg_entry_price = (pos.avg_entry_price * plan.position_qty + fill.price * fill.qty) / total
            pos.qty += bought * fill.side.sign
            pos.entry_fees_usd += fees
            plan.fee_coins += fee_coins
            pos.fee_share_of_received_asset = plan.fee_coins / total if plan.fee_coins else ZERO
            plan.position_qty, plan.booked_qty = total, plan.booked_qty + fill.qty
            if report is not None:
                report["notes"].append(f"{fill.symbol}: entry {fill.client_order_id} filled a further {fill.qty} "
                                       f"at {fill.price}; position {pos.qty}")
            return
        p = plan.proposal
        price = float(fill.price)
        # keep the plan's distances, anchored at the real fill -- unless the broker holds the levels
        # (bracket legs): then the engine watches exactly the prices the broker will act on
        scale = 1.0 if plan.bracket else price / p.entry_price
        self.positions[fill.symbol] = Position(
            symbol=fill.symbol, qty=bought * fill.side.sign, avg_entry_price=fill.price, strategy=p.strategy,
            opened_at=fill.ts, stop_price=p.stop_price * scale, target_price=p.target_price * scale,
            trailing_stop_pct=p.trailing_stop_pct, trailing_atr_mult=p.trailing_atr_mult, high_water_mark=price,
            max_holding=p.expected_holding,
            regime_at_entry=plan.regime, entry_fees_usd=fees, initial_stop_price=p.stop_price * scale,
            regime_confidence_at_entry=plan.regime_confidence,
            fee_share_of_received_asset=fee_coins / fill.qty if fee_coins else ZERO)
        # += : a slice booked earlier whose position is gone (see above) still counts as booked
        plan.booked_qty, plan.position_qty, plan.fee_coins = plan.booked_qty + fill.qty, fill.qty, fee_coins
        # only sources that pointed somewhere and counted learn from the trade (a neutral or a zero-weight
        # signal made no prediction)
        self.entry_sources[fill.symbol] = [(c["source"], c["score"]) for c in plan.contributors
                                           if c.get("weight", 1) > 0 and c["score"] != 0]
        self.risk.on_entry_filled(self._known(fill))

    def _apply_exit_fill(self, coid: str, fill: Fill, report: dict | None) -> dict | None:
        """An exit's fill, or one slice of it: the trade closes when the position is sold (up to dust)."""
        pos = self.positions.get(fill.symbol)
        if pos is None:
            self._forget_exit(coid)
            return None
        exit_fee = fill.fee_usd
        if pos.fee_share_of_received_asset and not exit_fee:
            # Alpaca takes a crypto sell's fee from the dollars received and reports it only a day later
            # (a CFEE account activity): estimated at the share the broker kept of the coins bought
            exit_fee = (fill.qty * fill.price * pos.fee_share_of_received_asset).quantize(Decimal("0.000001"))
            if report is not None:
                report["notes"].append(f"{fill.symbol}: exit fee ${exit_fee} estimated at the entry's measured "
                                       f"fee share ({pos.fee_share_of_received_asset:.6f}); Alpaca books it later")
        reason = self.exit_reasons[coid]
        held = abs(pos.qty) + pos.exit_qty           # what the position held before its first exit slice
        pos.exit_qty += fill.qty
        pos.exit_notional_usd += fill.qty * fill.price
        pos.exit_fees_usd += exit_fee
        self.exit_booked[coid] = self.exit_booked.get(coid, ZERO) + fill.qty
        left = held - pos.exit_qty
        dust = self.dust_below(fill.symbol)
        if left > 0 and dust:
            # coins: the broker may hold less than the book says (fee coins that could not be measured);
            # never more for this trade (coins bought later are another position). A remainder below the
            # minimum order size cannot be sold and ends the trade -- once this exit has nothing more to
            # report: while it works, or has filled more than is booked, its next part is still to come
            try:
                order = self.broker.get_order(coid)
            except BrokerError:
                order = None
            if order is not None and (order.status.is_open or order.filled_qty > self.exit_booked[coid]):
                still_held = left
            else:
                at_broker = self._broker_qty(fill.symbol)
                still_held = min(left, abs(at_broker)) if at_broker is not None else left
        else:
            still_held = left
        if left > 0 and still_held > 0 and still_held >= dust:   # partly sold: the rest stays managed
            pos.qty = left if pos.qty > 0 else -left
            if reason == "trailing_stop" and not any(   # no broker stop left for the rest: the engine trails it
                    o.symbol == fill.symbol and self.exit_reasons.get(o.client_order_id) == "trailing_stop"
                    for o in self._open_orders_or_none()):
                self.native_stops.discard(fill.symbol)
            if report is not None:
                report["notes"].append(f"{fill.symbol}: exit {coid} sold {fill.qty} of {held}; {left} still held")
            return None
        self._forget_exit(coid)
        self.native_stops.discard(fill.symbol)
        del self.positions[fill.symbol]
        sign = 1 if pos.qty > 0 else -1
        # one slice: exactly its price (the arithmetic every backtest and the golden file use)
        exit_price = fill.price if pos.exit_qty == fill.qty else pos.exit_notional_usd / pos.exit_qty
        gross = (exit_price - pos.avg_entry_price) * held * sign
        fees = pos.entry_fees_usd + pos.exit_fees_usd
        pnl = gross - fees
        if dust and pos.exit_qty != held:
            # coins sold differ from those held: dust or unmeasured fee coins left behind (written off at
            # the exit price), or earlier dust swept along -- the P&L is dollars out less dollars in
            pnl += (pos.exit_qty - held) * exit_price
        if pos.exit_qty != fill.qty:
            exit_price = exit_price.quantize(Decimal("0.000001"))
        risk_usd = abs(pos.avg_entry_price - to_decimal(pos.initial_stop_price)) * held
        trade = ClosedTrade(strategy=pos.strategy, symbol=pos.symbol, side=pos.side.value, qty=str(held),
                            entry_time=to_jsonable(pos.opened_at), entry_price=str(pos.avg_entry_price),
                            exit_time=to_jsonable(fill.ts), exit_price=str(exit_price),
                            pnl_usd=str(pnl.quantize(Decimal("0.000001"))), fees_usd=str(fees),
                            r_multiple=round(float(pnl / risk_usd), 6) if risk_usd > 0 else 0.0,
                            regime_at_entry=pos.regime_at_entry, exit_reason=reason,
                            regime_confidence_at_entry=round(pos.regime_confidence_at_entry, 6))
        self.risk.on_trade_closed(trade, self._known(fill))
        won = pnl > 0
        for source, score in self.entry_sources.pop(fill.symbol, []):
            # a source was right when its direction matched the trade and the trade won, or
            # opposed it and the trade lost: that is the hit rate its reliability learns from
            agreed = (score > 0) == (sign > 0)
            self.aggregator.record_outcome(source, agreed == won)
        for entry_coid in [c for c, plan in self.plans.items() if plan.proposal.symbol == fill.symbol]:
            del self.plans[entry_coid]               # its order is done: the position it opened is closed
        return {k: getattr(trade, k) for k in _CLOSED_FIELDS}

    def _forget_exit(self, coid: str) -> None:
        self.exit_reasons.pop(coid, None)
        self.exit_booked.pop(coid, None)

    def _open_orders_or_none(self) -> list[Order]:
        try:
            return self.broker.open_orders()
        except BrokerError:
            return []

    def _received_coins(self, fill: Fill, held_before: Decimal, report: dict | None) -> Decimal | None:
        """The coins an entry fill left in the position: the broker's quantity now less what it held
        before (dust). None -- and the filled quantity stands, the exit then sells what the broker holds --
        when the broker cannot say or its answer is no fee of at most ``MAX_FEE_SHARE``."""
        held = self._broker_qty(fill.symbol)
        received = None if held is None else held - held_before
        if received is not None and 0 < received <= fill.qty and fill.qty - received <= fill.qty * MAX_FEE_SHARE:
            if received < fill.qty and report is not None:
                report["notes"].append(f"{fill.symbol}: the broker kept {fill.qty - received} of the {fill.qty} bought "
                                       f"as its fee (${((fill.qty - received) * fill.price).quantize(Decimal('0.01'))})")
            return received
        why = "positions unavailable" if held is None else f"it holds {held} (before the entry: {held_before})"
        log.warning("entry fill %s: the coins received could not be measured (%s)", fill.fill_id, why)
        if report is not None:
            report["errors"].append(f"{fill.symbol}: the fee taken from the {fill.qty} bought could not be measured "
                                    f"({why}); the position keeps the filled quantity until reconciled")
        return None

    def _apply_untracked_fill(self, fill: Fill) -> dict | None:
        """Issue #7 (crash/restart): a fill of one of HYDRA's own orders (its client_order_id names one of
        our strategies) that this process holds no plan or exit reason for -- the order was sent by a
        process that crashed before recording it, or it was adopted at start-up while still working.
        Before, such a fill was ignored: the position went unmanaged (no stop) and the next proposal on
        the symbol could enter again. Now the symbol is brought to the broker's truth: a position the
        broker holds and we do not becomes a managed one with the protective plan `--adopt` gives (stop
        5 %, target 10 %); a position we hold that the broker no longer holds is closed as a trade with
        exit reason "reconciled". Fills of other orders are still left to reconciliation."""
        names = [s.name for s in self.strategies] + ["adopted"]
        strategy = next((n for n in names if f"-{n[:40]}-" in fill.client_order_id), None)
        if strategy is None or fill.symbol not in self.settings.universe.symbols:
            return None
        try:
            from .brokers.capabilities import normalise_symbol
            held = {normalise_symbol(s, None, self.settings.universe.symbols): p
                    for s, p in self.broker.positions().items()}.get(fill.symbol)
        except BrokerError as exc:
            log.warning("untracked fill %s: broker positions unavailable (%s); the next reconciliation "
                        "checks %s", fill.fill_id, exc, fill.symbol)
            return None
        broker_qty = held.qty if held is not None and abs(held.qty) >= self.dust_below(fill.symbol) else ZERO
        local = self.positions.get(fill.symbol)
        if local is None and broker_qty != 0:
            entry, sign = float(held.avg_entry_price), (1 if broker_qty > 0 else -1)
            stop = entry * (1 - sign * 0.05)
            self.positions[fill.symbol] = Position(
                symbol=fill.symbol, qty=broker_qty, avg_entry_price=held.avg_entry_price, strategy=strategy,
                opened_at=fill.ts, stop_price=stop, target_price=entry * (1 + sign * 0.10), high_water_mark=entry,
                initial_stop_price=stop)
            self.risk.on_entry_filled(self._known(fill))
            log.warning("adopted %s %s from untracked fill %s (protective stop %.2f)", fill.symbol, broker_qty,
                        fill.client_order_id, stop)
            return None
        if local is not None and broker_qty == 0 and fill.side is not local.side:
            self.exit_reasons[fill.client_order_id] = "reconciled"
            return self._apply_fill(fill)
        return None

    def _persist(self, report: dict, trades: list[dict], now: datetime) -> None:
        if self.session_log:
            self.session_log.record_cycle(report, trades)
        if self.store:
            # every committed cycle carries the state when cycles commit one by one (paper/live): peak
            # equity, the day's base and the trailing stops' high-water marks move in quiet cycles too,
            # and a hard kill must not bring back older ones. Batched replays save it with their orders.
            keep = self.store_batch == 1 or report["orders"] or report["fills"] or "regime_refit" in report
            self.store.save_cycle(self.session_id, report, report["orders"], report["fills"], trades,
                                  {self.state_key: self.state()} if keep else None, batch=self.store_batch)

    def state(self) -> dict:
        """Everything needed to resume after a restart."""
        return {"engine": {"cycle": self.cycle, "order_seq": self.order_seq, "session_id": self.session_id},
                "risk": self.risk.to_state(), "weights": self.weights.to_state(),
                "aggregator": self.aggregator.to_state(), "entry_sources": self.entry_sources,
                "positions": {s: to_jsonable(p) for s, p in self.positions.items()},
                "native_stops": sorted(self.native_stops),
                "exit_reasons": dict(self.exit_reasons),   # issue #7: an exit filled after a restart keeps its reason
                "plans": {coid: to_jsonable(plan) for coid, plan in self.plans.items()},   # and an entry its plan
                "exit_booked": {coid: str(q) for coid, q in self.exit_booked.items()},
                **({"regime_refit": self.regime_refitter.to_state()} if self.regime_refitter else {})}

    @property
    def state_key(self) -> str:
        """Each mode keeps its own resumable state (the sim's account is not the paper account)."""
        return f"engine:{self.mode}"

    def restore(self, state: dict) -> None:
        """Resume from :meth:`state` after a restart: risk and kill state, weights, managed positions."""
        self.risk.load_state(state.get("risk", {}))
        self.weights.load_state(state.get("weights", {}))
        if state.get("aggregator"):
            self.aggregator.load_state(state["aggregator"])
        self.entry_sources = {k: [tuple(x) for x in v] for k, v in state.get("entry_sources", {}).items()}
        for symbol, p in state.get("positions", {}).items():
            self.positions[symbol] = position_from_dict(p)
        self.native_stops = set(state.get("native_stops", []))
        self.exit_reasons.update(state.get("exit_reasons", {}))
        self.plans.update({coid: _plan_from_dict(p) for coid, p in state.get("plans", {}).items()})
        self.exit_booked.update({coid: Decimal(q) for coid, q in state.get("exit_booked", {}).items()})
        # continue the order sequence: a restart within the same second gets the same session id, and a
        # restarted sequence would then reuse a client_order_id (Alpaca answers with the old order)
        self.order_seq = max(self.order_seq, int(state.get("engine", {}).get("order_seq", 0)))
        if self.regime_refitter is not None and state.get("regime_refit"):
            refitted = self.regime_refitter.load_state(state["regime_refit"])
            if refitted is not None:   # resume on the model the last refit produced
                self.regime_detector = refitted

    def summary(self) -> dict:
        try:
            account = self.broker.account()
        except BrokerError:  # issue #7: the broker is down at the end of a session: use the last cycle's numbers
            from .ports import Account
            last = self.last_report or {}
            equity = Decimal(str(last.get("equity_usd") or self.settings.broker.starting_cash_usd))
            account = Account(cash_usd=Decimal(str(last.get("cash_usd") or equity)), equity_usd=equity,
                              buying_power_usd=ZERO)
        start = self.starting_equity_usd
        per_strategy: dict[str, dict] = {}
        for t in self.closed_trades:
            s = per_strategy.setdefault(t["strategy"], {"trades": 0, "wins": 0, "pnl_usd": Decimal(0)})
            s["trades"] += 1
            s["wins"] += Decimal(t["pnl_usd"]) > 0
            s["pnl_usd"] += Decimal(t["pnl_usd"])
        exit_reasons: dict[str, int] = {}
        for t in self.closed_trades:
            exit_reasons[t["exit_reason"]] = exit_reasons.get(t["exit_reason"], 0) + 1
        return to_jsonable({
            "cycles": self.stats.cycles, "starting_equity_usd": start,
            "final_equity_usd": account.equity_usd.quantize(Decimal("0.01")),
            "return_pct": round(float((account.equity_usd / start - 1) * 100), 4),
            "cash_usd": account.cash_usd.quantize(Decimal("0.01")),
            "open_positions": {s: str(p.qty) for s, p in self.positions.items()},
            "proposals": self.stats.proposals, "approved": self.stats.approved, "vetoes_by_rule": self.stats.vetoes,
            "orders": self.stats.orders, "orders_refused": self.stats.rejected, "errors": self.stats.errors,
            "closed_trades": len(self.closed_trades), "per_strategy": per_strategy, "exit_reasons": exit_reasons,
            "fees_usd": getattr(self.broker, "fees_paid", None),
            "sizing_bound_by": self.risk.binding_counts(),
        })


def position_from_dict(d: dict) -> Position:
    """Inverse of ``to_jsonable(Position)``: Decimals from strings, datetimes from ISO, durations from seconds."""
    kw = dict(d)
    for key in ("qty", "avg_entry_price", "entry_fees_usd", "fee_share_of_received_asset", "exit_qty",
                "exit_notional_usd", "exit_fees_usd"):
        if key in kw:
            kw[key] = Decimal(str(kw[key]))
    kw["opened_at"] = datetime.fromisoformat(str(kw["opened_at"]).replace("Z", "+00:00"))
    if kw.get("max_holding") is not None:
        kw["max_holding"] = timedelta(seconds=float(kw["max_holding"]))
    return Position(**kw)


def _plan_from_dict(d: dict) -> PendingPlan:
    """Inverse of ``to_jsonable(PendingPlan)``."""
    p = dict(d["proposal"])
    p["side"], p["expected_holding"] = Side(p["side"]), timedelta(seconds=float(p["expected_holding"]))
    held = d.get("held_before")
    return PendingPlan(TradeProposal(**p), d["regime"], float(d["regime_confidence"]),
                       tuple(d.get("contributors", ())), bool(d.get("bracket", False)),
                       held_before=None if held is None else Decimal(str(held)),
                       booked_qty=Decimal(str(d.get("booked_qty", 0))), fee_coins=Decimal(str(d.get("fee_coins", 0))),
                       # a plan saved before position_qty existed had its whole booked quantity in the position
                       position_qty=Decimal(str(d.get("position_qty", d.get("booked_qty", 0)))))


def closed_trade_from_dict(d: dict) -> ClosedTrade:
    return ClosedTrade(**{k: d[k] for k in ClosedTrade.__dataclass_fields__})
