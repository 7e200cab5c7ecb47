"""Simulated broker: the offline and backtest venue, with Alpaca's rules and HYDRA's typed errors.

Market orders fill at the next available price — the open of the first bar that opens at or after
the order was sent — moved against the trader by ``slippage_bps``, and pay ``fee_bps`` of notional.
The rules mirror what Alpaca enforces, so a strategy that works here is not refused on paper:
crypto is spot and long-only, fractional shares cannot be sold short, orders need buying power,
an order may not oppose another working order on the same symbol, and a client_order_id is unique.
Buying power is equity minus gross exposure (no margin): conservative, and it never goes negative.

Fill models (``fill_model``):

* ``"next_open"`` (the default, and the only one the engine's sessions use): the open of the first bar
  that opens at or after the order — an order decided on a bar's close cannot trade at that close.
* ``"signal_close"`` (benchmarks only, see ``bench/README.md``): the close of the last bar that had closed
  when the order was created, i.e. the bar the decision was made on ("cheat-on-close", as backtrader's
  ``set_coc``, backtesting.py's ``trade_on_close`` and vectorbt's default). It is optimistic and exists so
  HYDRA can be compared with those engines on their own convention. The fill is still delivered by the
  next ``poll_fills`` (the next cycle), with the same slippage, fee, rounding and buying-power rules.

Exits triggered inside a bar (issue #17): an exit order (``purpose="exit"``, market) that carries the level
its stop (``stop_price``) or target (``limit_price``) triggered at inside a closed bar fills at that level,
moved by the same slippage, at the close time of that bar -- the last bar closed when the order was sent,
whose low..high must hold the level (else, and on market data that cannot say, the next open as any
market order). The position manager computed the level from the bar (the stop, the target, or the bar's
open when it gapped through); see ``positions.py``.

``fee_quantum`` rounds each fee (half-up) to that many dollars (default $0.000001); ``None`` keeps the
exact Decimal product (benchmarks reproducing a float reference).
"""
from __future__ import annotations

import math
from dataclasses import fields
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from operator import attrgetter

from ..domain import AssetClass, Fill, Order, OrderStatus, OrderType, Side, TimeInForce
from ..ports import (ZERO, Account, AssetSpec, BrokerPosition, HeldQuantity, InsufficientBuyingPower,
                     InvalidOrder, InvalidTimeInForce, MarketData, ShortNotAllowed, VenueCapabilities,
                     WashTradeRejected, to_decimal)

BPS = Decimal("0.0001")
FEE_QUANTUM = Decimal("0.000001")
FILL_MODELS = ("next_open", "signal_close")
# Alpaca: a DAY order lives through one session and then expires. The replay has no exchange calendar,
# so waiting a fixed time for the next session would expire good orders over long closures (Fri -> Tue
# is four days to the close of Tuesday's first bar); what it does know is where its data ends: a DAY order
# sent after its symbol's last bar opened can never fill, and it expires a day after it was sent. Before,
# it stayed working for ever and blocked whoever waited on it (e.g. the baselines' rebalancing).
DAY_ORDER_EXPIRES_AFTER = timedelta(days=1)
FILL_VENUE = "alpaca"   # the venue its fills name (issue #20): it is the simulated Alpaca book
_order_values = attrgetter(*(f.name for f in fields(Order)))   # every field of an Order, in order, as a tuple


class SimulatedBroker:
    name = "sim"
    # Alpaca's rules without the venue-held orders: stops, targets and trails are watched by the engine
    capabilities = VenueCapabilities(name="sim", fractional_equities=True, short_equities=True,
                                     marks_from_engine=True, extended_hours_limit=True)

    def capabilities_for(self, symbol: str) -> VenueCapabilities:
        return self.capabilities

    def __init__(self, market: MarketData, assets: dict[str, AssetSpec], *, starting_cash_usd: Decimal | float,
                 fee_bps: float = 10.0, slippage_bps: float = 5.0, fill_model: str = "next_open",
                 fee_quantum: Decimal | None = FEE_QUANTUM):
        if fill_model not in FILL_MODELS:
            raise ValueError(f"fill_model must be one of {FILL_MODELS}, got {fill_model!r}")
        if fill_model == "signal_close" and not hasattr(market, "bar_close_at"):
            raise ValueError("fill_model 'signal_close' needs market data with bar_close_at() (replay data)")
        self.fill_model = fill_model
        self.fee_quantum = fee_quantum
        self.market = market
        self.assets = assets
        self.cash = to_decimal(starting_cash_usd, "starting_cash_usd")
        self.fee_rate = to_decimal(fee_bps) * BPS
        self.slippage = to_decimal(slippage_bps) * BPS
        self._positions: dict[str, BrokerPosition] = {}
        self._orders: dict[str, Order] = {}
        self._working: list[str] = []
        self._last_bar_times = getattr(market, "last_bar_times", None)   # replay data knows where it ends
        self._prices: dict[str, float] = {}             # the latest valid observed price per symbol
        self._marks: dict[str, Decimal] = {}             # Decimal marks, made from _prices when read
        self._mark_src: dict[str, float] = {}           # the float each mark was converted from
        self._version = 0                                # bumped whenever a held mark or a position changes
        self._account_cache: tuple | None = None         # ((cash, positions, version), Account)
        self._fill_seq = 0
        self.fees_paid = ZERO

    # ------------------------------------------------------------------ account
    def update_marks(self, prices: dict[str, float]) -> None:
        """Mark positions at the latest observed prices (ignoring non-finite or non-positive ones). The
        Decimal mark is made when something reads it (``_mark_of``): most symbols' prices change every
        bar, but only held ones are read every cycle."""
        latest, held = self._prices, self._positions
        for symbol, price in prices.items():
            if 0 < price < math.inf and latest.get(symbol) != price:   # NaN compares False
                latest[symbol] = price
                if symbol in held:
                    self._version += 1

    def _mark_of(self, symbol: str) -> Decimal | None:
        """The Decimal mark of ``symbol`` (None before any price or fill): ``Decimal(str(price))`` of the
        latest observed price, converted once per new price."""
        price = self._prices.get(symbol)
        if price is not None and self._mark_src.get(symbol) != price:
            self._marks[symbol] = Decimal(str(price))   # to_decimal() without its re-check: finite here
            self._mark_src[symbol] = price
        return self._marks.get(symbol)

    def _mark(self, symbol: str) -> Decimal:
        mark = self._mark_of(symbol)
        if mark is not None:
            return mark
        pos = self._positions.get(symbol)
        return pos.avg_entry_price if pos else ZERO

    def account(self) -> Account:
        # the engine asks several times a cycle; recompute only when cash, marks or positions changed
        key, cached = self._account_cache or ((None, None, None), None)
        if key[0] is self.cash and key[1] is self._positions and key[2] == self._version:
            return cached
        # one pass over every position, not an incremental sum: Decimal sums round at 28 digits, so
        # adding and removing one position's value would not give the same result as summing afresh
        market_value = gross = ZERO
        for s, p in self._positions.items():
            mark = self._mark_of(s)
            if mark is None:
                mark = p.avg_entry_price
            value = p.qty * mark   # |qty| × mark is exactly |value|: marks are positive, rounding is symmetric
            market_value += value
            gross += value if value >= 0 else -value
        equity = self.cash + market_value
        account = Account(cash_usd=self.cash, equity_usd=equity, buying_power_usd=max(ZERO, equity - gross))
        self._account_cache = ((self.cash, self._positions, self._version), account)
        return account

    def positions(self) -> dict[str, BrokerPosition]:
        return dict(self._positions)

    def asset(self, symbol: str) -> AssetSpec:
        try:
            return self.assets[symbol]
        except KeyError:
            raise InvalidOrder(f"unknown asset {symbol!r}", symbol=symbol) from None

    def is_market_open(self, symbol: str, now: datetime) -> bool:
        """The simulation queues orders to the next bar, like Alpaca queues them to the next open."""
        return True

    # ------------------------------------------------------------------ orders
    def submit(self, order: Order) -> Order:
        spec = self.asset(order.symbol)
        coid = order.client_order_id
        if coid in self._orders:
            raise InvalidOrder(f"client_order_id {coid} must be unique", symbol=order.symbol, client_order_id=coid)
        self._validate(order, spec)
        accepted = Order(*_order_values(order))   # dataclasses.replace(), without its per-call field checks
        accepted.status, accepted.broker_order_id = OrderStatus.ACCEPTED, f"sim-{len(self._orders) + 1}"
        self._orders[coid] = accepted
        self._working.append(coid)
        return accepted

    def _validate(self, order: Order, spec: AssetSpec) -> None:
        ctx = {"symbol": order.symbol, "client_order_id": order.client_order_id}
        if not spec.tradable or spec.asset_class is AssetClass.INDEX:
            raise InvalidOrder(f"{order.symbol} is not tradable", **ctx)
        if order.extended_hours:   # issue #18: Alpaca's extended-hours rule, filled against pre-market bars only
            if (order.order_type is not OrderType.LIMIT or order.time_in_force is not TimeInForce.DAY
                    or spec.asset_class is not AssetClass.EQUITY or order.limit_price is None):
                raise InvalidOrder("extended_hours needs an equity DAY limit order with a limit price", **ctx)
            if not hasattr(self.market, "premarket_bars"):
                raise InvalidOrder("extended-hours orders need market data with intraday bars (replay)", **ctx)
        elif order.order_type is not OrderType.MARKET:
            raise InvalidOrder(f"the simulated broker fills market orders only, got {order.order_type.value}", **ctx)
        if spec.order_types and order.order_type not in spec.order_types:
            raise InvalidOrder(f"{order.order_type.value} orders are not accepted for {order.symbol}", **ctx)
        if spec.time_in_force and order.time_in_force not in spec.time_in_force:
            raise InvalidTimeInForce(f"time_in_force {order.time_in_force.value} is not accepted for "
                                     f"{order.symbol}; allowed: {sorted(t.value for t in spec.time_in_force)}", **ctx)
        if order.qty <= 0 or spec.round_qty(order.qty) != order.qty or order.qty < spec.min_order_size:
            raise InvalidOrder(f"qty {order.qty} is not a positive multiple of {spec.qty_increment} "
                               f"at least {spec.min_order_size}", **ctx)
        for other in (self._orders[c] for c in self._working):
            if other.symbol == order.symbol and other.side is not order.side:
                raise WashTradeRejected(f"opposite {other.side.value} order {other.client_order_id} is working "
                                        f"on {order.symbol}", **ctx)
        held = self._positions.get(order.symbol)
        held_qty = held.qty if held else ZERO
        reserved = sum((self._orders[c].qty for c in self._working
                        if self._orders[c].symbol == order.symbol and self._orders[c].side is order.side), ZERO)
        price = self._mark_of(order.symbol)
        if order.side is Side.SELL:
            available = max(ZERO, held_qty) - reserved
            short_qty = order.qty - max(ZERO, available)
            if short_qty > 0:
                if spec.asset_class is AssetClass.CRYPTO:
                    raise ShortNotAllowed(f"crypto cannot be sold short: sell {order.qty} {order.symbol} with "
                                          f"{max(ZERO, available)} available", **ctx)
                if held_qty > 0 or reserved > 0:
                    raise HeldQuantity(f"insufficient qty available for order (requested: {order.qty}, "
                                       f"available: {max(ZERO, available)})", **ctx)
                if not spec.shortable:
                    raise ShortNotAllowed(f"{order.symbol} is not shortable", **ctx)
                if short_qty != short_qty.to_integral_value():
                    raise ShortNotAllowed(f"fractional short sales are not supported ({short_qty} {order.symbol})", **ctx)
        opening = order.side is Side.BUY and held_qty >= 0 or order.side is Side.SELL and held_qty <= 0 or order.qty > abs(held_qty)  # a flip opens too
        if opening:
            if price is None:
                raise InvalidOrder(f"no price yet for {order.symbol}; cannot check buying power", **ctx)
            cost = order.qty * price * (1 + self.slippage + self.fee_rate)
            bp = self.account().buying_power_usd - self._working_notional()
            if cost > bp:
                raise InsufficientBuyingPower(f"insufficient buying power: need ${cost:.2f}, have ${bp:.2f}", **ctx)

    def _working_notional(self) -> Decimal:
        total = ZERO
        for c in self._working:
            o = self._orders[c]
            mark = self._mark_of(o.symbol)
            total += o.qty * (ZERO if mark is None else mark) * (1 + self.slippage + self.fee_rate)
        return total

    def cancel(self, client_order_id: str) -> None:
        order = self._orders.get(client_order_id)
        if order is not None and client_order_id in self._working:
            self._working.remove(client_order_id)
            order.status = OrderStatus.CANCELED

    def open_orders(self) -> list[Order]:
        return [self._orders[c] for c in self._working]

    def get_order(self, client_order_id: str) -> Order | None:
        return self._orders.get(client_order_id)

    # ------------------------------------------------------------------ fills
    def poll_fills(self, now: datetime) -> list[Fill]:
        fills: list[Fill] = []
        if not self._working:
            return fills
        signal_close = self.fill_model == "signal_close"
        for coid in list(self._working):
            order = self._orders[coid]
            if order.extended_hours:
                self._poll_extended(order, now, fills)
                continue
            if signal_close:
                nxt = self.market.bar_close_at(order.symbol, order.created_at) if order.created_at <= now else None
            elif order.purpose == "exit" and (order.stop_price is not None or order.limit_price is not None) and \
                    (inside := self._triggered_in_bar(order)) is not None:
                nxt = inside
            else:
                nxt = self.market.next_bar_open(order.symbol, order.created_at, now)
            if nxt is None:
                if order.time_in_force is TimeInForce.DAY and now - order.created_at >= DAY_ORDER_EXPIRES_AFTER:
                    last = self._last_bar_times(order.symbol) if self._last_bar_times else None
                    if last is not None and last[0] < order.created_at:
                        order.status = OrderStatus.EXPIRED
                        order.reject_reason = (f"no {order.symbol} session to fill in: its data ends with the bar "
                                               f"opened {last[0]:%Y-%m-%d %H:%M}Z")
                        self._working.remove(coid)
                continue
            ts, open_price = nxt
            fill = self._fill(order, ts, open_price if isinstance(open_price, Decimal) else to_decimal(open_price))
            self._working.remove(coid)
            if fill is not None:
                fills.append(fill)
        return fills

    def _poll_extended(self, order: Order, now: datetime, fills: list[Fill]) -> None:
        """An extended-hours limit entry fills only against pre-market candles (04:00-09:30 New York) of the
        day it was sent: at the first candle whose range reaches the limit, at its open when that is better
        than the limit, else at the limit (slippage never past the limit). Not reached by the 09:30 open:
        it expires (stricter than Alpaca, whose DAY order would also work through the regular session)."""
        bars, over = self.market.premarket_bars(order.symbol, order.created_at, now)
        limit, sign = order.limit_price, order.side.sign
        for ts, o, h, low in bars:
            if (low <= float(limit)) if sign > 0 else (h >= float(limit)):
                best = to_decimal(o)
                price = min(best, limit) if sign > 0 else max(best, limit)
                self._working.remove(order.client_order_id)
                fill = self._fill(order, ts, price, cap=limit)
                if fill is not None:
                    fills.append(fill)
                return
        if over:
            self._working.remove(order.client_order_id)
            order.status = OrderStatus.EXPIRED
            order.reject_reason = (f"extended-hours limit {limit} not reached in the pre-market of "
                                   f"{order.created_at:%Y-%m-%d}; the simulation fills these only before 09:30 New York")

    def _triggered_in_bar(self, order: Order) -> tuple[datetime, Decimal] | None:
        """(close time, level) of the bar an intrabar stop/target exit triggered in, or None."""
        bar_at = getattr(self.market, "bar_at", None)
        if bar_at is None:
            return None
        bar = bar_at(order.symbol, order.created_at)
        if bar is None:
            return None
        _, closed, _, high, low, _ = bar
        level = order.stop_price if order.stop_price is not None else order.limit_price
        tol = Decimal("1e-9") * level
        if not (Decimal(str(low)) - tol <= level <= Decimal(str(high)) + tol):
            return None
        return closed, level

    def _fill(self, order: Order, ts: datetime, open_price: Decimal, cap: Decimal | None = None) -> Fill | None:
        spec = self.assets[order.symbol]
        sign = order.side.sign
        # round to the tick against the trader too, so rounding never gives slippage back
        price = spec.round_price(open_price * (1 + sign * self.slippage), ROUND_CEILING if sign > 0 else ROUND_FLOOR)
        if cap is not None:   # a limit order never fills past its limit
            price = min(price, cap) if sign > 0 else max(price, cap)
        notional = order.qty * price
        fee = notional * self.fee_rate
        if self.fee_quantum is not None:
            fee = fee.quantize(self.fee_quantum, rounding=ROUND_HALF_UP)
        pos = self._positions.get(order.symbol)
        held = pos.qty if pos else ZERO
        opening = (order.side is Side.BUY and held >= 0) or (order.side is Side.SELL and held <= 0) or order.qty > abs(held)
        if opening and notional + fee > self.account().buying_power_usd:
            order.status, order.reject_reason = OrderStatus.REJECTED, "insufficient buying power at fill"
            return None
        self.cash -= sign * notional + fee
        self.fees_paid += fee
        new_qty = held + sign * order.qty
        if new_qty == 0:
            self._positions.pop(order.symbol, None)
        elif held == 0 or (held > 0) != (new_qty > 0):
            self._positions[order.symbol] = BrokerPosition(order.symbol, new_qty, price)
        elif abs(new_qty) > abs(held):  # adding to the position: volume-weighted average entry
            avg = (abs(held) * pos.avg_entry_price + order.qty * price) / abs(new_qty)
            self._positions[order.symbol] = BrokerPosition(order.symbol, new_qty, avg)
        else:
            self._positions[order.symbol] = BrokerPosition(order.symbol, new_qty, pos.avg_entry_price)
        if self._mark_of(order.symbol) is None:   # never priced yet: the fill price marks it
            self._marks[order.symbol] = price
        self._version += 1
        order.status, order.filled_qty, order.filled_avg_price = OrderStatus.FILLED, order.qty, price
        self._fill_seq += 1
        return Fill(order.client_order_id, order.symbol, order.side, order.qty, price, fee, ts, f"simfill-{self._fill_seq}",
                    venue=FILL_VENUE)

    # ------------------------------------------------------------------ restart support
    def to_state(self) -> dict:
        return {"cash": str(self.cash), "fees_paid": str(self.fees_paid), "fill_seq": self._fill_seq,
                "positions": {s: [str(p.qty), str(p.avg_entry_price)] for s, p in self._positions.items()}}

    def load_state(self, state: dict) -> None:
        self.cash = Decimal(state["cash"])
        self.fees_paid = Decimal(state.get("fees_paid", "0"))
        self._fill_seq = int(state.get("fill_seq", 0))
        self._positions = {s: BrokerPosition(s, Decimal(q), Decimal(a)) for s, (q, a) in state["positions"].items()}
        self._version += 1
