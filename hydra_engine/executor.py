"""The executor: turns approved entries and exit instructions into orders at a venue.

It chooses the order shape from what the venue declares it can do (``VenueCapabilities``: brackets,
broker-held trailing stops, fees taken in the received asset) and the asset's rules (``AssetSpec``),
never by probing the broker object; it numbers orders with deterministic client order ids; it records
what it sent in the cycle report and registers every order with the :class:`~hydra_engine.book.Book`,
which books the fills. Nothing here decides *whether* to trade: the entry gate and the risk layer did.
"""
from __future__ import annotations

import logging
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, Decimal

from .book import Book, PendingPlan
from .domain import (AssetClass, Order, OrderStatus, OrderType, Position, RegimeReading, TimeInForce, TradeProposal,
                     make_client_order_id)
from .orderids import is_kill_order_id
from .ports import Broker, BrokerError, UnknownOrderOutcome, to_decimal
from .positions import ExitInstruction, uses_native_trailing
from .tradelog import to_jsonable

log = logging.getLogger(__name__)


def order_dict(o: Order) -> dict:
    """An order as the cycle report records it: ``to_jsonable`` of these fields, with the enums and
    strings written out (it runs for every order sent or refused)."""
    j = to_jsonable
    return {"client_order_id": o.client_order_id, "symbol": o.symbol, "side": o.side.value, "qty": j(o.qty),
            "order_type": o.order_type.value, "time_in_force": o.time_in_force.value, "created_at": j(o.created_at),
            "strategy": o.strategy, "purpose": o.purpose, "status": o.status.value, "broker_order_id": o.broker_order_id,
            "filled_qty": j(o.filled_qty), "filled_avg_price": j(o.filled_avg_price), "reject_reason": o.reject_reason,
            "limit_price": j(o.limit_price), "stop_price": j(o.stop_price), "trail_percent": j(o.trail_percent),
            "take_profit_price": j(o.take_profit_price), "stop_loss_price": j(o.stop_loss_price),
            "reduce_only": o.reduce_only, "extended_hours": o.extended_hours, "venue": o.venue}

class Executor:
    def __init__(self, broker: Broker, book: Book, *, session_id: str, stats):
        self.broker = broker
        self.book = book
        self.session_id = session_id
        self.stats = stats                     # RunStats: orders sent and refused
        self.order_seq = 0
        self._kill_canceled: set[str] = set()  # entries a kill switch has asked the broker to cancel
        self._deferred: set[tuple] = set()     # exits said to wait for the open (said once)
        self.write_ahead = None                # order -> None: records an order before it is sent

    def cancel_working_entries(self, report: dict) -> None:
        """A kill switch stops new exposure: a working entry (queued for the next open, or the rest of a
        partly filled one) is canceled once; whatever of it filled is a position and is flattened."""
        try:
            working = [o for o in self.broker.open_orders() if o.client_order_id in self.book.plans
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

    def next_coid(self, strategy: str, symbol: str) -> str:
        self.order_seq += 1
        return make_client_order_id(self.session_id, strategy, symbol, self.order_seq)

    def tif(self, symbol: str) -> TimeInForce:
        return TimeInForce.GTC if self.broker.asset(symbol).asset_class is AssetClass.CRYPTO else TimeInForce.DAY

    def submit(self, order: Order, report: dict, *, queue_if_closed: bool = False) -> Order | None:
        if self.write_ahead is not None:
            # issue #16: recorded (status "submitting") before it is sent, so an order a killed process had
            # just sent is in the orders table and is resolved by its client order id at the restart
            self.write_ahead(order)
        try:
            sent = (self.broker.submit(order, queue_if_closed=True) if queue_if_closed
                    else self.broker.submit(order))
        except UnknownOrderOutcome as exc:
            # the broker may have accepted it: keep it (and its plan) so a later fill is matched, and
            # treat the symbol as having a working order; it is never re-sent blindly
            order.status, order.reject_reason = OrderStatus.UNKNOWN, f"outcome unknown: {exc}"
            report["orders"].append(order_dict(order))
            report["errors"].append(f"order {order.client_order_id}: outcome unknown ({exc.user_hint})")
            self.book.unresolved[order.client_order_id] = order
            return order
        except BrokerError as exc:
            order.status, order.reject_reason = OrderStatus.REJECTED, f"{type(exc).__name__}: {exc}"
            report["orders"].append(order_dict(order))
            report["errors"].append(f"order {order.client_order_id} refused: {type(exc).__name__}: {exc} "
                                    f"({exc.user_hint})")
            self.stats.rejected += 1
            return None
        report["orders"].append(order_dict(sent))
        self.stats.orders += 1
        return sent

    def enter(self, p: TradeProposal, qty: Decimal, now: datetime, report: dict, regime: RegimeReading,
              contributors: tuple = ()) -> None:
        if p.extended_hours:
            self._enter_extended(p, qty, now, report, regime, contributors)
            return
        bracket = self._bracket_entry(p, qty)
        if bracket:   # Alpaca brackets take whole shares: round down (never more risk than approved)
            qty = qty.to_integral_value(rounding=ROUND_DOWN)
        order = Order(self.next_coid(p.strategy, p.symbol), p.symbol, p.side, qty, OrderType.MARKET,
                      TimeInForce.GTC if bracket else self.tif(p.symbol), now, p.strategy, purpose="entry",
                      take_profit_price=to_decimal(p.target_price) if bracket else None,
                      stop_loss_price=to_decimal(p.stop_price) if bracket else None)
        # the fee comes out of the coins bought: the fill is measured against what the broker held before
        held_before = self.book.broker_qty(p.symbol) if self.book.fee_in_asset(p.symbol) else None
        if self.broker.capabilities_for(p.symbol).max_leverage > 1 and not self._set_leverage(p, report):
            return
        sent = self.submit(order, report)
        if sent:
            self.book.track_entry(order.client_order_id, PendingPlan(
                p, regime.regime.value, regime.confidence, contributors, bracket=bool(sent.legs),
                held_before=held_before))
            for leg in sent.legs:   # a leg's fill closes the trade with the leg's reason
                self.book.track_exit(leg.client_order_id, "target" if leg.order_type is OrderType.LIMIT else "stop")

    def _set_leverage(self, p: TradeProposal, report: dict) -> bool:
        """A leveraged venue (perps): set the symbol's leverage to the proposal's (governed by the risk
        layer) before the entry; a refusal refuses the entry, never sends it at another leverage."""
        try:
            self.broker.set_leverage(p.symbol, max(1, int(p.leverage)))
        except (BrokerError, ValueError) as exc:
            report["errors"].append(f"{p.symbol}: leverage {p.leverage:g}x not set ({exc}); entry not sent")
            return False
        return True

    def _enter_extended(self, p: TradeProposal, qty: Decimal, now: datetime, report: dict, regime: RegimeReading,
                        contributors: tuple) -> None:
        """An equity entry outside regular hours (issue #18): Alpaca takes only a DAY limit order with
        ``extended_hours`` there, in whole shares and without bracket legs (the engine watches the stop and
        target). A venue that does not declare ``extended_hours_limit`` is not sent one."""
        asset = self.broker.asset(p.symbol)
        if not self.broker.capabilities_for(p.symbol).extended_hours_limit or asset.asset_class is not AssetClass.EQUITY:
            report["errors"].append(f"{p.strategy} {p.symbol}: extended-hours entry not sent: the venue takes no "
                                    "extended-hours limit order for it")
            return
        qty = qty.to_integral_value(rounding=ROUND_DOWN)
        if qty < 1:
            report["notes"].append(f"{p.strategy} {p.symbol}: extended-hours entry not sent: under one whole share")
            return
        limit = asset.round_price(to_decimal(p.limit_price), ROUND_CEILING if p.side.sign > 0 else ROUND_FLOOR)
        order = Order(self.next_coid(p.strategy, p.symbol), p.symbol, p.side, qty, OrderType.LIMIT, TimeInForce.DAY,
                      now, p.strategy, purpose="entry", limit_price=limit, extended_hours=True)
        sent = self.submit(order, report)
        if sent:
            self.book.track_entry(order.client_order_id, PendingPlan(p, regime.regime.value, regime.confidence,
                                                                     contributors, bracket=False, held_before=None))

    def _bracket_entry(self, p: TradeProposal, qty: Decimal) -> bool:
        """Issue #3: on a broker that holds brackets (Alpaca), an equity entry of at least one whole share
        carries its stop and target as broker-side legs (GTC, so they outlive the session), which protect
        the position between cycles and while HYDRA is down. The engine still watches the same levels
        and, for any other exit, cancels the legs first. A percent trail goes to a native trailing stop
        instead (Alpaca holds one protective order per share); a fraction of a share stays engine-managed."""
        if not self.broker.capabilities_for(p.symbol).brackets or p.trailing_stop_pct or p.trailing_atr_mult or qty < 1:
            return False
        asset = self.broker.asset(p.symbol)
        return asset.asset_class is AssetClass.EQUITY and (not asset.order_types or OrderType.STOP in asset.order_types)

    def exit(self, ex: ExitInstruction, now: datetime, report: dict) -> None:
        pos = self.book.positions[ex.symbol]
        working = [o for o in self.broker.open_orders() if o.symbol == ex.symbol]
        # an exit is already working: never send a second one. After a restart the broker adapter does not
        # know an earlier process's exit as one; the saved exit reasons do (exits are market orders). A
        # kill's closing order (its id marks it) is such an exit too: never canceled, never fought
        if any(o.purpose == "exit" or is_kill_order_id(o.client_order_id)
               or (o.order_type is OrderType.MARKET and o.client_order_id in self.book.exit_reasons)
               for o in working):
            return
        # issue #16: protection is never removed before its replacement is certain. Ask first whether the
        # exit can go out now (market hours, order type): outside hours a kill's exit is queued for the
        # open; any other exit waits for the open and the broker-held stop and target stay where they are
        queue = False
        why_not = self._why_not_now(ex.symbol, now)
        if why_not is not None:
            if ex.reason == "kill" and "market is closed" in why_not:
                queue = True
            else:
                key = (ex.symbol, ex.reason, why_not)
                if key not in self._deferred:    # said once, not every cycle of the night
                    self._deferred.add(key)
                    report["notes"].append(f"{ex.reason} exit for {ex.symbol} deferred: {why_not}; the broker-held "
                                           "protection stays in place until the exit can be sent")
                return
        self._deferred = {k for k in self._deferred if k[0] != ex.symbol}
        canceled = []
        for o in working:  # cancel what holds the shares (e.g. a native trailing stop)
            self.broker.cancel(o.client_order_id)
            canceled.append((o, self.book.exit_reasons.get(o.client_order_id)))
            self.book.forget_exit(o.client_order_id)
        held, dust = self.book.broker_qty(ex.symbol), self.book.dust_below(ex.symbol)
        if held is not None and (held == 0 or abs(held) < dust):
            # issue #7: an exit sent earlier (by this process or a crashed one) filled after this cycle's
            # fill poll: the broker is flat already, and a second exit would sell what is not there (a
            # short, for equities). The fill is booked by the next poll.
            report["notes"].append(f"{ex.reason} exit for {ex.symbol} not sent: the broker holds no position "
                                   "(an earlier exit filled; its fill is booked next cycle)")
            return
        self.book.native_stops.discard(ex.symbol)
        qty = abs(pos.qty)
        if held is not None and pos.qty > 0 and self.book.fee_in_asset(ex.symbol):
            # sell the coins the broker holds, up to this position and any earlier dust (the broker rounds
            # down to its increment): asking for more is refused with "insufficient balance" and the stop
            # never executes; coins bought by hand beyond the dust are not HYDRA's to sell
            qty = min(abs(held), abs(pos.qty) + dust)
        # a market order everywhere; a stop or target seen inside a closed bar also carries the level it
        # triggered at, which a venue that replays bars fills in that bar (SimulatedBroker) and others ignore
        level = to_decimal(ex.fill_price) if ex.fill_price is not None else None
        order = Order(self.next_coid(pos.strategy, ex.symbol), ex.symbol, pos.side.opposite(), qty,
                      OrderType.MARKET, self.tif(ex.symbol), now, pos.strategy, purpose="exit",
                      reduce_only=self.broker.capabilities_for(ex.symbol).reduce_only,
                      stop_price=level if ex.fill_kind == "stop" else None,
                      limit_price=level if ex.fill_kind == "limit" else None)
        report["exits"].append({"symbol": ex.symbol, "reason": ex.reason, "trigger_price": ex.trigger_price,
                                "detail": ex.detail, "client_order_id": order.client_order_id})
        if queue:
            report["notes"].append(f"kill exit for {ex.symbol} queued for the open (the market is closed)")
        if self.submit(order, report, queue_if_closed=queue):
            self.book.track_exit(order.client_order_id, ex.reason)
        elif canceled:
            self._restore_protection(pos, canceled, now, report)

    def _why_not_now(self, symbol: str, now: datetime) -> str | None:
        """Why a market exit on ``symbol`` cannot go out now (None: it can), from what the venue declares:
        the asset's order types and its market hours (a simulated venue queues to the next bar: open)."""
        asset = self.broker.asset(symbol)
        if asset.order_types and OrderType.MARKET not in asset.order_types:
            return f"market orders are not accepted for {symbol}"
        if not self.broker.is_market_open(symbol, now):
            return "the market is closed"
        return None

    def _restore_protection(self, pos: Position, canceled: list, now: datetime, report: dict) -> None:
        """The exit was refused after the orders protecting the position were canceled: put a broker-held
        stop back (a percent trail where one was canceled, else a stop at the position's stop price), so
        the position never sits without protection at the broker. The target stays engine-managed."""
        trail = next((o for o, _ in canceled if o.order_type is OrderType.TRAILING_STOP), None)
        was_stop = [o for o, why in canceled if o.order_type in (OrderType.STOP, OrderType.STOP_LIMIT)
                    or why in ("stop", "trailing_stop")]
        if trail is None and not was_stop:
            return
        qty = abs(pos.qty)
        if trail is not None:
            order = Order(self.next_coid(pos.strategy, pos.symbol), pos.symbol, pos.side.opposite(), qty,
                          OrderType.TRAILING_STOP, TimeInForce.GTC, now, pos.strategy, purpose="stop",
                          trail_percent=trail.trail_percent)
            reason = "trailing_stop"
        else:   # the level the broker held (the engine's own may be the crossed level that decided the exit)
            level = next((o.stop_price for o in was_stop if o.stop_price is not None), None)
            order = Order(self.next_coid(pos.strategy, pos.symbol), pos.symbol, pos.side.opposite(), qty,
                          OrderType.STOP, TimeInForce.GTC, now, pos.strategy, purpose="stop",
                          stop_price=level if level is not None else to_decimal(round(pos.stop_price, 2)))
            reason = "stop"
        sent = self.submit(order, report)
        if sent is None or sent.status is OrderStatus.UNKNOWN:
            report["errors"].append(f"{pos.symbol}: the exit was refused and its protection could not be put back: "
                                    "the engine manages the stop until it can")
            return
        self.book.track_exit(order.client_order_id, reason)
        if reason == "trailing_stop":
            self.book.native_stops.add(pos.symbol)
        report["notes"].append(f"{pos.symbol}: the exit was refused; a broker-held {reason.replace('_', ' ')} "
                               f"{order.client_order_id} protects the position again")

    def protect(self, pos: Position, now: datetime, report: dict | None = None) -> None:
        """Alpaca equities hold a percent trail at the broker (it keeps trailing between cycles);
        everything else is trailed by the position manager with the same rule. Placed once the entry
        order is done: a sell while the rest of a partly filled buy still works is a wash trade to Alpaca."""
        if not self.broker.capabilities_for(pos.symbol).native_trailing_stops:
            return
        if pos.trailing_atr_mult or not uses_native_trailing(self.broker.asset(pos.symbol), pos.trailing_stop_pct):
            return  # an ATR trail has no broker order type: the engine trails it
        if abs(pos.qty) != abs(pos.qty).to_integral_value():
            return  # Alpaca takes fractional quantities only on market/day orders: trail it in the engine
        order = Order(self.next_coid(pos.strategy, pos.symbol), pos.symbol, pos.side.opposite(), abs(pos.qty),
                      OrderType.TRAILING_STOP, TimeInForce.GTC, now, pos.strategy, purpose="stop",
                      trail_percent=to_decimal(pos.trailing_stop_pct))
        if self.write_ahead is not None:
            self.write_ahead(order)
        try:
            sent = self.broker.submit(order)
        except BrokerError as exc:  # the engine-managed trail still protects the position
            log.warning("native trailing stop for %s refused (%s); trailing in the engine", pos.symbol, exc)
            return
        self.book.track_exit(order.client_order_id, "trailing_stop")
        self.book.native_stops.add(pos.symbol)
        if report is not None:
            report["orders"].append(order_dict(sent))
