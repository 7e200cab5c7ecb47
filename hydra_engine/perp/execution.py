"""Perp execution as the layer specification describes it (issue #20 (g)), between the executor and the
simulated USD-M venue: the executor keeps sending one market order per decision (its Alpaca path is not
touched); this layer works that *parent* order at the venue as child orders and hands the engine the
parent's fills under the parent's client order id.

* **Post-only entries** (``perps.post_only_entries``): an entry goes out as a post-only (GTX) limit at the
  touch -- the mark (last close) rounded away from crossing (a buy down, a sell up to the tick). If it is
  rejected for crossing (the price moved), it is re-posted at the new touch on the next cycle. When
  ``post_only_timeout_minutes`` have passed without a (full) fill, the rest is canceled: the entry is not
  chased with a market order (what filled, if anything, is the position).
* **Reduce-only exits falling back to market** (``perps.post_only_exits``): a target, time, strategy or
  gate exit goes out as a reduce-only post-only limit at the touch (a sell at the mark rounded up); after
  the timeout the rest is canceled and sent as a reduce-only market order. Stop exits (the order carries
  the stop level) and kill exits go to market at once: a stop that waits for a maker fill is no stop.
* **TWAP** (``perps.twap_volume_share`` > 0): an order whose quantity is above that share of the mean
  volume of the last ``perps.twap_volume_bars`` closed bars is cut into ``perps.twap_slices`` market
  child orders (quantities on the step, the last takes the remainder), one per bar from the order's time.
  A TWAP order is not also worked post-only.

A parent is FILLED when its children filled its quantity, CANCELED when an entry timed out or the engine
canceled it (children canceled with it; ``filled_qty`` says what filled), REJECTED when every child was
refused before anything filled. Everything else is the venue's (delegated as is).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, Decimal

from ..domain import Order, OrderStatus, OrderType, Side, TimeInForce
from ..orderids import is_kill_order_id
from ..ports import BrokerError

ZERO = Decimal(0)


@dataclass
class ExecutionConfig:
    post_only_entries: bool = False
    post_only_exits: bool = False
    timeout: timedelta = timedelta(minutes=60)
    twap_volume_share: float = 0.0
    twap_slices: int = 4
    twap_volume_bars: int = 24
    bar_interval: timedelta = timedelta(hours=1)

    @classmethod
    def from_settings(cls, perps) -> "ExecutionConfig":
        return cls(post_only_entries=perps.post_only_entries, post_only_exits=perps.post_only_exits,
                   timeout=timedelta(minutes=perps.post_only_timeout_minutes),
                   twap_volume_share=perps.twap_volume_share, twap_slices=perps.twap_slices,
                   twap_volume_bars=perps.twap_volume_bars)


@dataclass
class _Algo:
    parent: Order
    kind: str                                    # post_only | twap
    deadline: datetime | None = None
    children: list[str] = field(default_factory=list)
    slices: list[Decimal] = field(default_factory=list)   # TWAP quantities not yet sent
    next_at: datetime | None = None
    fallback: bool = False                       # an exit's market order after the timeout was sent
    repost: bool = False                         # re-post at the touch once this cycle's marks are in
    log: list[str] = field(default_factory=list)


class PerpExecution:
    """Wraps a :class:`~.venue.SimulatedPerpVenue` (same interface); see the module docstring."""

    def __init__(self, venue, config: ExecutionConfig):
        self.venue = venue
        self.config = config
        self._algos: dict[str, _Algo] = {}       # parent client order id -> algo
        self._parent_of: dict[str, str] = {}     # child -> parent
        self._ready: list = []
        self._seq = 0
        self._now: datetime | None = None
        self.child_orders: list[dict] = []       # every child sent: parent, kind, type, price, status (audit)

    def __getattr__(self, name):                 # everything not worked here is the venue's
        return getattr(self.venue, name)

    # ------------------------------------------------------------------ orders in
    def submit(self, order: Order) -> Order:
        cfg = self.config
        kind = self._kind(order)
        if kind is None:
            return self.venue.submit(order)
        if order.client_order_id in self._algos:
            from ..ports import InvalidOrder
            raise InvalidOrder(f"client_order_id {order.client_order_id} must be unique", symbol=order.symbol)
        parent = dataclasses.replace(order, status=OrderStatus.ACCEPTED, broker_order_id=f"algo-{order.client_order_id}")
        algo = _Algo(parent, kind)
        if kind == "twap":
            algo.slices = self._slices(order)
            algo.next_at = order.created_at
        else:
            algo.deadline = order.created_at + cfg.timeout
        # the first child goes out now, so a refusal (margin, reduce-only, size) reaches the executor as one
        if kind == "twap":
            self._send_slice(algo, order.created_at, raise_errors=True)
        else:
            self._post(algo, order.created_at, raise_errors=True)
        self._algos[order.client_order_id] = algo
        return dataclasses.replace(parent)

    def _kind(self, order: Order) -> str | None:
        cfg = self.config
        if order.order_type is not OrderType.MARKET:
            return None
        if cfg.twap_volume_share > 0 and self._above_volume_share(order):
            return "twap"
        if order.purpose == "entry" and not order.reduce_only and cfg.post_only_entries:
            return "post_only"
        if (order.purpose == "exit" and order.reduce_only and cfg.post_only_exits and order.stop_price is None
                and not is_kill_order_id(order.client_order_id)):
            return "post_only"
        return None

    def recent_volume(self, symbol: str, now: datetime) -> float | None:
        """Mean base-coin volume of the last ``twap_volume_bars`` closed bars (None without bars)."""
        snap = self.venue.market.snapshot(now)
        bars = snap.bars.get(symbol) if hasattr(snap.bars, "get") else None
        if bars is None or getattr(bars, "volume", None) is None or not len(bars.volume):
            return None
        v = bars.volume[-self.config.twap_volume_bars:]
        return float(v.mean())

    def _above_volume_share(self, order: Order) -> bool:
        vol = self.recent_volume(order.symbol, order.created_at)
        return vol is not None and vol > 0 and float(order.qty) > self.config.twap_volume_share * vol

    def _slices(self, order: Order) -> list[Decimal]:
        spec = self.venue.asset(order.symbol)
        n = self.config.twap_slices
        step = spec.round_qty(order.qty / n)
        if step < spec.min_order_size:   # too small to cut in n: fewer, larger slices
            step = spec.min_order_size
        out = []
        left = order.qty
        while left > 0 and len(out) < n - 1 and left - step >= step:
            out.append(step)
            left -= step
        out.append(left)
        return out

    # ------------------------------------------------------------------ children
    def _child(self, algo: _Algo, now: datetime, qty: Decimal, *, limit: Decimal | None) -> Order:
        self._seq += 1
        p = algo.parent
        return Order(f"{p.client_order_id}-x{self._seq}", p.symbol, p.side, qty,
                     OrderType.LIMIT if limit is not None else OrderType.MARKET,
                     TimeInForce.GTX if limit is not None else TimeInForce.GTC, now, p.strategy, purpose=p.purpose,
                     limit_price=limit, reduce_only=p.reduce_only)

    def _send(self, algo: _Algo, child: Order, raise_errors: bool) -> bool:
        try:
            self.venue.submit(child)
        except BrokerError as exc:
            algo.log.append(f"{child.created_at:%Y-%m-%d %H:%M} {child.order_type.value} refused: {exc}")
            self.child_orders.append(self._audit(algo, child, f"refused: {exc}"))
            if raise_errors and not algo.children:
                raise
            return False
        algo.children.append(child.client_order_id)
        self._parent_of[child.client_order_id] = algo.parent.client_order_id
        self.child_orders.append(self._audit(algo, child, "sent"))
        return True

    def _audit(self, algo: _Algo, child: Order, status: str) -> dict:
        return {"parent": algo.parent.client_order_id, "child": child.client_order_id, "kind": algo.kind,
                "symbol": child.symbol, "side": child.side.value, "qty": str(child.qty),
                "type": child.order_type.value, "limit_price": str(child.limit_price) if child.limit_price else None,
                "reduce_only": child.reduce_only, "at": child.created_at.isoformat(), "status": status}

    def touch(self, symbol: str, side: Side) -> Decimal | None:
        """The price a post-only order rests at: the mark rounded away from crossing."""
        mark = self.venue.mark(symbol)
        if mark is None:
            return None
        return self.venue.asset(symbol).round_price(mark, ROUND_FLOOR if side is Side.BUY else ROUND_CEILING)

    def _remaining(self, algo: _Algo) -> Decimal:
        return algo.parent.qty - algo.parent.filled_qty

    def _post(self, algo: _Algo, now: datetime, raise_errors: bool = False) -> None:
        price = self.touch(algo.parent.symbol, algo.parent.side)
        qty = self._remaining(algo)
        if price is None or qty <= 0:
            return
        self._send(algo, self._child(algo, now, qty, limit=price), raise_errors)

    def _send_slice(self, algo: _Algo, now: datetime, raise_errors: bool = False) -> None:
        qty = min(algo.slices.pop(0), self._remaining(algo) - self._working_qty(algo))
        algo.next_at = now + self.config.bar_interval
        if qty > 0:
            self._send(algo, self._child(algo, now, qty, limit=None), raise_errors)

    def _working_qty(self, algo: _Algo) -> Decimal:
        total = ZERO
        for c in algo.children:
            o = self.venue.get_order(c)
            if o is not None and o.status.is_open:
                total += o.qty - o.filled_qty
        return total

    # ------------------------------------------------------------------ time passes
    def _step(self, now: datetime) -> None:
        """Collect the venue's fills (children's become the parent's), then time-outs, re-posts, fallbacks,
        next TWAP slices."""
        self._now = now if self._now is None else max(self._now, now)
        for f in self.venue.poll_fills(now):
            parent_id = self._parent_of.get(f.client_order_id)
            if parent_id is None:
                self._ready.append(f)
                continue
            p = self._algos[parent_id].parent
            value = (p.filled_avg_price or ZERO) * p.filled_qty + f.price * f.qty
            p.filled_qty += f.qty
            p.filled_avg_price = value / p.filled_qty
            self._ready.append(dataclasses.replace(f, client_order_id=parent_id))
        for algo in self._algos.values():
            p = algo.parent
            if not p.status.is_open:
                continue
            if p.filled_qty >= p.qty:
                p.status = OrderStatus.FILLED
                continue
            if p.filled_qty > 0:
                p.status = OrderStatus.PARTIALLY_FILLED
            working = self._working_qty(algo)
            if algo.kind == "twap":
                if algo.slices and now >= algo.next_at:
                    self._send_slice(algo, now)
                elif not algo.slices and working == 0:
                    self._finish(algo, "TWAP children ended short of the quantity")
                continue
            if now >= algo.deadline and not algo.fallback:
                for c in algo.children:
                    self.venue.cancel(c)
                if p.purpose == "entry":
                    self._finish(algo, f"post-only entry not filled within {self.config.timeout}; canceled",
                                 OrderStatus.CANCELED)
                    continue
                algo.fallback = True   # a reduce-only exit: the rest at market
                qty = self._remaining(algo)
                if qty > 0 and not self._send(algo, self._child(algo, now, qty, limit=None), False):
                    self._finish(algo, "market fallback refused: " + algo.log[-1])
                continue
            if working == 0 and not algo.fallback:   # rejected for crossing (price moved): post at the new
                algo.repost = True                   # touch, read from this cycle's marks (update_marks)
            elif working == 0 and algo.fallback:
                self._finish(algo, "market fallback ended unfilled: " + (algo.log[-1] if algo.log else ""))

    def update_marks(self, prices, now: datetime | None = None) -> None:
        self.venue.update_marks(prices, now)
        at = now or self._now
        for algo in self._algos.values():
            if algo.repost and algo.parent.status.is_open and at is not None:
                algo.repost = False
                self._post(algo, at)

    def _finish(self, algo: _Algo, why: str, status: OrderStatus | None = None) -> None:
        p = algo.parent
        p.status = status or (OrderStatus.CANCELED if p.filled_qty > 0 else OrderStatus.REJECTED)
        p.reject_reason = why

    def poll_fills(self, now: datetime):
        self._step(now)
        out, self._ready = self._ready, []
        return out

    def settle_funding(self, now: datetime):
        payments = self.venue.settle_funding(now)
        self._step(now)
        return payments

    def cancel(self, client_order_id: str) -> None:
        algo = self._algos.get(client_order_id)
        if algo is None:
            self.venue.cancel(client_order_id)
            return
        for c in algo.children:
            self.venue.cancel(c)
        if algo.parent.status.is_open:
            algo.parent.status = OrderStatus.CANCELED

    def open_orders(self) -> list[Order]:
        own = [a.parent for a in self._algos.values() if a.parent.status.is_open]
        return own + [o for o in self.venue.open_orders() if o.client_order_id not in self._parent_of]

    def get_order(self, client_order_id: str) -> Order | None:
        algo = self._algos.get(client_order_id)
        return algo.parent if algo is not None else self.venue.get_order(client_order_id)

    def to_state(self) -> dict:
        return self.venue.to_state()   # working algos are not kept, as the venue keeps no working orders

    def load_state(self, state: dict) -> None:
        self.venue.load_state(state)


__all__ = ["ExecutionConfig", "PerpExecution"]
