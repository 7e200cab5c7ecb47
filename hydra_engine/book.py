"""The book: HYDRA's own record of what it holds and what it is waiting for.

Positions (with their protective plans), pending entry plans (what an entry order becomes once filled),
exit bookkeeping (why each exit was sent, how much of it is booked) and the symbols whose trailing stop the
broker holds. Fills are applied here and nowhere else: ``apply_fill`` turns an entry's fill into a managed
position and an exit's fill into a closed trade. The book reads the broker (positions, orders, asset rules)
to measure what a fill left behind, but never sends an order: that is the executor's job.

What a booked fill means for the rest of the engine (the risk layer's day count and loss streak, the
aggregator's source reliability) goes to a :class:`BookListener`, so the book knows nothing of either.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Iterable, Protocol

from .domain import ClosedTrade, Fill, FundingPayment, Order, OrderStatus, Position, Side, TradeProposal
from .orderids import is_hydra_order_id, is_kill_order_id, strategy_of
from .ports import ZERO, Broker, BrokerError, BrokerPosition, to_decimal
from .tradelog import to_jsonable

log = logging.getLogger(__name__)
_CLOSED_FIELDS = tuple(ClosedTrade.__dataclass_fields__)   # plain str/float fields
MAX_FEE_SHARE = Decimal("0.02")   # a coin fee above 2 % of the fill is not a fee: leave it to reconciliation


class BookListener(Protocol):
    """Who hears about booked fills: the engine forwards them to the risk layer and the aggregator."""

    def on_entry_filled(self, known_at: datetime) -> None: ...

    def on_trade_closed(self, trade: ClosedTrade, known_at: datetime) -> None: ...

    def on_source_outcome(self, source: str, hit: bool) -> None: ...


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


class Book:
    def __init__(self, broker: Broker, *, symbols: Iterable[str], strategy_names: Iterable[str],
                 listener: BookListener, order_dict=None):
        self.broker = broker
        self.symbols = list(symbols)
        self.strategy_names = list(strategy_names)
        self.listener = listener
        self._order_dict = order_dict or (lambda o: to_jsonable(o))
        self.positions: dict[str, Position] = {}
        self.plans: dict[str, PendingPlan] = {}          # client_order_id -> entry plan
        self.exit_reasons: dict[str, str] = {}           # client_order_id -> why we exit
        self.exit_booked: dict[str, Decimal] = {}        # exit client_order_id -> quantity booked from its fills
        self.native_stops: set[str] = set()              # symbols whose trailing stop the broker holds
        self.entry_sources: dict[str, list] = {}         # symbol -> (source, score) behind the open entry
        self.unresolved: dict[str, Order] = {}           # submits whose outcome the broker did not tell
        self.fills_known_at: datetime | None = None      # when the fills being applied became known (cycle time)
        # while a batch of fills is replayed (start-up): symbol -> signed quantity the batch's *later*
        # fills add at the broker, so each fill is judged against the broker's book right after it
        self.replay_later: dict[str, Decimal] = {}

    # ------------------------------------------------------------------ tracking orders
    def track_entry(self, coid: str, plan: PendingPlan) -> None:
        self.plans[coid] = plan

    def track_exit(self, coid: str, reason: str) -> None:
        self.exit_reasons[coid] = reason

    def adopt_positions(self, positions: dict[str, Position]) -> None:
        """Take the broker's book as ours (``run --adopt``): the positions reconciliation adopted."""
        self.positions = dict(positions)

    def has_pending_entry(self, symbol: str) -> bool:
        return any(plan.proposal.symbol == symbol for plan in self.plans.values())

    def settle_orders(self, now: datetime, report: dict) -> list[Position]:
        """Ask the broker about every order the book waits on: drop plans of orders that never reached
        it, close the bookkeeping of orders that are done. Returns the positions whose entry order just
        completed (the executor may now place a broker-held trailing stop for them)."""
        done: list[Position] = []
        _order_dict = self._order_dict
        for coid, order in list(self.unresolved.items()) if self.unresolved else ():  # ask again about unknown outcomes
            try:
                known = self.broker.get_order(coid)
            except BrokerError:
                continue
            if known is not None or now - order.created_at > timedelta(minutes=10):
                del self.unresolved[coid]
                if known is None:  # never reached the broker: drop the plan, say so
                    self.plans.pop(coid, None)
                    self.forget_exit(coid)
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
            self.forget_exit(coid)
            pos = self.positions.get(plan.proposal.symbol) if plan is not None and plan.booked_qty else None
            if pos is not None and order.status is OrderStatus.FILLED and pos.symbol not in self.native_stops:
                done.append(pos)  # the entry is done: the broker may trail it now
        return done

    # ------------------------------------------------------------------ what the broker holds
    def broker_qty(self, symbol: str) -> Decimal | None:
        """The broker's signed quantity in ``symbol`` (None when it cannot say). The broker adapter names
        positions with the engine's symbols (its own naming rules stay in the adapter)."""
        try:
            held = self.broker.positions().get(symbol)
        except BrokerError:
            return None
        return held.qty if held is not None else ZERO

    def fee_in_asset(self, symbol: str) -> bool:
        return self.broker.asset(symbol).asset_class in self.broker.capabilities_for(symbol).fees_in_received_asset

    def dust_below(self, symbol: str) -> Decimal:
        """A holding smaller than this is dust: no order can sell it. Where the broker takes its fee out of
        the coins bought (Alpaca crypto), a round trip leaves less than one order increment behind."""
        return self.broker.asset(symbol).min_order_size if self.fee_in_asset(symbol) else ZERO

    def broker_holds(self, symbol: str) -> bool:
        """True when the broker holds a position in ``symbol`` (or cannot say: then no entry either)."""
        qty = self.broker_qty(symbol)
        return qty is None or (qty != 0 and abs(qty) >= self.dust_below(symbol))

    # ------------------------------------------------------------------ perpetual futures
    def apply_funding(self, payment: FundingPayment) -> bool:
        """Book one funding settlement on the held position (a perp venue's ``settle_funding``). The amount
        accrues on the position and is carried to its closed trade as ``funding_usd``; it is never part of
        the fill prices. False when no position is held (nothing to book)."""
        pos = self.positions.get(payment.symbol)
        if pos is None:
            return False
        pos.funding_usd += payment.amount_usd
        return True

    def apply_liquidation(self, fill: Fill, report: dict | None = None) -> dict | None:
        """The venue closed the position at its liquidation price: booked as an exit with reason
        ``liquidation`` (the fill carries the venue's liquidation fee)."""
        self.track_exit(fill.client_order_id, "liquidation")
        return self.apply_fill(fill, report)

    def apply_venue_events(self, payments, fills, venue_reason, report: dict, trades: list[dict]) -> int:
        """Book a cycle's funding payments and fills in time order (a settlement at T is paid by what was
        held just before T); a close the venue made itself (``venue_reason(coid) == "liquidation"``) is
        booked with the venue's reason. Closed trades go to ``trades``; returns how many fills were booked."""
        events = sorted([(p.ts, 0, i, p) for i, p in enumerate(payments)]
                        + [(f.ts, 1, i, f) for i, f in enumerate(fills)], key=lambda e: e[:3]) if payments else \
            [(None, 1, 0, f) for f in fills]
        n = 0
        for _, kind, _, item in events:
            if kind == 0:
                if self.apply_funding(item):
                    report.setdefault("funding", []).append(to_jsonable(item))
                continue
            report["fills"].append(item)   # made JSON-ready by format_report, when something reads the report
            n += 1
            reason = venue_reason(item.client_order_id) if venue_reason is not None else None
            trade = self.apply_liquidation(item, report) if reason == "liquidation" else self.apply_fill(item, report)
            if trade:
                trades.append(trade)
        return n

    # ------------------------------------------------------------------ state
    def to_state(self) -> dict:
        return {"entry_sources": self.entry_sources,
                "positions": {s: to_jsonable(p) for s, p in self.positions.items()},
                "native_stops": sorted(self.native_stops),
                "exit_reasons": dict(self.exit_reasons),   # an exit filled after a restart keeps its reason
                "plans": {coid: to_jsonable(plan) for coid, plan in self.plans.items()},   # and an entry its plan
                "exit_booked": {coid: str(q) for coid, q in self.exit_booked.items()}}

    def load_state(self, state: dict) -> None:
        self.entry_sources = {k: [tuple(x) for x in v] for k, v in state.get("entry_sources", {}).items()}
        for symbol, p in state.get("positions", {}).items():
            self.positions[symbol] = position_from_dict(p)
        self.native_stops = set(state.get("native_stops", []))
        self.exit_reasons.update(state.get("exit_reasons", {}))
        self.plans.update({coid: plan_from_dict(p) for coid, p in state.get("plans", {}).items()})
        self.exit_booked.update({coid: Decimal(q) for coid, q in state.get("exit_booked", {}).items()})

    # ------------------------------------------------------------------ fills
    def _known(self, fill: Fill) -> datetime:
        """When the engine learnt of a fill: a loss cooldown or a day's trade count starts then, not at the
        broker's fill time -- a simulated fill is stamped at its bar's open, a late-reported one hours back."""
        return max(fill.ts, self.fills_known_at) if self.fills_known_at is not None else fill.ts

    def apply_fill(self, fill: Fill, report: dict | None = None) -> dict | None:
        """Book one fill; return the closed trade (the log's dict) when it closed one."""
        coid = fill.client_order_id
        if coid in self.plans:
            self._apply_entry_fill(self.plans[coid], fill, report)
            return None
        if coid in self.exit_reasons:
            return self._apply_exit_fill(coid, fill, report)
        if is_kill_order_id(coid):
            # issue #16: the kill command's own closing order (its id marks it): booked as the kill's exit,
            # whether or not this process had heard of the kill yet -- never a phantom position
            self.track_exit(coid, "kill")
            return self._apply_exit_fill(coid, fill, report)
        return self._apply_untracked_fill(fill)

    def replay(self, fills: list[Fill], apply, also_later: list[Fill] = ()) -> list[tuple[Fill, dict | None]]:
        """Issue #16: book a batch of fills (those of HYDRA's own orders found at start-up) oldest first
        through ``apply``, each measured against the broker's book as it stood right after that fill: an
        exit a crashed process sent and a re-entry the next crashed process sent then replay to exactly
        the broker's book, instead of the exit being ignored ("qty differs" at every restart)."""
        ordered = sorted(fills, key=lambda f: f.ts)
        later: dict[str, Decimal] = {}
        for f in [*ordered, *also_later]:      # ``also_later``: fills replayed after this batch
            later[f.symbol] = later.get(f.symbol, ZERO) + f.qty * f.side.sign
        out = []
        try:
            for f in ordered:
                later[f.symbol] -= f.qty * f.side.sign
                self.replay_later = later
                out.append((f, apply(f)))
        finally:
            self.replay_later = {}
        return out

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
        self.listener.on_entry_filled(self._known(fill))

    def _apply_exit_fill(self, coid: str, fill: Fill, report: dict | None) -> dict | None:
        """An exit's fill, or one slice of it: the trade closes when the position is sold (up to dust)."""
        pos = self.positions.get(fill.symbol)
        if pos is None:
            self.forget_exit(coid)
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
                at_broker = self.broker_qty(fill.symbol)
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
        self.forget_exit(coid)
        self.native_stops.discard(fill.symbol)
        del self.positions[fill.symbol]
        sign = 1 if pos.qty > 0 else -1
        # one slice: exactly its price (the arithmetic every backtest and the golden file use)
        exit_price = fill.price if pos.exit_qty == fill.qty else pos.exit_notional_usd / pos.exit_qty
        gross = (exit_price - pos.avg_entry_price) * held * sign
        fees = pos.entry_fees_usd + pos.exit_fees_usd
        pnl = gross - fees + pos.funding_usd   # funding: 0 except on perps (+ received, - paid)
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
                            regime_confidence_at_entry=round(pos.regime_confidence_at_entry, 6),
                            funding_usd=str(pos.funding_usd.quantize(Decimal("0.000001"))) if pos.funding_usd else "0",
                            venue=self.broker.venue_name(pos.symbol) if hasattr(self.broker, "venue_name") else "")
        self.listener.on_trade_closed(trade, self._known(fill))
        won = pnl > 0
        for source, score in self.entry_sources.pop(fill.symbol, []):
            # a source was right when its direction matched the trade and the trade won, or
            # opposed it and the trade lost: that is the hit rate its reliability learns from
            agreed = (score > 0) == (sign > 0)
            self.listener.on_source_outcome(source, agreed == won)
        for entry_coid in [c for c, plan in self.plans.items() if plan.proposal.symbol == fill.symbol]:
            del self.plans[entry_coid]               # its order is done: the position it opened is closed
        return {k: getattr(trade, k) for k in _CLOSED_FIELDS}

    def forget_exit(self, coid: str) -> None:
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
        held = self.broker_qty(fill.symbol)
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
        names = self.strategy_names + ["adopted"]
        strategy = next((n for n in names if f"-{n[:40]}-" in fill.client_order_id), None)
        if strategy is None and is_hydra_order_id(fill.client_order_id):
            strategy = strategy_of(fill.client_order_id)   # a strategy since disabled: still HYDRA's order
        if strategy is None or fill.symbol not in self.symbols:
            return None
        try:
            held = self.broker.positions().get(fill.symbol)
        except BrokerError as exc:
            log.warning("untracked fill %s: broker positions unavailable (%s); the next reconciliation "
                        "checks %s", fill.fill_id, exc, fill.symbol)
            return None
        later = self.replay_later.get(fill.symbol, ZERO)
        if later:   # replaying: the broker's book right after this fill, before the batch's later fills
            qty_after = (held.qty if held is not None else ZERO) - later
            held = BrokerPosition(fill.symbol, qty_after, fill.price)   # (the broker's average includes later fills)
        broker_qty = held.qty if held is not None and abs(held.qty) >= self.dust_below(fill.symbol) else ZERO
        local = self.positions.get(fill.symbol)
        if local is None and broker_qty != 0:
            entry, sign = float(held.avg_entry_price), (1 if broker_qty > 0 else -1)
            stop = entry * (1 - sign * 0.05)
            self.positions[fill.symbol] = Position(
                symbol=fill.symbol, qty=broker_qty, avg_entry_price=held.avg_entry_price, strategy=strategy,
                opened_at=fill.ts, stop_price=stop, target_price=entry * (1 + sign * 0.10), high_water_mark=entry,
                initial_stop_price=stop)
            self.listener.on_entry_filled(self._known(fill))
            log.warning("adopted %s %s from untracked fill %s (protective stop %.2f)", fill.symbol, broker_qty,
                        fill.client_order_id, stop)
            return None
        if local is not None and broker_qty == 0 and fill.side is not local.side:
            self.exit_reasons[fill.client_order_id] = "reconciled"
            return self.apply_fill(fill)
        return None



def position_from_dict(d: dict) -> Position:
    """Inverse of ``to_jsonable(Position)``: Decimals from strings, datetimes from ISO, durations from seconds."""
    kw = dict(d)
    for key in ("qty", "avg_entry_price", "entry_fees_usd", "fee_share_of_received_asset", "exit_qty",
                "exit_notional_usd", "exit_fees_usd", "funding_usd"):
        if key in kw:
            kw[key] = Decimal(str(kw[key]))
    kw["opened_at"] = datetime.fromisoformat(str(kw["opened_at"]).replace("Z", "+00:00"))
    if kw.get("max_holding") is not None:
        kw["max_holding"] = timedelta(seconds=float(kw["max_holding"]))
    return Position(**kw)


def plan_from_dict(d: dict) -> PendingPlan:
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
