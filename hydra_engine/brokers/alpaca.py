"""Alpaca (paper) trading behind HYDRA's ``Broker`` protocol, on alpaca-py.

What the adapter guarantees, so the engine loop need not know which broker it talks to:
  * every order is checked against the asset capability matrix before any request (``capabilities``);
  * an exit first cancels the orders holding the shares and waits, bounded, for the cancels; an order
    never goes out while an opposite-side order works on the same symbol (``WashTradeRejected``);
  * a submit that ends in a timeout, connection error or 5xx has an *unknown* outcome: the order is
    looked up by its deterministic client_order_id before any retry, so a retry never duplicates it;
  * one rate limiter fronts every REST call (``ratelimit``); 4xx answers become the typed errors of
    ``hydra_engine.ports``, classified by message (Alpaca's codes are overloaded, NOTES §1.5);
  * API keys never appear in logs, reprs or error text (``redact``).
Live trading (``paper=False``) needs both ``live=True`` and ``HYDRA_ENABLE_LIVE_TRADING``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.common.enums import Sort
from alpaca.trading.enums import OrderClass, OrderSide, QueryOrderStatus
from alpaca.trading.enums import TimeInForce as AlpacaTIF
from alpaca.trading.requests import (GetOrdersRequest, LimitOrderRequest, MarketOrderRequest, StopLimitOrderRequest,
                                     StopLossRequest, StopOrderRequest, TakeProfitRequest, TrailingStopOrderRequest)

from ..config import UNIVERSE, AlpacaKeys, ConfigError, live_trading_opt_in
from ..domain import UTC, AssetClass, Fill, Order, OrderStatus, OrderType, Side, TimeInForce, require_utc
from ..ports import (Account, AssetSpec, AuthError, BrokerError, BrokerPosition, HeldQuantity, InsufficientBuyingPower,
                     InvalidOrder, InvalidTimeInForce, MarketClosed, OrderNotFound, RateLimited, ShortNotAllowed,
                     UnknownOrderOutcome, VenueCapabilities, WashTradeRejected)
from ..orderids import is_hydra_order_id, is_kill_order_id, strategy_of
from .capabilities import load_capabilities, normalise_symbol, validate_and_round
from .ratelimit import RateLimiter, install

log = logging.getLogger(__name__)

PAPER_URL = "https://paper-api.alpaca.markets"
LIVE_HOST = "api.alpaca.markets"


class BrokerUnavailable(BrokerError):
    """Alpaca did not answer usefully (timeout, connection error, 5xx) after the limiter's retries."""

    retryable = True
    user_hint = "Alpaca is not answering (timeout or server error); HYDRA tries again next cycle"


# --------------------------------------------------------------------------- helpers
def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every occurrence of each secret (4+ characters) in ``text`` with ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def resolve_urls(trading_url: str | None = None, data_url: str | None = None,
                 env: Mapping[str, str] = os.environ) -> tuple[str | None, str | None]:
    """Base URLs: explicit/config value first, then ``APCA_API_BASE_URL`` / ``APCA_API_DATA_URL``,
    else None (alpaca-py's defaults). A trailing ``/v2`` is removed: alpaca-py adds the version."""
    def clean(url: str | None) -> str | None:
        url = (url or "").strip().rstrip("/")
        return re.sub(r"/v\d+(beta\d+)?$", "", url) or None
    return clean(trading_url or env.get("APCA_API_BASE_URL")), clean(data_url or env.get("APCA_API_DATA_URL"))


def _dec(value: Any) -> Decimal | None:
    return None if value in (None, "") else Decimal(str(value))


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


_STATUS = {
    "new": OrderStatus.ACCEPTED, "accepted": OrderStatus.ACCEPTED, "pending_new": OrderStatus.ACCEPTED,
    "accepted_for_bidding": OrderStatus.ACCEPTED, "held": OrderStatus.ACCEPTED, "done_for_day": OrderStatus.ACCEPTED,
    "pending_cancel": OrderStatus.ACCEPTED, "pending_replace": OrderStatus.ACCEPTED, "pending_review": OrderStatus.ACCEPTED,
    "stopped": OrderStatus.ACCEPTED, "suspended": OrderStatus.ACCEPTED, "calculated": OrderStatus.PARTIALLY_FILLED,
    "partially_filled": OrderStatus.PARTIALLY_FILLED, "filled": OrderStatus.FILLED, "canceled": OrderStatus.CANCELED,
    "replaced": OrderStatus.CANCELED, "expired": OrderStatus.EXPIRED, "rejected": OrderStatus.REJECTED,
}
_TERMINAL = {"filled", "canceled", "expired", "rejected", "replaced"}
_FILL_POLL_PAGES = 20      # pages of 500 orders read per poll; the rest wait for the next cycle
_MS = timedelta(milliseconds=1)

# Message patterns, most specific first (40310000 covers buying power, held qty, min notional...).
_RULES: list[tuple[re.Pattern, type[BrokerError]]] = [
    (re.compile(r"insufficient qty|held_for_orders|held for orders"), HeldQuantity),
    (re.compile(r"insufficient (day trading )?buying power"), InsufficientBuyingPower),
    (re.compile(r"wash trade"), WashTradeRejected),
    (re.compile(r"short"), ShortNotAllowed),
    (re.compile(r"time.?in.?force|\btif\b"), InvalidTimeInForce),
    (re.compile(r"market (is )?closed|market hours|market is not open"), MarketClosed),
    (re.compile(r"not authori[sz]ed|unauthori[sz]ed|forbidden|invalid (api )?key"), AuthError),
    (re.compile(r"rate limit|too many requests"), RateLimited),
    (re.compile(r"not found"), OrderNotFound),
]


def _error_parts(exc: APIError) -> tuple[int | None, Any, str]:
    """(HTTP status, Alpaca code, message) without trusting the body to be JSON (NOTES §1.3)."""
    text = str(exc)
    try:
        body = json.loads(text)
        return exc.status_code, body.get("code"), str(body.get("message", text))
    except (ValueError, AttributeError):
        return exc.status_code, None, " ".join(text.split())[:300] or "(empty body)"


def classify(status: int | None, message: str, side: Side | None = None) -> type[BrokerError]:
    """The HYDRA error class for an Alpaca error answer, by message first, then by HTTP status."""
    low = message.lower()
    if "insufficient balance" in low:            # crypto: buy -> USD balance, sell -> coin balance
        return HeldQuantity if side is Side.SELL else InsufficientBuyingPower
    for pattern, cls in _RULES:
        if pattern.search(low):
            return cls
    if status == 401:
        return AuthError
    if status == 404:
        return OrderNotFound
    if status == 429:
        return RateLimited
    if status is None or status >= 500:
        return BrokerUnavailable
    if status in (400, 403, 422):
        return InvalidOrder
    return BrokerError


@dataclass
class FlattenReport:
    """What ``flatten_all`` did; per-symbol failures are reported, not raised."""

    canceled_order_ids: list[str] = field(default_factory=list)
    cancel_failures: dict[str, str] = field(default_factory=dict)     # order id (or "*": the call) -> reason
    closing_orders: dict[str, str] = field(default_factory=dict)      # symbol -> closing order id
    failures: dict[str, str] = field(default_factory=dict)            # symbol (or "*": the call) -> reason
    queued: list[str] = field(default_factory=list)                   # symbols whose close waits for the open
    sent: dict[str, Order] = field(default_factory=dict)              # symbol -> HYDRA's own closing order
    # symbol -> a HYDRA market order already closing it (a running engine's kill exit sent after the cancel
    # above): left working, and no second close is sent
    already_closing: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.cancel_failures and not self.failures


# --------------------------------------------------------------------------- the adapter
class AlpacaBroker:
    """HYDRA ``Broker`` on Alpaca. ``clock`` is a callable returning UTC now, or an object with ``now()``."""

    capabilities = VenueCapabilities(
        name="alpaca",
        native_trailing_stops=True,   # equities: Alpaca holds a percent trail between HYDRA's cycles
        brackets=True,                # equities: market entry with take-profit and stop-loss legs
        fractional_equities=True, short_equities=True, short_crypto=False, extended_hours_limit=True,
        # crypto: the fee is taken from the asset received (coins on a buy, dollars on a sell; NOTES §1.6) and
        # is on no order -- the engine measures a buy's fee from the position and keeps sub-minimum dust apart
        fees_in_received_asset=frozenset({AssetClass.CRYPTO}))

    def capabilities_for(self, symbol: str) -> VenueCapabilities:
        return self.capabilities

    def __init__(self, keys: AlpacaKeys, *, paper: bool = True, live: bool = False, url_override: str | None = None,
                 session_id: str, clock: Any, symbols: Iterable[str] = UNIVERSE,
                 capabilities: Mapping[str, AssetSpec] | None = None, capability_cache: Path | None = None,
                 limiter: RateLimiter | None = None, sleep: Callable[[float], None] = time.sleep,
                 timeout_s: float = 10.0, cancel_wait_s: float = 10.0, cancel_poll_s: float = 0.5,
                 clock_ttl_s: float = 30.0, submit_attempts: int = 3, fills_since: datetime | None = None):
        missing = keys.missing()
        if missing:
            raise ConfigError(f"Alpaca keys missing: {', '.join(missing)} (set them in the environment or .env)")
        self._secrets = [keys.api_key.get_secret_value(), keys.secret_key.get_secret_value()]
        base_url, _ = resolve_urls(url_override)
        if not paper and not (live and live_trading_opt_in()):
            raise ConfigError("live trading refused: paper=False needs live=True (--live) and "
                              "HYDRA_ENABLE_LIVE_TRADING=I_UNDERSTAND_REAL_MONEY")
        if paper and base_url and LIVE_HOST in base_url and "paper" not in base_url:
            raise ConfigError(f"paper trading configured but the trading URL {base_url} is Alpaca's live endpoint")
        self.paper, self.session_id = paper, session_id
        self.base_url = base_url or (PAPER_URL if paper else f"https://{LIVE_HOST}")
        self._clock = clock
        self._sleep = sleep
        self.limiter = limiter or RateLimiter(150)
        self._client = install(TradingClient(*self._secrets, paper=paper, url_override=base_url), self.limiter,
                               timeout_s=timeout_s)
        self._symbols = list(symbols)
        self._specs: dict[str, AssetSpec] = dict(capabilities or {})
        self._capability_cache = capability_cache
        self.cancel_wait_s, self.cancel_poll_s = cancel_wait_s, cancel_poll_s
        self.clock_ttl = timedelta(seconds=clock_ttl_s)
        self.submit_attempts = submit_attempts
        self._market_clock: tuple[datetime, Any] | None = None
        self._known: dict[str, Order] = {}              # client_order_id -> order sent by this adapter
        self._leg_parent: dict[str, str] = {}           # bracket leg client_order_id -> its parent's
        self._filled_seen: dict[str, tuple[Decimal, Decimal]] = {}   # broker order id -> (filled_qty, avg) reported
        # orders submitted after this instant are watched for fills (``after`` is exclusive)
        self._fills_after = require_utc(fills_since or self._now() - timedelta(seconds=1), "fills_since")

    def __repr__(self) -> str:
        return f"AlpacaBroker(paper={self.paper}, base_url={self.base_url!r}, session_id={self.session_id!r})"

    # ------------------------------------------------------------------ plumbing
    def _now(self) -> datetime:
        now = self._clock() if callable(self._clock) else self._clock.now()
        return require_utc(now, "clock")

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    @contextmanager
    def _errors(self, what: str, *, symbol: str | None = None, coid: str | None = None,
                side: Side | None = None) -> Iterator[None]:
        """Turn whatever alpaca-py/requests raise into a typed, redacted ``BrokerError``."""
        try:
            yield
        except BrokerError:
            raise
        except APIError as exc:
            raise self._translate(exc, what, symbol=symbol, coid=coid, side=side) from None
        except requests.RequestException as exc:
            raise BrokerUnavailable(self._redact(f"{what}: {type(exc).__name__}: {exc}"),
                                    symbol=symbol, client_order_id=coid) from None

    def _translate(self, exc: APIError, what: str, *, symbol=None, coid=None, side=None) -> BrokerError:
        status, code, message = _error_parts(exc)
        cls = classify(status, message, side)
        text = self._redact(f"{what}: Alpaca HTTP {status} code {code}: {message}")
        log.warning("%s (%s)", text, cls.__name__)
        return cls(text, symbol=symbol, client_order_id=coid)

    # ------------------------------------------------------------------ account and assets
    def account(self) -> Account:
        with self._errors("get account"):
            a = self._client.get_account()
        return Account(cash_usd=Decimal(a.cash), equity_usd=Decimal(a.equity), buying_power_usd=Decimal(a.buying_power))

    def positions(self) -> dict[str, BrokerPosition]:
        with self._errors("get positions"):
            rows = self._client.get_all_positions()
        out = {}
        for p in rows:
            symbol = normalise_symbol(p.symbol, getattr(p.asset_class, "value", None))
            qty = abs(Decimal(p.qty)) * (-1 if getattr(p.side, "value", p.side) == "short" else 1)
            out[symbol] = BrokerPosition(symbol, qty, Decimal(p.avg_entry_price))
        return out

    def load_assets(self, symbols: Iterable[str] | None = None) -> dict[str, AssetSpec]:
        """Fill the capability matrix from the Assets API (or the fresh JSON cache)."""
        wanted = [s for s in (symbols or self._symbols) if s not in self._specs]
        if wanted:
            def fetch(symbol: str):
                with self._errors(f"get asset {symbol}", symbol=symbol):
                    return self._client.get_asset(symbol)
            self._specs.update(load_capabilities(fetch, wanted, now=self._now(), cache_path=self._capability_cache))
        return dict(self._specs)

    def asset(self, symbol: str) -> AssetSpec:
        if symbol not in self._specs:
            self.load_assets(list(dict.fromkeys([*self._symbols, symbol])))
        return self._specs[symbol]

    def is_market_open(self, symbol: str, now: datetime) -> bool:
        """Crypto trades 24/7; equities follow ``/v2/clock``, cached for ``clock_ttl`` and refetched at
        the next open/close transition."""
        require_utc(now, "now")
        if self.asset(symbol).asset_class is AssetClass.CRYPTO:
            return True
        cached = self._market_clock
        if cached is not None:
            fetched_at, c = cached
            if now - fetched_at < self.clock_ttl and now < min(_utc(c.next_open), _utc(c.next_close)):
                return bool(c.is_open)
        with self._errors("get clock"):
            c = self._client.get_clock()
        self._market_clock = (now, c)
        return bool(c.is_open)

    # ------------------------------------------------------------------ orders
    def _to_order(self, o: Any) -> Order:
        coid = o.client_order_id
        local = self._known.get(coid)
        otype = getattr(o.type or o.order_type, "value", o.type or o.order_type)
        qty = _dec(o.qty) if o.qty is not None else (_dec(o.filled_qty) or Decimal(0))
        parent = self._leg_parent.get(coid)
        if local is not None:
            strategy, purpose = local.strategy, local.purpose
        elif is_kill_order_id(coid):      # a kill's closing order: an exit, never to be canceled as a holder
            strategy, purpose = "kill", "exit"
        elif parent is not None:          # a bracket leg: HYDRA's protection when its parent is HYDRA's
            strategy, purpose = self._strategy_from_id(parent), "stop"
        else:
            strategy, purpose = self._strategy_from_id(coid), "entry"
        order = Order(
            client_order_id=coid, symbol=normalise_symbol(o.symbol, getattr(o.asset_class, "value", None)),
            side=Side(o.side.value), qty=qty, order_type=OrderType(otype),
            time_in_force=TimeInForce(o.time_in_force.value), created_at=_utc(o.created_at),
            strategy=strategy, purpose=purpose,
            limit_price=_dec(o.limit_price), stop_price=_dec(o.stop_price), trail_percent=_dec(o.trail_percent),
            take_profit_price=local.take_profit_price if local else None,
            stop_loss_price=local.stop_loss_price if local else None,
            status=_STATUS.get(o.status.value, OrderStatus.UNKNOWN), broker_order_id=str(o.id),
            filled_qty=_dec(o.filled_qty) or Decimal(0), filled_avg_price=_dec(o.filled_avg_price))
        return order

    def _strategy_from_id(self, coid: str) -> str:
        """The strategy part of a ``make_client_order_id`` id of this session or an earlier HYDRA one,
        else ``external``."""
        m = re.fullmatch(re.escape(self.session_id) + r"-(.+)-[A-Za-z0-9_.]{1,16}-\d{6}", coid)
        return m.group(1) if m else (strategy_of(coid) or "external")

    def parent_of(self, client_order_id: str) -> str | None:
        """The client order id of the bracket order a working leg belongs to (from the last listing of
        open orders), else None. Alpaca gives legs ids of their own: only the parent says whose they are."""
        return self._leg_parent.get(client_order_id)

    def _alpaca_open_orders(self, symbol: str | None = None) -> list[Any]:
        """Open orders, legs flattened, optionally for one symbol (filtered here: the server-side
        ``symbols`` filter wants crypto pairs without the slash, spec GET /v2/orders)."""
        # nested: each leg comes under its parent, so a leg is known as the protection of HYDRA's entry
        req = GetOrdersRequest(status=QueryOrderStatus.OPEN, nested=True, limit=500)
        with self._errors("list open orders", symbol=symbol):
            rows = self._client.get_orders(req)
        for o in rows:
            for leg in o.legs or []:
                self._leg_parent[leg.client_order_id] = o.client_order_id
        flat = [leg for o in rows for leg in [o, *(o.legs or [])]]
        return [o for o in flat if o.status.value not in _TERMINAL and
                (symbol is None or normalise_symbol(o.symbol, getattr(o.asset_class, "value", None)) == symbol)]

    def open_orders(self) -> list[Order]:
        return [self._to_order(o) for o in self._alpaca_open_orders()]

    def _lookup(self, client_order_id: str) -> Any | None:
        try:
            with self._errors("get order by client_order_id", coid=client_order_id):
                return self._client.get_order_by_client_id(client_order_id)
        except OrderNotFound:
            return None

    def get_order(self, client_order_id: str) -> Order | None:
        o = self._lookup(client_order_id)
        return self._to_order(o) if o is not None else None

    def cancel(self, client_order_id: str) -> None:
        o = self._lookup(client_order_id)
        if o is None:
            raise OrderNotFound(f"cancel {client_order_id}: no such order at Alpaca", client_order_id=client_order_id)
        if o.status.value in _TERMINAL:
            return
        with self._errors(f"cancel order {client_order_id}", symbol=o.symbol, coid=client_order_id):
            self._client.cancel_order_by_id(o.id)

    def _request_for(self, order: Order, notional_usd: Decimal | None) -> Any:
        common: dict[str, Any] = dict(symbol=order.symbol, side=OrderSide(order.side.value),
                                      time_in_force=AlpacaTIF(order.time_in_force.value),
                                      client_order_id=order.client_order_id)
        # alpaca-py models hold floats and send JSON numbers; each value below is already rounded to the
        # venue's increments, so float() keeps its shortest decimal repr exactly (checked in the tests).
        if notional_usd is not None:
            common["notional"] = float(notional_usd)
        else:
            common["qty"] = float(order.qty)
        if order.take_profit_price is not None:
            common.update(order_class=OrderClass.BRACKET,
                          take_profit=TakeProfitRequest(limit_price=float(order.take_profit_price)),
                          stop_loss=StopLossRequest(stop_price=float(order.stop_loss_price)))
        t = order.order_type
        if t is OrderType.MARKET:
            return MarketOrderRequest(**common)
        if t is OrderType.LIMIT:
            if order.extended_hours:   # Alpaca: extended hours only on DAY limit orders (issue #18)
                return LimitOrderRequest(limit_price=float(order.limit_price), extended_hours=True, **common)
            return LimitOrderRequest(limit_price=float(order.limit_price), **common)
        if t is OrderType.STOP:
            return StopOrderRequest(stop_price=float(order.stop_price), **common)
        if t is OrderType.STOP_LIMIT:
            return StopLimitOrderRequest(stop_price=float(order.stop_price), limit_price=float(order.limit_price),
                                         **common)
        return TrailingStopOrderRequest(trail_percent=float(order.trail_percent), **common)

    def _merge(self, local: Order, placed: Any) -> Order:
        remote = self._to_order(placed)
        legs = []
        for leg in getattr(placed, "legs", None) or []:
            # bracket legs protect the entry, like a stop: purpose "stop", so the engine's own exit (time,
            # strategy, kill) is not mistaken for one already working -- it cancels them first
            legs.append(dataclasses.replace(self._to_order(leg), strategy=local.strategy, purpose="stop"))
            self._known[leg.client_order_id] = legs[-1]
        merged = dataclasses.replace(local, status=remote.status, broker_order_id=remote.broker_order_id,
                                     filled_qty=remote.filled_qty, filled_avg_price=remote.filled_avg_price,
                                     legs=tuple(legs))
        self._known[local.client_order_id] = merged
        return merged

    def _release_held(self, order: Order, holders: list[Any]) -> Order:
        """Cancel the same-side orders holding the shares (bracket legs, stops) and wait, bounded, until
        Alpaca confirms each is done. If one of them filled meanwhile, shrink the exit to what is left."""
        for h in holders:
            try:
                with self._errors(f"cancel holder {h.client_order_id}", symbol=order.symbol, coid=h.client_order_id):
                    self._client.cancel_order_by_id(h.id)
            except (OrderNotFound, InvalidOrder) as exc:      # already gone or no longer cancelable
                log.info("holder %s not canceled: %s", h.client_order_id, exc)
        pending = {str(h.id): h for h in holders}
        filled_any = False
        for _ in range(max(1, math.ceil(self.cancel_wait_s / self.cancel_poll_s)) + 1):
            for oid in list(pending):
                with self._errors(f"confirm cancel {oid}", symbol=order.symbol):
                    o = self._client.get_order_by_id(oid)
                if o.status.value in _TERMINAL:
                    filled_any |= (_dec(o.filled_qty) or Decimal(0)) > 0
                    del pending[oid]
            if not pending:
                break
            self._sleep(self.cancel_poll_s)
        if pending:
            raise HeldQuantity(f"exit {order.client_order_id}: cancel of {sorted(h.client_order_id for h in pending.values())} "
                               f"not confirmed within {self.cancel_wait_s}s; shares still held",
                               symbol=order.symbol, client_order_id=order.client_order_id)
        if filled_any:
            held = self.positions().get(order.symbol)
            left = abs(held.qty) if held else Decimal(0)
            if left < order.qty:
                if left <= 0:
                    return dataclasses.replace(order, qty=Decimal(0), status=OrderStatus.CANCELED,
                                               reject_reason="position already closed by a filled protective order")
                return dataclasses.replace(order, qty=self.asset(order.symbol).round_qty(left))
        return order

    def can_send_now(self, order: Order) -> str | None:
        """Why ``order`` cannot go out now (None: it can): the asset's order types, and market hours for
        an equity order that may not wait for the open. Asked *before* anything protecting a position is
        canceled, so an exit that would be refused never strips the broker-held stop first."""
        spec = self.asset(order.symbol)
        if spec.order_types and order.order_type not in spec.order_types:
            return f"{order.order_type.value} orders are not accepted for {order.symbol}"
        if spec.asset_class is AssetClass.EQUITY and not self.is_market_open(order.symbol, self._now()):
            return "the US equity market is closed"
        return None

    def submit(self, order: Order, *, notional_usd: Decimal | None = None, queue_if_closed: bool = False) -> Order:
        """Validate and round, check hours and working orders, then send exactly once per client_order_id.

        ``notional_usd`` sends a dollar-amount market order (crypto / fractionable equities).
        ``queue_if_closed``: an equity order outside market hours is sent all the same -- Alpaca queues a
        DAY market order for the next open (the kill switch's closes: what can wait for the open, does)."""
        spec = self.asset(order.symbol)
        if notional_usd is not None:   # up to 9 decimals on the wire (spec: notional); HYDRA deals in cents
            notional_usd = Decimal(notional_usd).quantize(Decimal("0.01"), rounding=ROUND_DOWN)
        order = validate_and_round(order, spec, notional_usd=notional_usd)
        # an extended-hours DAY limit entry (issue #18) is what Alpaca takes while the regular session is closed
        if (not queue_if_closed and spec.asset_class is AssetClass.EQUITY and not order.extended_hours
                and not self.is_market_open(order.symbol, self._now())):
            raise MarketClosed(f"{order.symbol} {order.client_order_id}: the US equity market is closed",
                               symbol=order.symbol, client_order_id=order.client_order_id)
        existing = self._known.get(order.client_order_id)
        if existing is not None and existing.status is not OrderStatus.UNKNOWN and existing.broker_order_id:
            return existing                     # already placed by this adapter: never twice
        working = [o for o in self._alpaca_open_orders(order.symbol)
                   if o.client_order_id != order.client_order_id]
        if order.purpose == "kill" and working:
            # the kill's close: whatever still works on the symbol (an entry, a stop, a leg) goes first,
            # either side -- a working buy would make the sell a wash trade, a stop holds the shares
            order = self._release_held(dataclasses.replace(order, purpose="exit"), working)
            order = dataclasses.replace(order, purpose="kill")
            if order.status is OrderStatus.CANCELED:
                return order
            working = []
        opposite = [o for o in working if o.side.value != order.side.value]
        if opposite:
            raise WashTradeRejected(f"{order.symbol} {order.side.value} {order.client_order_id}: opposite-side orders "
                                    f"{[o.client_order_id for o in opposite]} are working; cancel them first",
                                    symbol=order.symbol, client_order_id=order.client_order_id)
        if order.purpose == "exit" and working:
            order = self._release_held(order, working)
            if order.status is OrderStatus.CANCELED:
                return order
        request = self._request_for(order, notional_usd)
        self._known[order.client_order_id] = order
        return self._submit_once(order, request)

    def _submit_once(self, order: Order, request: Any) -> Order:
        coid, what = order.client_order_id, f"submit {order.client_order_id}"
        for attempt in range(self.submit_attempts):
            try:
                return self._merge(order, self._client.submit_order(request))
            except APIError as exc:
                status, _, message = _error_parts(exc)
                if status is not None and status < 500:
                    if "client_order_id" in message.lower() and ("unique" in message.lower() or "duplicate" in message.lower()):
                        placed = self._lookup(coid)      # a previous attempt (or run) placed it
                        if placed is not None:
                            return self._merge(order, placed)
                    err = self._translate(exc, what, symbol=order.symbol, coid=coid, side=order.side)
                    self._known[coid] = dataclasses.replace(order, status=OrderStatus.REJECTED, reject_reason=str(err))
                    raise err from None
                cause = f"HTTP {status}: {message}"
            except requests.RequestException as exc:
                cause = f"{type(exc).__name__}"
            # unknown outcome: ask Alpaca before anything else
            log.warning("%s: outcome unknown (%s); looking it up by client_order_id", what, self._redact(cause))
            self._known[coid] = dataclasses.replace(order, status=OrderStatus.UNKNOWN)
            try:
                placed = self._lookup(coid)
            except BrokerError as exc:
                raise UnknownOrderOutcome(self._redact(f"{what}: {cause}; lookup failed too ({exc}); "
                                                       "it may exist: look it up before resending"),
                                          symbol=order.symbol, client_order_id=coid) from None
            if placed is not None:
                return self._merge(order, placed)
            if attempt + 1 < self.submit_attempts:
                self._sleep(self.limiter.backoff_s(attempt))
        self._known[coid] = dataclasses.replace(order, status=OrderStatus.REJECTED, reject_reason=cause)
        raise BrokerUnavailable(self._redact(f"{what}: not placed after {self.submit_attempts} attempts "
                                             f"(last: {cause}); Alpaca confirms no such order"),
                                symbol=order.symbol, client_order_id=coid)

    # ------------------------------------------------------------------ fills
    @property
    def fills_watched_since(self) -> datetime:
        """Orders submitted after this time are watched for fills (persist it to resume after a crash)."""
        return self._fills_after

    def watch_fills(self, since: datetime, already_booked: Mapping[str, tuple[Decimal, Decimal]]) -> None:
        """Resume an earlier process's fill watch: also watch orders submitted after ``since``, and report
        nothing of the fills ``already_booked`` (broker order id -> (cumulative filled qty, average price))."""
        self._fills_after = min(self._fills_after, require_utc(since, "since"))
        self._filled_seen.update(already_booked)

    def poll_fills(self, now: datetime) -> list[Fill]:
        """Fills since the last call, from ``filled_qty`` increases of orders submitted after the
        watermark (the oldest order still open, else the newest order seen). Oldest first.

        Alpaca's ``after`` is strict and timestamps can repeat, so every page and the watermark start
        one millisecond before the last order read: orders read twice report no second fill (deltas
        are per order id), while an order sharing the boundary's timestamp is never skipped."""
        require_utc(now, "now")
        fills: list[Fill] = []
        seen: dict[str, tuple[Decimal, Decimal]] = {}   # marked reported only once every page has been read:
        after, oldest_open, newest = self._fills_after, None, self._fills_after   # a failing page loses nothing
        read: set[str] = set()
        for page in range(_FILL_POLL_PAGES):
            req = GetOrdersRequest(status=QueryOrderStatus.ALL, after=after, direction=Sort.ASC, limit=500, nested=True)
            with self._errors("list orders for fills"):
                batch = self._client.get_orders(req)
            new_here = 0
            for top in batch:
                if str(top.id) in read:
                    continue
                read.add(str(top.id))
                new_here += 1
                submitted = _utc(top.submitted_at)
                newest = max(newest, submitted)
                tree = [top, *(top.legs or [])]
                if any(o.status.value not in _TERMINAL for o in tree):
                    oldest_open = submitted if oldest_open is None else min(oldest_open, submitted)
                fills.extend(f for o in tree if (f := self._fill_delta(o, seen)) is not None)
            if len(batch) < 500:
                break
            if new_here == 0:    # a whole page inside one millisecond: Alpaca's paging cannot step past it
                raise BrokerError(f"list orders for fills: more than 500 orders submitted at {after + _MS}; "
                                  "cannot page past them")
            after = _utc(batch[-1].submitted_at) - _MS
        else:
            log.warning("poll_fills: more than %d orders since %s; the rest are read next cycle",
                        _FILL_POLL_PAGES * 500, self._fills_after.isoformat())
        self._filled_seen.update(seen)
        self._fills_after = oldest_open - _MS if oldest_open else max(self._fills_after, newest - _MS)
        return sorted(fills, key=lambda f: f.ts)

    def _fill_delta(self, o: Any, seen: dict[str, tuple[Decimal, Decimal]]) -> Fill | None:
        oid, total = str(o.id), _dec(o.filled_qty) or Decimal(0)
        before, prev_avg = seen.get(oid) or self._filled_seen.get(oid, (Decimal(0), Decimal(0)))
        if total <= before or o.filled_avg_price is None:
            return None
        avg = Decimal(o.filled_avg_price)
        price = avg if before == 0 else ((avg * total - prev_avg * before) / (total - before)).quantize(
            Decimal("0.000001"))                                         # this slice's own average price
        seen[oid] = (total, avg)
        return Fill(client_order_id=o.client_order_id, symbol=normalise_symbol(o.symbol, getattr(o.asset_class, "value", None)),
                    side=Side(o.side.value),
                    qty=total - before, price=price, fee_usd=Decimal(0),
                    ts=_utc(o.filled_at or o.updated_at), fill_id=f"{oid}:{total}", venue="alpaca")

    # ------------------------------------------------------------------ kill switch
    def flatten_all(self, close_id: Callable[[str], str] | None = None,
                    on_submit: Callable[[Order], None] | None = None) -> FlattenReport:
        """Cancel every order and close every position. Alpaca answers both with HTTP 207 and one
        status per order/symbol; failures land in the report instead of aborting the rest.

        With ``close_id`` (symbol -> client order id) the positions are closed by HYDRA's own market
        orders carrying those ids, not by Alpaca's close-all (whose orders get the venue's ids, which no
        HYDRA book can tell from a stranger's): the kill's fills are then booked as the kill's exits.
        Outside market hours an equity close is queued for the open. ``on_submit`` is called with each
        order before it is sent (the write-ahead record)."""
        report = FlattenReport()
        try:
            with self._errors("cancel all orders"):
                for r in self._client.cancel_orders():
                    if r.status is not None and r.status >= 300:
                        report.cancel_failures[str(r.id)] = self._redact(f"HTTP {r.status}: {r.body}")
                    else:
                        report.canceled_order_ids.append(str(r.id))
        except BrokerError as exc:
            report.cancel_failures["*"] = exc.describe()
            if close_id is not None:
                # a broker that refused the whole cancel (keys refused, unreachable after the retries)
                # refuses the closes too; the orders still working would hold the shares anyway
                report.failures["*"] = f"{type(exc).__name__}: close all positions: not attempted ({exc})"
        if close_id is not None:
            if "*" not in report.failures:
                self._close_with_own_orders(report, close_id, on_submit)
        else:
            self._close_all_at_venue(report)
        log.warning("flatten_all: canceled %d orders, closing %s (queued for the open: %s), cancel failures %s, "
                    "close failures %s", len(report.canceled_order_ids), sorted(report.closing_orders),
                    report.queued, report.cancel_failures, report.failures)
        return report

    def _close_with_own_orders(self, report: FlattenReport, close_id: Callable[[str], str],
                               on_submit: Callable[[Order], None] | None) -> None:
        try:
            held = self.positions()
        except BrokerError as exc:
            report.failures["*"] = f"{type(exc).__name__}: close all positions: {exc}"
            return
        now = self._now()
        try:   # issue #16: an engine that read the kill first may have sent its own exit since the cancel
            closing = {o.symbol: o for o in self.open_orders() if o.order_type is OrderType.MARKET
                       and is_hydra_order_id(o.client_order_id) and not is_kill_order_id(o.client_order_id)}
        except BrokerError:
            closing = {}
        for symbol, pos in sorted(held.items()):
            o = closing.get(symbol)
            try:
                if o is not None and o.side is (Side.SELL if pos.qty > 0 else Side.BUY) \
                        and o.qty + self.asset(symbol).min_order_size >= abs(pos.qty):   # all of it, up to dust
                    report.already_closing[symbol] = o.client_order_id
                    continue
                crypto = self.asset(symbol).asset_class is AssetClass.CRYPTO
                order = Order(close_id(symbol), symbol, Side.SELL if pos.qty > 0 else Side.BUY, abs(pos.qty),
                              OrderType.MARKET, TimeInForce.GTC if crypto else TimeInForce.DAY, now, "kill",
                              purpose="kill")
                closed = not crypto and not self.is_market_open(symbol, now)
                if on_submit is not None:
                    on_submit(order)
                sent = self.submit(order, queue_if_closed=True)
            except BrokerError as exc:
                report.failures[symbol] = exc.describe()
                continue
            if sent.status is OrderStatus.CANCELED:      # a stop filled while its cancel was confirmed
                report.failures[symbol] = sent.reject_reason or "closed meanwhile"
                continue
            report.closing_orders[symbol] = sent.client_order_id
            report.sent[symbol] = sent
            if closed:
                report.queued.append(symbol)

    def _close_all_at_venue(self, report: FlattenReport) -> None:
        try:
            with self._errors("close all positions"):
                answers = self._client.close_all_positions(cancel_orders=True)
            for r in answers:
                symbol = normalise_symbol(r.symbol or getattr(r.body, "symbol", None) or "?", None, self._symbols)
                if r.status is not None and r.status >= 300 or not hasattr(r.body, "client_order_id"):
                    reason = getattr(r.body, "message", None) or str(r.body)
                    report.failures[symbol] = self._redact(f"HTTP {r.status}: {reason}")
                else:
                    report.closing_orders[symbol] = str(r.body.id)
        except BrokerError as exc:
            report.failures["*"] = exc.describe()


# --------------------------------------------------------------------------- factory
def build_alpaca(settings: Any, keys: AlpacaKeys, session_id: str, clock: Any, *, live: bool = False,
                 capability_cache: Path | None = None, regime_history_days: dict[str, int] | None = None):
    """``(AlpacaBroker, AlpacaMarketData)`` from ``Settings`` (broker.paper/trading_url/data_url/data_feed,
    universe.symbols, data.*_stale_after_s, engine.history_bars). ``regime_history_days``: how many days
    of intraday history the regime detector reads per symbol (the composition root asks the regime layer)."""
    from ..data.alpaca_data import AlpacaMarketData

    b = settings.broker
    trading_url, data_url = resolve_urls(b.trading_url, b.data_url)
    symbols = list(settings.universe.symbols)
    broker = AlpacaBroker(keys, paper=b.paper, live=live, url_override=trading_url, session_id=session_id,
                          clock=clock, symbols=symbols, capability_cache=capability_cache)
    data = AlpacaMarketData(keys, symbols=symbols, feed=b.data_feed, url_override=data_url,
                            history_bars=settings.engine.history_bars,
                            crypto_stale_after_s=settings.data.crypto_stale_after_s,
                            equity_stale_after_s=settings.data.equity_stale_after_s,
                            data_only=list(settings.universe.data_only),
                            regime_history_days=regime_history_days)
    return broker, data
