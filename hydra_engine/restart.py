"""Restart replays HYDRA's own history before it judges (issue #16).

At start-up, after the fills of HYDRA's own orders are booked (``Book.replay``), these decide which
working orders are HYDRA's -- its saved state's, a kill's, the legs of its brackets (recognised by their
parent), any order with a HYDRA id -- so that reconciliation refuses only a genuinely foreign order or
position; ``--adopt`` also adopts the protective orders of the positions it adopts; and the orders a
killed process recorded before sending (write-ahead, status ``submitting``) are resolved by client id.
"""
from __future__ import annotations

import logging

from .domain import Order, OrderStatus, OrderType
from .orderids import is_hydra_order_id, is_kill_order_id
from .ports import BrokerError

log = logging.getLogger(__name__)


_PROTECTIVE_REASON = {OrderType.LIMIT: "target", OrderType.STOP: "stop", OrderType.STOP_LIMIT: "stop",
                      OrderType.TRAILING_STOP: "trailing_stop"}


def _protect_with(engine, o: Order) -> bool:
    """Take a working order that would close ``o.symbol``'s held position as that position's
    protection: its fill closes the trade with the order's reason, and its price becomes the engine's
    stop or target (the engine then watches exactly what the broker will act on)."""
    pos = engine.positions.get(o.symbol)
    reason = _PROTECTIVE_REASON.get(o.order_type)
    if pos is None or reason is None or o.side is not pos.side.opposite():
        return False
    engine.book.track_exit(o.client_order_id, reason)
    if reason == "trailing_stop":
        engine.book.native_stops.add(o.symbol)
    elif reason == "target" and o.limit_price is not None:
        pos.target_price = float(o.limit_price)
    elif o.stop_price is not None:
        pos.stop_price = pos.initial_stop_price = float(o.stop_price)
    return True


def recognise_own_orders(engine, broker, working: list[Order]) -> list[Order]:
    """Issue #16: the working orders that are HYDRA's own. Those its saved state names; a kill's closing
    orders (booked as the kill's exits); bracket legs and protective orders whose parent or own id is
    HYDRA's (a process killed right after a bracket entry never saved its legs: they protect the
    position again); any other order with a HYDRA id (an entry or exit a crashed process sent, whose
    fill the untracked-fill path books). What is left is foreign, and a mismatch."""
    parent_of = getattr(broker, "parent_of", lambda coid: None)
    own = []
    for o in working:
        coid = o.client_order_id
        if coid in engine.exit_reasons or coid in engine.plans:
            own.append(o)
            continue
        parent = parent_of(coid)
        if is_kill_order_id(coid):
            engine.book.track_exit(coid, "kill")
        elif parent is not None and (is_hydra_order_id(parent) or parent in engine.plans):
            _protect_with(engine, o)
        elif is_hydra_order_id(coid):
            if o.order_type is not OrderType.MARKET:
                _protect_with(engine, o)
            elif (pos := engine.positions.get(o.symbol)) is not None and o.side is pos.side.opposite():
                engine.book.track_exit(coid, "reconciled")   # an exit whose reason died with its sender
        else:
            continue
        own.append(o)
    return own


def adopt_protective_orders(engine, unknown: list[Order]) -> None:
    """``--adopt`` adopts open orders too: a stop, target or trailing stop working against an adopted
    position becomes that position's protection (its fill closes the trade), so the next start does not
    refuse over it again. Other foreign orders stay the operator's (they are not HYDRA's to manage)."""
    taken = [o.client_order_id for o in unknown if _protect_with(engine, o)]
    if taken:
        engine.startup_notes.append(f"--adopt: working order(s) {', '.join(taken)} adopted as the protection "
                                    "of the adopted positions")


def resolve_submitting(broker, store, engine) -> None:
    """Issue #16 (write-ahead): orders recorded as ``submitting`` whose sender was killed before its
    cycle committed are looked up by client order id: what the broker has is recorded with its status,
    what it never heard of as rejected. Both go into the first cycle's orders, so the orders table and
    a session log hold every order. One the broker cannot be asked about now stays for the next start."""
    for row in store.submitting_orders():
        try:
            known = broker.get_order(row.client_order_id)
        except BrokerError as exc:
            log.warning("order %s recorded before sending: outcome not known yet (%s)", row.client_order_id, exc)
            continue
        d = {k: getattr(row, k) for k in type(row).model_fields}
        if known is None:
            d.update(status=OrderStatus.REJECTED.value, reject_reason="never reached the broker (the process "
                     "stopped before or while sending it)")
        else:
            d.update(status=known.status.value, broker_order_id=known.broker_order_id,
                     filled_qty=str(known.filled_qty),
                     filled_avg_price=None if known.filled_avg_price is None else str(known.filled_avg_price))
        engine.startup_orders.append(d)
    if engine.startup_orders:
        engine.startup_notes.append(f"{len(engine.startup_orders)} order(s) sent by a stopped process resolved by "
                                    f"client order id: {', '.join(d['client_order_id'] for d in engine.startup_orders)}")
