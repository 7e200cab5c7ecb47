"""Start-up (and periodic) reconciliation: the broker is the truth.

``reconcile`` compares what the broker holds with what HYDRA believes and lists every difference in
words; ``adopt_broker_state`` rewrites the local view to match the broker. Differences in quantity
are also expressed as ``adoptable_fills``: synthetic fills at the broker's average entry price that,
fed through the normal fill path, bring the local book to the broker's quantities.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Callable, Iterable, Mapping

from .brokers.capabilities import normalise_symbol
from .domain import Fill, Order, Position, Side, require_utc
from .ports import BrokerPosition

ZERO = Decimal(0)


@dataclass
class ReconcileReport:
    ok: bool
    mismatches: list[str] = field(default_factory=list)
    extra_positions: dict[str, BrokerPosition] = field(default_factory=dict)     # at the broker only
    missing_positions: dict[str, Position] = field(default_factory=dict)         # local only
    qty_differences: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)  # symbol -> (local, broker)
    unknown_orders: list[Order] = field(default_factory=list)    # working at the broker, not tracked locally
    vanished_orders: list[Order] = field(default_factory=list)   # open locally, not working at the broker
    adoptable_fills: list[Fill] = field(default_factory=list)
    broker_positions: dict[str, BrokerPosition] = field(default_factory=dict)

    @property
    def subjects(self) -> set[str]:
        """The symbols a disagreement is about (positions, and the orders' symbols: an unknown order
        replaced under a new id is still about its symbol). The same symbol on two checks in a row is a
        disagreement that persists, even when its quantities, prices or order ids move."""
        return (set(self.extra_positions) | set(self.missing_positions) | set(self.qty_differences)
                | {o.symbol for o in self.unknown_orders + self.vanished_orders})


def _as_map(positions: Mapping[str, Position] | Iterable[Position]) -> dict[str, Position]:
    return dict(positions) if isinstance(positions, Mapping) else {p.symbol: p for p in positions}


def reconcile(broker_positions: Mapping[str, BrokerPosition], broker_open_orders: Iterable[Order],
              local_positions: Mapping[str, Position] | Iterable[Position], local_open_orders: Iterable[Order],
              *, now: datetime | None = None, known_symbols: Iterable[str] = (),
              dust: Mapping[str, Decimal] | None = None,
              venue_of: Callable[[str], str] | None = None) -> ReconcileReport:
    """Compare broker and local books (quantities signed: + long, - short). Adoptable fills are
    produced only when ``now`` (their timestamp) is given. ``dust`` maps a symbol to the holding below
    which no order can trade it (Alpaca takes crypto fees out of the coins bought, so a round trip leaves
    up to one increment behind): a broker holding that differs from the local one by less is no mismatch.
    ``venue_of`` names a symbol's venue for the adoptable fills (a VenueRouter's ``venue_name``); without
    it they name ``alpaca``, the one broker of a session without a router."""
    local = {s: p for s, p in _as_map(local_positions).items() if p.qty != 0}
    known = set(known_symbols) | set(local)
    dust = dust or {}
    broker = {}
    for s, p in broker_positions.items():
        symbol = normalise_symbol(s, None, known)           # BTCUSD -> BTC/USD when HYDRA trades BTC/USD
        off_by = abs(p.qty - (local[symbol].qty if symbol in local else ZERO))
        if off_by < dust.get(symbol, ZERO):                 # the local book up to dust (or dust alone)
            if symbol in local:
                broker[symbol] = dataclasses.replace(p, symbol=symbol, qty=local[symbol].qty)
        elif p.qty != 0:
            broker[symbol] = dataclasses.replace(p, symbol=symbol)
    report = ReconcileReport(ok=True, broker_positions=broker)

    def fill(symbol: str, delta: Decimal, price: Decimal) -> None:
        if now is not None:
            report.adoptable_fills.append(Fill(f"reconcile-{symbol}", symbol, Side.BUY if delta > 0 else Side.SELL,
                                               abs(delta), price, ZERO, require_utc(now, "now"),
                                               f"reconcile-{symbol}-{now.isoformat()}",
                                               venue=venue_of(symbol) if venue_of else "alpaca"))

    for symbol in sorted(broker.keys() | local.keys()):
        b, l = broker.get(symbol), local.get(symbol)
        if b is not None and l is None:
            report.extra_positions[symbol] = b
            report.mismatches.append(f"extra position at broker: {symbol} qty {b.qty} @ {b.avg_entry_price} "
                                     "(not known locally)")
            fill(symbol, b.qty, b.avg_entry_price)
        elif b is None and l is not None:
            report.missing_positions[symbol] = l
            report.mismatches.append(f"missing position at broker: local {symbol} qty {l.qty} ({l.strategy}) "
                                     "is flat at the broker")
            fill(symbol, -l.qty, l.avg_entry_price)
        elif b is not None and l is not None and b.qty != l.qty:
            report.qty_differences[symbol] = (l.qty, b.qty)
            report.mismatches.append(f"qty differs for {symbol}: local {l.qty}, broker {b.qty}")
            fill(symbol, b.qty - l.qty, b.avg_entry_price)

    broker_orders = {o.client_order_id: o for o in broker_open_orders}
    local_orders = {o.client_order_id: o for o in local_open_orders if o.status.is_open}
    for coid, o in broker_orders.items():
        if coid not in local_orders:
            report.unknown_orders.append(o)
            report.mismatches.append(f"unknown open order at broker: {coid} {o.symbol} {o.side.value} "
                                     f"{o.order_type.value} qty {o.qty}")
    for coid, o in local_orders.items():
        if coid not in broker_orders:
            report.vanished_orders.append(o)
            report.mismatches.append(f"local open order {coid} {o.symbol} is not working at the broker "
                                     "(filled, canceled or never placed: look it up)")
    report.ok = not report.mismatches
    return report


def adopt_broker_state(report: ReconcileReport, local_positions: Mapping[str, Position] | Iterable[Position],
                       local_open_orders: Iterable[Order], now: datetime, *, strategy: str = "adopted",
                       stop_pct: float = 0.05, target_pct: float = 0.10) -> tuple[dict[str, Position], list[Order]]:
    """Local positions and open orders rewritten to the broker's truth. Positions HYDRA did not know
    get a protective plan (stop ``stop_pct`` and target ``target_pct`` from the entry) so the position
    manager manages them like any other; known positions keep their plan with the broker quantity."""
    require_utc(now, "now")
    positions = {s: p for s, p in _as_map(local_positions).items() if s not in report.missing_positions}
    for symbol, b in report.broker_positions.items():
        existing = positions.get(symbol)
        if existing is not None and (existing.qty > 0) == (b.qty > 0):
            positions[symbol] = dataclasses.replace(existing, qty=b.qty, avg_entry_price=b.avg_entry_price)
            continue
        entry, sign = float(b.avg_entry_price), (1 if b.qty > 0 else -1)
        stop = entry * (1 - sign * stop_pct)
        positions[symbol] = Position(symbol=symbol, qty=b.qty, avg_entry_price=b.avg_entry_price, strategy=strategy,
                                     opened_at=now, stop_price=stop, target_price=entry * (1 + sign * target_pct),
                                     high_water_mark=entry, initial_stop_price=stop)
    vanished = {o.client_order_id for o in report.vanished_orders}
    orders = [o for o in local_open_orders if o.client_order_id not in vanished] + list(report.unknown_orders)
    return positions, orders
