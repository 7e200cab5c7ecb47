"""More than one venue behind the one Broker interface.

The engine talks to one ``Broker``. When the book spans venues (Alpaca for equities and crypto spot, a
perpetual-futures venue for perps), a :class:`VenueRouter` is that broker: orders go to the venue of
their instrument, and everything the risk layer and the kill switches read -- the account, positions,
open orders, fills -- is the sum over venues. Each venue keeps its own rules (``capabilities_for``).
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Mapping

from .domain import Fill, FundingPayment, Instrument, Order
from .ports import Account, AssetSpec, Broker, BrokerPosition, OrderNotFound, VenueCapabilities


class VenueRouter:
    """A ``Broker`` over several venues. ``instruments`` names each symbol's venue; a symbol not listed
    goes to ``default`` (the venue every existing configuration uses)."""

    def __init__(self, venues: Mapping[str, Broker], instruments: Mapping[str, Instrument], default: str):
        if default not in venues:
            raise ValueError(f"default venue {default!r} is not one of {sorted(venues)}")
        unknown = {i.symbol: i.venue for i in instruments.values() if i.venue not in venues}
        if unknown:
            raise ValueError(f"instruments name venues that are not configured: {unknown}")
        self.venues = dict(venues)
        self.instruments = dict(instruments)
        self.default = default
        self._order_venue: dict[str, str] = {}     # client_order_id -> venue it was sent to
        self.capabilities = VenueCapabilities(
            name="router", marks_from_engine=any(v.capabilities.marks_from_engine for v in self.venues.values()),
            settles_funding=any(v.capabilities.settles_funding for v in self.venues.values()))

    def venue_name(self, symbol: str) -> str:
        inst = self.instruments.get(symbol)
        return inst.venue if inst is not None else self.default

    def venue_for(self, symbol: str) -> Broker:
        return self.venues[self.venue_name(symbol)]

    def capabilities_for(self, symbol: str) -> VenueCapabilities:
        return self.venue_for(symbol).capabilities_for(symbol)

    # ------------------------------------------------------------------ the sums
    def account(self) -> Account:
        accounts = [v.account() for v in self.venues.values()]
        return Account(cash_usd=sum((a.cash_usd for a in accounts), Decimal(0)),
                       equity_usd=sum((a.equity_usd for a in accounts), Decimal(0)),
                       buying_power_usd=sum((a.buying_power_usd for a in accounts), Decimal(0)))

    def positions(self) -> dict[str, BrokerPosition]:
        out: dict[str, BrokerPosition] = {}
        for name, venue in self.venues.items():
            for symbol, pos in venue.positions().items():
                if self.venue_name(symbol) == name:   # a symbol belongs to one venue: never counted twice
                    out[symbol] = pos
        return out

    def open_orders(self) -> list[Order]:
        return [o for v in self.venues.values() for o in v.open_orders()]

    def poll_fills(self, now: datetime) -> list[Fill]:
        # each fill names the venue it came from, by the name its order carries (issue #20)
        fills = [f if f.venue == name else replace(f, venue=name)
                 for name, v in self.venues.items() for f in v.poll_fills(now)]
        return sorted(fills, key=lambda f: f.ts)   # stable: one venue's own order is kept on ties

    def update_marks(self, prices: dict[str, float]) -> None:
        for venue in self.venues.values():
            if venue.capabilities.marks_from_engine:
                venue.update_marks(prices)

    # ------------------------------------------------------------------ routed by symbol
    def asset(self, symbol: str) -> AssetSpec:
        return self.venue_for(symbol).asset(symbol)

    def is_market_open(self, symbol: str, now: datetime) -> bool:
        return self.venue_for(symbol).is_market_open(symbol, now)

    def submit(self, order: Order) -> Order:
        name = self.venue_name(order.symbol)
        self._order_venue[order.client_order_id] = name
        order.venue = name   # recorded on the order (the session log's orders[] and the closed trade)
        return self.venues[name].submit(order)

    def _venue_of_order(self, client_order_id: str) -> list[Broker]:
        name = self._order_venue.get(client_order_id)
        return [self.venues[name]] if name else list(self.venues.values())   # after a restart: ask each

    def cancel(self, client_order_id: str) -> None:
        last: OrderNotFound | None = None
        for venue in self._venue_of_order(client_order_id):
            try:
                return venue.cancel(client_order_id)
            except OrderNotFound as exc:
                last = exc
        raise last or OrderNotFound(f"no venue knows order {client_order_id}", client_order_id=client_order_id)

    def get_order(self, client_order_id: str) -> Order | None:
        for venue in self._venue_of_order(client_order_id):
            order = venue.get_order(client_order_id)
            if order is not None:
                return order
        return None

    # ------------------------------------------------------------------ leveraged venues (perps)
    def set_leverage(self, symbol: str, leverage: int) -> int:
        venue = self.venue_for(symbol)
        if venue.capabilities_for(symbol).max_leverage <= 1:
            raise ValueError(f"{symbol}: venue {self.venue_name(symbol)!r} takes no leverage")
        return venue.set_leverage(symbol, leverage)

    def settle_funding(self, now: datetime) -> list[FundingPayment]:
        """Every venue's funding settlements up to ``now`` (each paid once), oldest first."""
        payments = [p for v in self.venues.values() if v.capabilities.settles_funding for p in v.settle_funding(now)]
        return sorted(payments, key=lambda p: p.ts)

    def horizon_until(self, now: datetime) -> datetime | None:
        """Event-horizon replay: the earliest promise of the venues that settle funding (each must have
        ``horizon_until``; one without, or one that answers None: no promise)."""
        best = None
        for venue in self.venues.values():
            if not venue.capabilities.settles_funding:
                continue
            promise = getattr(venue, "horizon_until", None)
            t = promise(now) if promise is not None else None
            if t is None:
                return None
            best = t if best is None else min(best, t)
        return best

    def adopt_orders(self, client_order_ids) -> None:
        """HYDRA orders another process sent (a `kill`'s closes): each venue that maps ids learns them."""
        ids = list(client_order_ids)
        for venue in self.venues.values():
            adopt = getattr(venue, "adopt_orders", None)
            if adopt is not None:
                adopt(ids)

    def venue_exit_reason(self, client_order_id: str) -> str | None:
        """Why a venue closed a position on its own (``liquidation``), for an order it made."""
        for venue in self.venues.values():
            reason = venue.venue_exit_reason(client_order_id) if venue.capabilities.settles_funding else None
            if reason:
                return reason
        return None

    @property
    def fees_paid(self) -> Decimal:
        return sum((getattr(v, "fees_paid", Decimal(0)) for v in self.venues.values()), Decimal(0))
