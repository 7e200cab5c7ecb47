"""Simulated perpetual-futures venue (Binance USD-M rules, one-way mode, isolated margin).

Rules of the venue
==================

Units. Collateral, margin, fees, funding and P&L are USDT (``*_usdt``); HYDRA's ``*_usd`` fields
(``Account``, ``Fill.fee_usd``, ``FundingPayment.amount_usd``) carry the same numbers, taking 1 USDT = 1 USD.
Quantities are base coin, signed on positions (+ long, − short). Prices are USDT per coin. All Decimal.

Orders. Market orders fill at the open of the first bar that opens at or after the order's
``created_at`` (the replay ``MarketData.next_bar_open`` contract), moved against the trader by
``slippage_bps`` and rounded to the tick against the trader, and pay the taker fee. Limit orders are
post-only (time in force GTX, Binance's "good till crossing"): refused at submit when the limit crosses the
current mark, rejected (-5022) when the open of the bar they arrive in (the first bar opening at or after
``created_at``) crosses it, else they rest and fill at the limit price, maker fee, no slippage, in the first
bar from the arrival bar on that trades *through* the limit (low below a buy, high above a sell; a touch
does not fill: the queue is unknown), stamped at that bar's open. They work until filled or canceled
(the timeout is the client's: :mod:`.execution`). Stop and other order types are refused.
An order may not be dated before the venue's clock (the last time it was advanced to).

Margin. Isolated margin, one position per symbol (one-way mode, ``positionSide`` BOTH). Opening posts
initial margin = notional at the fill price / the symbol's leverage from the available balance, plus the
fee; a position whose notional would exceed what the leverage allows (Binance ``maxNotionalValue`` from
the brackets) is refused. Leverage is set per symbol with :meth:`set_leverage`, at most the first bracket's
(BTC 125, ETH 125, SOL 100, BNB 75 in the shipped table) and is fixed while a position is open. Reducing
releases margin pro rata and realises price P&L. Cross margin is not simulated.

Reduce-only. An order with ``reduce_only`` that would open, add to or flip a position is refused at
submit with :class:`ReduceOnlyRejected` (Binance −2022), and rejected at fill if the position changed
meanwhile (e.g. it was liquidated).

Funding. Settlements come from the real history (:mod:`.funding`); each one is applied exactly once to
the positions held at that instant: ``amount = −qty × mark × rate`` (a long pays positive funding), never
times leverage, never per bar. It is credited to / debited from the position's isolated margin (as Binance
does in isolated mode, so it moves the liquidation price) and summed on the position (``funding_usdt``),
and that sum goes on the closed trade — it is already in the balance, so it is reported, not paid again.
Mark at settlement: the history's mark where it has one, else the open of the bar that opens at the
settlement time, else the latest mark the venue was given; each payment records which (``funding_log``).
Order of events at one instant: a settlement at T is paid by positions held just before T; a fill at the
T bar's open comes after it; the T bar's high/low is checked for liquidation after that fill.

Liquidation. The liquidation price is Binance's (:func:`.margin.liquidation_price`) from the isolated
wallet, entry, size and the maintenance bracket. When a bar's low (long) or high (short) reaches it, the
position is closed at the liquidation price (rounded to the tick against the trader) with a fee of
``liquidation_fee_bps`` (default: the taker fee — NOTES gives no clearance-fee rate), producing a Fill and
a closed trade with exit reason ``liquidation``; the fill is stamped at the bar's open (the wick happened
somewhere inside the bar). Without a bar source the check runs on the marks given to ``update_marks``.

What is simulated, and what is not
----------------------------------
* Simulated: isolated margin, brackets, maintenance margin, Binance's liquidation price, funding at
  discrete settlements, taker fees, slippage, reduce-only, min notional, leverage caps, restart state.
* Not simulated: cross margin and multi-asset mode; hedge mode; the mark price itself (the perp's traded
  high/low/open stand in for the mark — traded wicks are deeper than mark wicks, so this venue liquidates
  at least as often as Binance would); the insurance-fund clearance (Binance keeps what is left of the
  isolated margin on liquidation; here the remainder after the fee goes back to the balance, which is
  optimistic by about the maintenance margin); ADL; partial liquidation of large positions; order-book
  depth and queue position (a post-only limit fills only when a bar trades through it); stop orders;
  funding-rate caps and predicted rates.
* Unverified defaults (confirm against ``GET /fapi/v1/exchangeInfo`` and the fee schedule): maker 2 bps,
  taker 5 bps (VIP 0), the tick/step sizes in :data:`DEFAULT_PERP_SPECS`, and a 5 USDT minimum notional for
  every symbol (the −4164 template; Binance's real minimums differ per symbol).

Bars. The venue needs ``market.next_bar_open(symbol, after, now)``; for liquidation on highs and lows it
also reads ``bars.bars_between(symbol, start, now)`` (see :class:`.bars.BarRangeSource`); one
:class:`.bars.PerpBars` serves both.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Mapping

from ..domain import (AssetClass, Fill, FundingPayment, Order, OrderStatus, OrderType, Side, TimeInForce,
                      require_utc)
from ..ports import (Account, AssetSpec, BrokerPosition, InsufficientBuyingPower, InvalidOrder,
                     InvalidTimeInForce, MarketData, VenueCapabilities, to_decimal)
from .bars import BarRangeSource
from .funding import FundingSchedule, settle
from .margin import LeverageBrackets, liquidation_price, load_brackets, maintenance_margin_usdt

PERP_FILL_VENUE = "perp"   # the venue its fills name: the router's name for the perp venue (wiring.PERP_VENUE)

from .records import (  # noqa: F401  (re-exported: the venue's public names)
    ZERO, BPS, FEE_QUANTUM_USDT, POST_ONLY_CROSS, DEFAULT_PERP_SPECS, MAKER_FEE_BPS, TAKER_FEE_BPS, MIN_NOTIONAL_USDT, PERP_TIF, LIQUIDATION, BAR_OPEN_PEEK, perp_spec, ReduceOnlyRejected, LeverageNotAllowed, PerpPosition, ClosedPerpTrade, FundingRecord, _Clock)


class SimulatedPerpVenue:
    name = "perp-sim"

    def __init__(self, market: MarketData, funding: Mapping[str, FundingSchedule], *,
                 starting_balance_usdt: Decimal | float | str, bars: BarRangeSource | None = None,
                 brackets: Mapping[str, LeverageBrackets] | None = None,
                 assets: Mapping[str, AssetSpec] | None = None,
                 taker_fee_bps: Decimal | float | str = TAKER_FEE_BPS,
                 maker_fee_bps: Decimal | float | str = MAKER_FEE_BPS,
                 liquidation_fee_bps: Decimal | float | str | None = None,
                 slippage_bps: Decimal | float | str = 5, default_leverage: int = 1,
                 min_notional_usdt: Decimal | float | str = MIN_NOTIONAL_USDT,
                 fee_quantum_usdt: Decimal | None = FEE_QUANTUM_USDT):
        self.market = market
        self.bars = bars
        self.funding = dict(funding)
        self.brackets = dict(brackets if brackets is not None else load_brackets())
        self.assets = dict(assets if assets is not None else DEFAULT_PERP_SPECS)
        missing = sorted(s for s in self.assets if s not in self.brackets)
        if missing:
            raise ValueError(f"no leverage brackets for {missing}")
        self.cash_usdt = to_decimal(starting_balance_usdt, "starting_balance_usdt")   # available balance
        self.taker_fee_rate = to_decimal(taker_fee_bps) * BPS
        self.maker_fee_rate = to_decimal(maker_fee_bps) * BPS   # for the later post-only item
        self.liquidation_fee_rate = (self.taker_fee_rate if liquidation_fee_bps is None
                                     else to_decimal(liquidation_fee_bps) * BPS)
        self.slippage = to_decimal(slippage_bps) * BPS
        self.min_notional_usdt = to_decimal(min_notional_usdt)
        self.fee_quantum = fee_quantum_usdt
        self.default_leverage = default_leverage
        self.capabilities = VenueCapabilities(
            name=self.name, short_crypto=True, reduce_only=True, fee_currency="USDT", marks_from_engine=True,
            settles_funding=True,
            max_leverage=float(max(self.brackets[s].max_leverage for s in self.assets)))
        self._leverage: dict[str, int] = {}
        self._positions: dict[str, PerpPosition] = {}
        self._marks: dict[str, Decimal] = {}
        # symbol -> (the last positive finite float update_marks took as its mark, that mark): most symbols'
        # prices (an equity's daily close) repeat for many hourly cycles, and their Decimal is made once
        self._marks_made: dict[str, tuple[float, Decimal]] = {}
        self._orders: dict[str, Order] = {}
        self._working: list[str] = []
        self._ready: list[Fill] = []          # fills made while advancing, handed out by poll_fills
        self._clock = _Clock()
        self._now: datetime | None = None     # the latest time the venue was advanced to
        self._fill_seq = 0
        self._liq_seq = 0
        self.fees_paid_usdt = ZERO
        self.funding_log: list[FundingRecord] = []
        self.closed_trades: list[ClosedPerpTrade] = []
        self.exit_reasons: dict[str, str] = {}   # client_order_id -> "liquidation" for venue-made closes

    @property
    def fees_paid(self) -> Decimal:
        """Fees paid, USDT (read as USD by the router's sum, like every other amount of this venue)."""
        return self.fees_paid_usdt

    # ------------------------------------------------------------------ leverage and marks
    def capabilities_for(self, symbol: str) -> VenueCapabilities:
        return self.capabilities

    def leverage(self, symbol: str) -> int:
        return self._leverage.get(symbol, self.default_leverage)

    def set_leverage(self, symbol: str, leverage: int) -> int:
        """Set ``symbol``'s leverage (an int, as Binance takes it). Refused above the bracket cap or while a
        position is open (the simulation keeps an open position's margin fixed)."""
        brackets = self._brackets(symbol)
        if isinstance(leverage, bool) or not isinstance(leverage, int) or leverage < 1:
            raise LeverageNotAllowed(f"leverage must be an int >= 1, got {leverage!r}", symbol=symbol)
        if leverage > brackets.max_leverage:
            raise LeverageNotAllowed(f"{symbol}: leverage {leverage} is above the bracket cap "
                                     f"{brackets.max_leverage}", symbol=symbol)
        if symbol in self._positions and leverage != self.leverage(symbol):
            raise LeverageNotAllowed(f"{symbol}: leverage cannot change while a position is open", symbol=symbol)
        self._leverage[symbol] = leverage
        return leverage

    def update_marks(self, prices: Mapping[str, float | Decimal], now: datetime | None = None) -> None:
        """Take the latest prices as marks (non-finite or non-positive ones are ignored). With ``now`` the
        venue also advances to it (funding, fills, liquidations on bar highs/lows); without a bar source,
        a held position whose mark has crossed its liquidation price is liquidated at that price."""
        marks, made = self._marks, self._marks_made
        for symbol, price in prices.items():
            kept = made.get(symbol)
            if kept is not None and kept[0] == price and price.__class__ is float:
                marks[symbol] = kept[1]   # the same positive double as last time: the same Decimal
                continue
            if isinstance(price, Decimal):
                ok = price.is_finite() and price > 0
            else:
                ok = 0 < price < math.inf
            if ok:
                mark = marks[symbol] = price if isinstance(price, Decimal) else Decimal(repr(float(price)))
                if price.__class__ is float:
                    made[symbol] = (price, mark)
        if now is not None:
            self._advance(now)
        if self.bars is None:
            ts = now or self._now
            for symbol in list(self._positions):
                mark = self._marks.get(symbol)
                if mark is not None and ts is not None:
                    self._check_cross(symbol, mark, mark, ts)

    def mark(self, symbol: str) -> Decimal | None:
        return self._marks.get(symbol)

    # ------------------------------------------------------------------ account
    def account(self) -> Account:
        """cash = wallet balance (available + isolated wallets), equity = margin balance (wallet +
        unrealised P&L at the marks), buying power = the available balance: the *margin* free for new
        positions (notional capacity is that times the leverage)."""
        wallet = self.cash_usdt + sum((p.isolated_margin_usdt for p in self._positions.values()), ZERO)
        upnl = sum((p.qty * (self._mark_or_entry(p) - p.entry_price) for p in self._positions.values()), ZERO)
        return Account(cash_usd=wallet, equity_usd=wallet + upnl, buying_power_usd=self.cash_usdt)

    def positions(self) -> dict[str, BrokerPosition]:
        return {s: BrokerPosition(s, p.qty, p.entry_price) for s, p in self._positions.items()}

    def perp_position(self, symbol: str) -> PerpPosition | None:
        return self._positions.get(symbol)

    def liquidation_price(self, symbol: str) -> Decimal | None:
        p = self._positions.get(symbol)
        if p is None:
            return None
        return liquidation_price(p.qty, p.entry_price, p.isolated_margin_usdt, self._brackets(symbol))

    def position_risk(self, symbol: str) -> dict:
        """The position in the shape of ``GET /fapi/v2/positionRisk`` (one-way, isolated), values as strings;
        ``liquidationPrice`` "0" when there is none, as Binance reports it."""
        p = self._positions.get(symbol)
        lev = self.leverage(symbol)
        mark = self._marks.get(symbol)
        base = {"symbol": symbol, "positionSide": "BOTH", "marginType": "isolated", "isAutoAddMargin": "false",
                "leverage": str(lev), "maxNotionalValue": str(self._brackets(symbol).max_notional_for_leverage(lev)),
                "markPrice": str(mark) if mark is not None else "0"}
        if p is None:
            return {**base, "positionAmt": "0", "entryPrice": "0", "isolatedMargin": "0", "isolatedWallet": "0",
                    "unRealizedProfit": "0", "notional": "0", "liquidationPrice": "0"}
        m = self._mark_or_entry(p)
        upnl = p.qty * (m - p.entry_price)
        liq = self.liquidation_price(symbol)
        return {**base, "positionAmt": str(p.qty), "entryPrice": str(p.entry_price),
                "isolatedWallet": str(p.isolated_margin_usdt), "isolatedMargin": str(p.isolated_margin_usdt + upnl),
                "unRealizedProfit": str(upnl), "notional": str(p.qty * m),
                "maintMargin": str(maintenance_margin_usdt(p.qty, m, self._brackets(symbol))),
                "liquidationPrice": str(liq) if liq is not None else "0"}

    def asset(self, symbol: str) -> AssetSpec:
        try:
            return self.assets[symbol]
        except KeyError:
            raise InvalidOrder(f"unknown perpetual {symbol!r}", symbol=symbol) from None

    def is_market_open(self, symbol: str, now: datetime) -> bool:
        return True   # perpetuals trade around the clock

    # ------------------------------------------------------------------ orders
    def submit(self, order: Order) -> Order:
        spec = self.asset(order.symbol)
        coid = order.client_order_id
        ctx = {"symbol": order.symbol, "client_order_id": coid}
        if coid in self._orders:
            raise InvalidOrder(f"client_order_id {coid} must be unique", **ctx)
        require_utc(order.created_at, "Order.created_at")
        if self._now is not None and order.created_at < self._now:
            raise InvalidOrder(f"order dated {order.created_at:%Y-%m-%d %H:%M:%S}Z is before the venue's clock "
                               f"{self._now:%Y-%m-%d %H:%M:%S}Z; funding already settled there", **ctx)
        if order.order_type is OrderType.LIMIT:
            self._check_post_only(order, spec, ctx)
        elif order.order_type is not OrderType.MARKET:
            raise InvalidOrder(f"the simulated perp venue takes market and post-only limit orders, got "
                               f"{order.order_type.value}", **ctx)
        elif order.time_in_force is TimeInForce.GTX:
            raise InvalidTimeInForce("GTX (post-only) applies to limit orders only", **ctx)
        if order.time_in_force not in spec.time_in_force:
            raise InvalidTimeInForce(f"time_in_force {order.time_in_force.value} is not accepted for {order.symbol}; "
                                     f"allowed: {sorted(t.value for t in spec.time_in_force)}", **ctx)
        if order.qty <= 0 or spec.round_qty(order.qty) != order.qty or order.qty < spec.min_order_size:
            raise InvalidOrder(f"qty {order.qty} is not a positive multiple of {spec.qty_increment}", **ctx)
        held = self._positions.get(order.symbol)
        held_qty = held.qty if held else ZERO
        if order.reduce_only:
            self._check_reduce_only(order, held_qty, ctx)
            closing, opening = order.qty, ZERO
        else:
            closing = min(order.qty, abs(held_qty)) if held_qty * order.side.sign < 0 else ZERO
            opening = order.qty - closing
        mark = self._marks.get(order.symbol)
        if opening > 0:
            if mark is None:
                raise InvalidOrder(f"no mark for {order.symbol} yet; cannot check margin", **ctx)
            if order.qty * mark < self.min_notional_usdt:
                raise InvalidOrder(f"Order's notional must be no smaller than {self.min_notional_usdt} "
                                   f"(unless you choose reduce only) (Binance -4164): {order.qty} x {mark}", **ctx)
            price = mark * (1 + self.slippage)
            self._check_notional_cap(order.symbol, abs(held_qty + order.side.sign * order.qty) * price, ctx)
            need = self._open_cost(order.symbol, opening, price)
            free = self.cash_usdt - self._working_margin()
            if need > free:
                raise InsufficientBuyingPower(f"Margin is insufficient (Binance -2019): need {need:.8f} USDT, "
                                              f"available {free:.8f} USDT", **ctx)
        accepted = Order(**{f: getattr(order, f) for f in order.__dataclass_fields__})
        accepted.status, accepted.broker_order_id = OrderStatus.ACCEPTED, f"perp-{len(self._orders) + 1}"
        self._orders[coid] = accepted
        self._working.append(coid)
        return accepted

    def _check_post_only(self, order: Order, spec: AssetSpec, ctx: dict) -> None:
        """A limit order must be post-only (GTX) with a price on the tick that does not cross the mark."""
        if order.time_in_force is not TimeInForce.GTX:
            raise InvalidTimeInForce(f"limit orders on the simulated perp venue are post-only: time_in_force must be "
                                     f"gtx, got {order.time_in_force.value}", **ctx)
        price = order.limit_price
        if price is None or not price.is_finite() or price <= 0 or spec.round_price(price) != price:
            raise InvalidOrder(f"limit_price {price} must be positive and a multiple of {spec.price_increment}", **ctx)
        mark = self._marks.get(order.symbol)
        if mark is not None and self._crosses(order, mark):
            raise InvalidOrder(f"{POST_ONLY_CROSS}: {order.side.value} limit {price} against the mark {mark}", **ctx)

    @staticmethod
    def _crosses(order: Order, price: Decimal) -> bool:
        """Would a post-only order at ``order.limit_price`` take liquidity when the market trades at ``price``."""
        return price < order.limit_price if order.side is Side.BUY else price > order.limit_price

    def _limit_event(self, order: Order, now: datetime):
        """When and how a working post-only order ends by ``now``: ``None`` if its arrival bar has not
        closed (wait), ``()`` if it rests, ``(ts, "reject")`` if the arrival bar's open crosses it (it would
        have been a taker: Binance -5022), ``(ts, "fill")`` at the open time of the first bar, from the
        arrival bar on, that trades *through* the limit (low below a buy, high above a sell; a touch is not
        enough: the queue ahead of the order is unknown)."""
        nxt = self.market.next_bar_open(order.symbol, order.created_at, now)
        if nxt is None:
            return None
        arrival, open_price = nxt
        if self._crosses(order, to_decimal(open_price)):
            return (arrival, "reject")
        if self.bars is None:
            return ()
        limit = float(order.limit_price)
        buy = order.side is Side.BUY
        for b in self.bars.bars_between(order.symbol, arrival, now):
            if (b.low < limit) if buy else (b.high > limit):
                return (b.open_time, "fill")
        return ()

    def _check_reduce_only(self, order: Order, held_qty: Decimal, ctx: dict) -> None:
        if held_qty == 0 or held_qty * order.side.sign > 0 or order.qty > abs(held_qty):
            raise ReduceOnlyRejected(f"ReduceOnly Order is rejected (Binance -2022): {order.side.value} "
                                     f"{order.qty} {order.symbol} against a position of {held_qty}", **ctx)

    def _check_notional_cap(self, symbol: str, notional: Decimal, ctx: dict) -> None:
        lev = self.leverage(symbol)
        cap = self._brackets(symbol).max_notional_for_leverage(lev)
        if notional > cap:
            raise LeverageNotAllowed(f"{symbol}: a {notional:.2f} USDT position is above the {cap} USDT that "
                                     f"{lev}x allows", **ctx)

    def _open_cost(self, symbol: str, qty: Decimal, price: Decimal) -> Decimal:
        notional = qty * price
        return notional / self.leverage(symbol) + notional * self.taker_fee_rate

    def _working_margin(self) -> Decimal:
        """Margin and fees that working (not reduce-only) orders would take at the current marks."""
        total = ZERO
        for c in self._working:
            o = self._orders[c]
            mark = self._marks.get(o.symbol)
            if not o.reduce_only and mark is not None:
                total += self._open_cost(o.symbol, o.qty, mark * (1 + self.slippage))
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

    def poll_fills(self, now: datetime) -> list[Fill]:
        """Advance to ``now`` and hand out every fill made since the last call (orders and liquidations),
        oldest first."""
        self._advance(now)
        fills, self._ready = self._ready, []
        return fills

    def venue_exit_reason(self, client_order_id: str) -> str | None:
        """``liquidation`` for a close this venue made itself, else None."""
        return self.exit_reasons.get(client_order_id)

    def settle_funding(self, now: datetime) -> list[FundingPayment]:
        """Advance to ``now``, applying every settlement not yet applied (each exactly once, also across
        ``to_state``/``load_state``); returns the payments this call made."""
        before = len(self.funding_log)
        self._advance(now)
        return [r.payment for r in self.funding_log[before:]]

    # ------------------------------------------------------------------ event-horizon replay
    def horizon_until(self, now: datetime) -> datetime | None:
        """Event-horizon replay (``hydra_engine/horizon.py``, issue #24): the earliest time this venue could
        pay or charge funding, liquidate or fill, or None for "no promise". Promised only when it holds
        nothing: no position (a settlement for a symbol not held is a no-op that only moves the funding
        cursor, and no bar can liquidate), no working order and no fill waiting to be handed out. Its clock
        then catches up at the next visited cycle's ``settle_funding``/``poll_fills`` exactly as tick by tick
        (``_advance`` over an empty book only raises the cursor to ``now``). With positions: no promise yet
        (every bar is a liquidation check)."""
        if self._positions or self._working or self._ready:
            return None
        return datetime.max.replace(tzinfo=now.tzinfo) - timedelta(days=2)

    # ------------------------------------------------------------------ the event loop
    def _advance(self, now: datetime) -> None:
        """Process, in time order, every settlement, fill and bar (liquidation check) up to ``now``.

        A working order whose fill bar has not closed yet will fill at or after its ``created_at``, so
        nothing after that moment is processed until it fills: a settlement is never applied before the
        venue knows who holds the position at that instant."""
        require_utc(now, "now")
        if self._now is not None and now < self._now:
            raise ValueError(f"the venue's clock is at {self._now.isoformat()}; cannot go back to {now.isoformat()}")
        while True:
            horizon = now
            fills: list[tuple[datetime, str, float]] = []
            for coid in self._working:
                o = self._orders[coid]
                if o.order_type is OrderType.LIMIT:
                    ev = self._limit_event(o, now)
                    if ev is None:
                        horizon = min(horizon, o.created_at)
                    elif ev:
                        fills.append((ev[0], coid, ev[1]))
                    continue
                nxt = self.market.next_bar_open(o.symbol, o.created_at, now)
                if nxt is None:
                    horizon = min(horizon, o.created_at)
                else:
                    fills.append((nxt[0], coid, nxt[1]))
            events: list[tuple[datetime, int, str, object]] = []
            through = self._clock.funding_through
            for symbol in self._positions:
                schedule = self.funding.get(symbol)
                s = schedule.next_after(through) if schedule is not None else None
                if s is not None and s.ts <= horizon:
                    events.append((s.ts, 0, symbol, s))
            for ts, coid, price in fills:
                events.append((ts, 1, coid, price))
            if self.bars is not None:
                for symbol in self._positions:
                    start = self._clock.bars_from.get(symbol)
                    if start is None:
                        continue
                    nxt_bars = self.bars.bars_between(symbol, start, now)
                    if nxt_bars and nxt_bars[0].open_time < horizon:
                        events.append((nxt_bars[0].open_time, 2, symbol, nxt_bars[0]))
            if not events:
                break
            ts, kind, key, payload = min(events, key=lambda e: (e[0], e[1]))
            if kind == 0:
                # every held symbol settling at this instant, before the cursor passes it: the cursor is
                # shared, so settling one symbol alone skipped the others' same-time settlement (#20: seen
                # with SOLUSDT and BNBUSDT both held; BTCUSDT and ETHUSDT held together lost ETH's too)
                for e in events:
                    if e[1] == 0 and e[0] == ts:
                        self._settle(e[2], e[3], now)
                self._clock.funding_through = ts
            elif kind == 1:
                order = self._orders[key]
                if payload == "reject":
                    order.status, order.reject_reason = OrderStatus.REJECTED, POST_ONLY_CROSS
                else:
                    self._fill(order, ts, None if payload == "fill" else payload)
                self._working.remove(key)
                self._raise_funding_cursor(ts)
            else:
                self._clock.bars_from[key] = payload.close_time
                self._check_cross(key, Decimal(repr(payload.low)), Decimal(repr(payload.high)), ts)
                self._raise_funding_cursor(ts)
        # nothing at or before the horizon is left: settlements there for symbols not held were no-ops
        self._raise_funding_cursor(horizon)
        self._now = now if self._now is None else max(self._now, now)

    def _raise_funding_cursor(self, ts: datetime) -> None:
        """Events at ``ts`` are done, so are settlements up to ``ts`` (those of held symbols were events
        themselves, ordered before any fill or bar at the same instant)."""
        if self._clock.funding_through is None or ts > self._clock.funding_through:
            self._clock.funding_through = ts

    def _settle(self, symbol: str, s, now: datetime) -> None:
        pos = self._positions[symbol]
        mark, source = s.mark_price, "history"
        if mark is None:
            # the open of the bar starting at the settlement is known at the settlement, so it is read even
            # when that bar has not closed by ``now``: the mark must not depend on when the venue is called
            nxt = self.market.next_bar_open(symbol, s.ts, s.ts + BAR_OPEN_PEEK)
            if nxt is not None and nxt[0] == s.ts:
                mark, source = to_decimal(nxt[1], "bar open"), "bar_open"
            else:
                mark, source = self._marks.get(symbol), "last_mark"
        if mark is None:
            raise ValueError(f"{symbol}: no mark price for the settlement at {s.ts.isoformat()}")
        payment = settle(pos, s.rate, mark, s.ts)
        pos.isolated_margin_usdt += payment.amount_usd
        pos.funding_usdt += payment.amount_usd
        self.funding_log.append(FundingRecord(payment, source))
        self._check_cross(symbol, mark, mark, s.ts)   # funding moved the isolated wallet, hence the price

    def _fee(self, notional: Decimal, rate: Decimal) -> Decimal:
        fee = notional * rate
        return fee.quantize(self.fee_quantum, rounding=ROUND_HALF_UP) if self.fee_quantum is not None else fee

    def _fill(self, order: Order, ts: datetime, open_price: float | None) -> None:
        """A market order at ``open_price`` (slippage against the trader, taker fee); a post-only limit
        (``open_price`` None) at its limit price, maker fee, no slippage."""
        spec = self.assets[order.symbol]
        sign = order.side.sign
        if open_price is None:
            price, rate = order.limit_price, self.maker_fee_rate
        else:
            price = spec.round_price(to_decimal(open_price) * (1 + sign * self.slippage),
                                     ROUND_CEILING if sign > 0 else ROUND_FLOOR)
            rate = self.taker_fee_rate
        pos = self._positions.get(order.symbol)
        held = pos.qty if pos else ZERO
        if order.reduce_only and (held == 0 or held * sign > 0 or order.qty > abs(held)):
            order.status = OrderStatus.REJECTED
            order.reject_reason = (f"ReduceOnly Order is rejected (Binance -2022): the position is {held} "
                                   f"when the {order.side.value} {order.qty} would fill")
            return
        closing = min(order.qty, abs(held)) if held * sign < 0 else ZERO
        opening = order.qty - closing
        if opening > 0:
            new_notional = (abs(held + sign * order.qty)) * price
            cap = self._brackets(order.symbol).max_notional_for_leverage(self.leverage(order.symbol))
            free = self.cash_usdt + (self._release_on_close(pos, closing, price) if closing else ZERO)
            if new_notional > cap or self._open_cost(order.symbol, opening, price) > free:
                order.status = OrderStatus.REJECTED
                order.reject_reason = ("Margin is insufficient (Binance -2019) at fill" if new_notional <= cap
                                       else f"position notional {new_notional:.2f} above {cap} for the leverage")
                return
        fee_total = ZERO
        if closing:
            fee = self._fee(closing * price, rate)
            self._close(order.symbol, closing, price, fee, ts, "order", order.client_order_id)
            fee_total += fee
        if opening:
            fee = self._fee(opening * price, rate)
            self._open(order.symbol, sign * opening, price, fee, ts)
            fee_total += fee
        order.status, order.filled_qty, order.filled_avg_price = OrderStatus.FILLED, order.qty, price
        self._emit(order.client_order_id, order.symbol, order.side, order.qty, price, fee_total, ts)

    def _release_on_close(self, pos: PerpPosition, qty: Decimal, price: Decimal) -> Decimal:
        share = qty / abs(pos.qty)
        return pos.isolated_margin_usdt * share + pos.qty / abs(pos.qty) * qty * (price - pos.entry_price)

    def _open(self, symbol: str, signed_qty: Decimal, price: Decimal, fee: Decimal, ts: datetime) -> None:
        margin = abs(signed_qty) * price / self.leverage(symbol)
        self.cash_usdt -= margin + fee
        self.fees_paid_usdt += fee
        pos = self._positions.get(symbol)
        if pos is None:
            self._positions[symbol] = PerpPosition(symbol, signed_qty, price, self.leverage(symbol), margin, ts,
                                                   entry_fees_usdt=fee)
            self._clock.bars_from[symbol] = ts   # the fill bar's own high/low can already liquidate it
        else:
            new_qty = pos.qty + signed_qty
            pos.entry_price = (abs(pos.qty) * pos.entry_price + abs(signed_qty) * price) / abs(new_qty)
            pos.qty = new_qty
            pos.isolated_margin_usdt += margin
            pos.entry_fees_usdt += fee

    def _close(self, symbol: str, qty: Decimal, price: Decimal, fee: Decimal, ts: datetime, reason: str,
               coid: str) -> None:
        pos = self._positions[symbol]
        share = qty / abs(pos.qty)
        direction = 1 if pos.qty > 0 else -1
        price_pnl = direction * qty * (price - pos.entry_price)
        margin = pos.isolated_margin_usdt * share
        funding = pos.funding_usdt * share
        entry_fees = pos.entry_fees_usdt * share
        self.cash_usdt += margin + price_pnl - fee
        self.fees_paid_usdt += fee
        self.closed_trades.append(ClosedPerpTrade(
            symbol, "long" if direction > 0 else "short", qty, pos.entry_price, price, pos.opened_at, ts,
            price_pnl, entry_fees + fee, funding, price_pnl - entry_fees - fee + funding, reason, coid))
        if qty == abs(pos.qty):
            del self._positions[symbol]
            self._clock.bars_from.pop(symbol, None)
        else:
            pos.qty -= direction * qty
            pos.isolated_margin_usdt -= margin
            pos.funding_usdt -= funding
            pos.entry_fees_usdt -= entry_fees

    def _check_cross(self, symbol: str, low: Decimal, high: Decimal, ts: datetime) -> None:
        """Liquidate ``symbol``'s position if the price range [low, high] reached its liquidation price."""
        pos = self._positions.get(symbol)
        if pos is None:
            return
        liq = liquidation_price(pos.qty, pos.entry_price, pos.isolated_margin_usdt, self._brackets(symbol))
        if liq is None or (pos.qty > 0 and low > liq) or (pos.qty < 0 and high < liq):
            return
        spec = self.assets[symbol]
        price = spec.round_price(liq, ROUND_FLOOR if pos.qty > 0 else ROUND_CEILING)
        qty = abs(pos.qty)
        side = Side.SELL if pos.qty > 0 else Side.BUY
        fee = self._fee(qty * price, self.liquidation_fee_rate)
        self._liq_seq += 1
        coid = f"liquidation-{symbol}-{self._liq_seq:06d}"
        order = Order(coid, symbol, side, qty, OrderType.MARKET, TimeInForce.IOC, ts, strategy="venue",
                      purpose="exit", status=OrderStatus.FILLED, broker_order_id=coid, filled_qty=qty,
                      filled_avg_price=price, reduce_only=True)
        self._orders[coid] = order
        self.exit_reasons[coid] = LIQUIDATION
        self._close(symbol, qty, price, fee, ts, LIQUIDATION, coid)
        for c in list(self._working):   # reduce-only orders have nothing left to reduce
            o = self._orders[c]
            if o.symbol == symbol and o.reduce_only:
                self._working.remove(c)
                o.status, o.reject_reason = OrderStatus.CANCELED, "position liquidated"
        self._emit(coid, symbol, side, qty, price, fee, ts)

    def _emit(self, coid: str, symbol: str, side: Side, qty: Decimal, price: Decimal, fee: Decimal,
              ts: datetime) -> None:
        self._fill_seq += 1
        self._ready.append(Fill(coid, symbol, side, qty, price, fee, ts, f"perpfill-{self._fill_seq}",
                                venue=PERP_FILL_VENUE))

    # ------------------------------------------------------------------ helpers
    def _brackets(self, symbol: str) -> LeverageBrackets:
        try:
            return self.brackets[symbol]
        except KeyError:
            raise InvalidOrder(f"no leverage brackets for {symbol!r}", symbol=symbol) from None

    def _mark_or_entry(self, p: PerpPosition) -> Decimal:
        return self._marks.get(p.symbol, p.entry_price)

    # ------------------------------------------------------------------ restart support
    def to_state(self) -> dict:
        """Balances, positions, leverage, marks and the clock (which settlements and bars are done), so a
        restarted venue neither pays a settlement twice nor skips one. Working orders are not kept (as in
        the equity simulator): the engine re-derives them."""
        def dt(x):
            return x.isoformat() if x is not None else None
        return {
            "cash_usdt": str(self.cash_usdt), "fees_paid_usdt": str(self.fees_paid_usdt),
            "fill_seq": self._fill_seq, "liq_seq": self._liq_seq, "leverage": dict(self._leverage),
            "marks": {s: str(m) for s, m in self._marks.items()},
            "positions": {s: {k: (str(v) if isinstance(v, Decimal) else dt(v) if isinstance(v, datetime) else v)
                              for k, v in asdict(p).items()} for s, p in self._positions.items()},
            "funding_through": dt(self._clock.funding_through), "now": dt(self._now),
            "bars_from": {s: dt(t) for s, t in self._clock.bars_from.items()},
            "exit_reasons": dict(self.exit_reasons),
        }

    def load_state(self, state: dict) -> None:
        def dt(x):
            return datetime.fromisoformat(x) if x is not None else None
        self.cash_usdt = Decimal(state["cash_usdt"])
        self.fees_paid_usdt = Decimal(state.get("fees_paid_usdt", "0"))
        self._fill_seq = int(state.get("fill_seq", 0))
        self._liq_seq = int(state.get("liq_seq", 0))
        self._leverage = {s: int(x) for s, x in state.get("leverage", {}).items()}
        self._marks = {s: Decimal(m) for s, m in state.get("marks", {}).items()}
        self._positions = {}
        for s, p in state.get("positions", {}).items():
            self._positions[s] = PerpPosition(
                symbol=p["symbol"], qty=Decimal(p["qty"]), entry_price=Decimal(p["entry_price"]),
                leverage=int(p["leverage"]), isolated_margin_usdt=Decimal(p["isolated_margin_usdt"]),
                opened_at=dt(p["opened_at"]), funding_usdt=Decimal(p["funding_usdt"]),
                entry_fees_usdt=Decimal(p["entry_fees_usdt"]))
        self._clock = _Clock(dt(state.get("funding_through")),
                             {s: dt(t) for s, t in state.get("bars_from", {}).items()})
        self._now = dt(state.get("now"))
        self.exit_reasons = dict(state.get("exit_reasons", {}))
