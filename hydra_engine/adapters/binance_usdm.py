"""Binance USD-M futures (the demo account, and with a three-part opt-in the live exchange) behind
HYDRA's ``Broker`` protocol, on plain ``requests`` (contracts: ``shared/contracts/NOTES-2.md`` §4).

Why not ccxt or a connector: ccxt is a 4 MB dependency whose unified methods load markets first and whose
sandbox mode is a dead end for futures; ``binance-futures-connector`` is deprecated and has no algo-order
methods; ``python-binance`` reroutes conditional orders silently and collides with the connector's
package. What HYDRA needs is twelve endpoints, one HMAC signature and the error rules below, all testable
at the HTTP boundary with ``responses``.

What the adapter guarantees:
  * **ids** — Binance takes ``^[.A-Z:/a-z0-9_-]{1,36}$``; HYDRA's ids are longer, so each is sent as
    ``hy-`` + 33 hex digits of its SHA-256 (:func:`binance_client_id`): the same HYDRA id always gives the
    same Binance id, across restarts. Every id is written to the state file (``state_path``) *before* it
    is sent; an id found there is looked up at Binance before any send, so a retry or a restarted process
    never places a second order (Binance only refuses a duplicate id among *open* orders);
  * **start** — one-way position mode required (hedge mode is refused), margin type ISOLATED set per
    symbol (-4046 "No need to change" is success), leverage set per symbol, clock offset from
    ``/fapi/v1/time``, then a reconciliation (:meth:`reconcile`);
  * **exits** are reduce-only (``reduceOnly=true``); **conditional orders** (stop, stop-limit, trailing
    stop) go to the algo-order endpoints (``/fapi/v1/algoOrder``; ``/fapi/v1/order`` refuses them, -4120);
  * **unknown outcomes** — a 503, a 5xx, a timeout or a dropped connection on a submit is *unknown*: the
    order is queried by its id, never re-sent; still unknown → :class:`UnknownOrderOutcome` (the book keeps
    it and resolves it later by id);
  * **-1021** (clock skew): the offset is re-read from ``/fapi/v1/time`` and the request sent once more
    (Binance rejected it unprocessed); **429/418**: every call is refused locally until the
    ``Retry-After`` / "banned until" time has passed (``RateLimited``);
  * **every cycle** (:meth:`poll_fills`) open orders and positions are read back (:meth:`reconcile`), the
    orders HYDRA waits on are resolved, and fills come from ``/fapi/v1/userTrades`` with their commission;
    funding from ``/fapi/v1/income`` (FUNDING_FEE, deduplicated on ``tranId``);
  * keys only from ``BINANCE_API_KEY`` / ``BINANCE_API_SECRET`` (environment or ``.env``), never logged.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterable, Mapping

import requests

from ..config import ConfigError, live_trading_opt_in
from ..domain import UTC, Fill, FundingPayment, Order, OrderStatus, OrderType, Side, TimeInForce, require_utc
from ..orderids import _HYDRA_ID
from ..ports import (Account, AssetSpec, BrokerError, BrokerPosition, InvalidOrder, OrderNotFound,
                     UnknownOrderOutcome, VenueCapabilities)
from ..perp.records import DEFAULT_PERP_SPECS, LeverageNotAllowed
from .binance_usdm_http import (CLIENT_ID, CONDITIONAL, DEMO_URL, LIQUIDATION_PREFIXES, LIVE_URL,  # noqa: F401
                                ORDER_TYPES, _STATUS, BinanceKeys, BrokerUnavailable, UsdmReconciliation,
                                UsdmTransport, _Unknown, _dec, _from_ms, _ms, _plain, binance_client_id, sign)

log = logging.getLogger(__name__)


class BinanceUsdmBroker(UsdmTransport):
    """HYDRA ``Broker`` on a Binance USD-M account (one-way mode, isolated margin)."""

    def __init__(self, keys: BinanceKeys, symbols: Iterable[str], *, live: bool = False, base_url: str | None = None,
                 state_path: Path | None = None, session: requests.Session | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC), sleep: Callable[[float], None] = time.sleep,
                 timeout_s: float = 10.0, max_leverage: int = 20, assets: Mapping[str, AssetSpec] | None = None):
        missing = keys.missing()
        if missing:
            raise ConfigError(f"Binance keys missing: {', '.join(missing)} (set them in the environment or .env)")
        url = (base_url or os.environ.get("HYDRA_BINANCE_TRADE_URL", "") or (LIVE_URL if live else DEMO_URL)).rstrip("/")
        if live and not live_trading_opt_in():
            raise ConfigError("live Binance trading refused: it needs perps.execution = \"binance_live\", the --live "
                              "flag AND HYDRA_ENABLE_LIVE_TRADING=I_UNDERSTAND_REAL_MONEY")
        if not live and "fapi.binance.com" in url and "demo" not in url:
            raise ConfigError(f"demo trading configured but {url} is Binance's live endpoint")
        self.live, self.base_url = live, url
        self._key = keys.api_key.get_secret_value()
        self._secret = keys.api_secret.get_secret_value()
        self.symbols = list(symbols)
        self._session = session or requests.Session()
        self._clock, self._sleep, self.timeout_s = clock, sleep, timeout_s
        self._offset_ms = 0
        self._blocked_until: datetime | None = None      # 429 back-off or 418 ban
        self.rate_limited = 0
        self._leverage: dict[str, int] = {}
        specs = assets or DEFAULT_PERP_SPECS
        self._assets = {s: replace(specs[s], order_types=ORDER_TYPES) for s in self.symbols}
        self.capabilities = VenueCapabilities(
            name="binance-usdm" if live else "binance-usdm-demo", short_crypto=True, reduce_only=True,
            max_leverage=float(max_leverage), fee_currency="USDT", settles_funding=True)
        self.state_path = state_path
        self._ids: dict[str, dict] = {}        # binance id -> {coid, symbol, kind (order|algo), status}
        self._trade_cursor: dict[str, int] = {}       # symbol -> last userTrades id handed out
        self._pending_cursor: dict[str, int] = {}     # ... handed out by the last poll (persisted at the next)
        self._income_from: int | None = None
        self._income_seen: set[str] = set()
        self._positions_seen: dict[str, Decimal] = {}
        self.last_reconciliation: UsdmReconciliation | None = None
        # the venue's specs, read at start (binance_usdm_specs): refused symbols, brackets, minimum notionals
        self.refused, self.brackets, self.min_notional_usdt, self.spec_notes = {}, {}, {}, []
        self._load_state()

    def __repr__(self) -> str:
        return f"BinanceUsdmBroker(live={self.live}, base_url={self.base_url!r})"

    # ------------------------------------------------------------------ state file
    def _load_state(self) -> None:
        if self.state_path is None or not self.state_path.is_file():
            return
        try:
            data = json.loads(self.state_path.read_text())
            self._ids = dict(data.get("ids", {}))
            self._trade_cursor = {s: int(v) for s, v in data.get("trade_cursor", {}).items()}
            self._income_from = data.get("income_from")
            self._income_seen = set(data.get("income_seen", []))
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{self.state_path}: the Binance order-id state is unreadable ({exc}); without it "
                              "HYDRA cannot tell its own orders from others. Fix or remove it and restart "
                              "with --adopt.") from exc

    def _save_state(self) -> None:
        if self.state_path is None:
            return
        data = {"ids": self._ids, "trade_cursor": self._trade_cursor, "income_from": self._income_from,
                "income_seen": sorted(self._income_seen)[-2000:]}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, self.state_path)

    # ------------------------------------------------------------------ start-up
    def start(self, leverage: Mapping[str, int] | None = None) -> UsdmReconciliation:
        """Clock offset, one-way mode check, ISOLATED margin and the leverage per symbol, then a
        reconciliation of positions and orders (what the account holds now)."""
        self.sync_time()
        from .binance_usdm_specs import read_venue_specs
        self.spec_notes = read_venue_specs(self)        # the venue's tick/step/brackets; untradable refused
        mode = self._get("/fapi/v1/positionSide/dual", {})
        if str(mode.get("dualSidePosition")).lower() == "true":
            raise ConfigError("the Binance account is in hedge mode; HYDRA trades one-way mode only "
                              "(POST /fapi/v1/positionSide/dual dualSidePosition=false, with no open position)")
        for s in [s for s in self.symbols if s not in self.refused]:
            self.set_margin_type(s, "ISOLATED")
            cap = self.brackets[s].max_leverage if s in self.brackets else 125
            self.set_leverage(s, min(int((leverage or {}).get(s, 1)), cap))
        return self.reconcile()

    def set_margin_type(self, symbol: str, margin_type: str = "ISOLATED") -> None:
        try:
            self._post("/fapi/v1/marginType", {"symbol": symbol, "marginType": margin_type}, symbol=symbol)
        except BrokerError as exc:
            if "code -4046" not in str(exc):        # "No need to change margin type.": already set
                raise

    def set_leverage(self, symbol: str, leverage: int) -> int:
        if isinstance(leverage, bool) or not isinstance(leverage, int) or not 1 <= leverage <= 125:
            raise LeverageNotAllowed(f"{symbol}: leverage must be an int 1..125, got {leverage!r}", symbol=symbol)
        if self._leverage.get(symbol) == leverage:
            return leverage
        body = self._post("/fapi/v1/leverage", {"symbol": symbol, "leverage": leverage}, symbol=symbol)
        self._leverage[symbol] = int(body.get("leverage", leverage))
        return self._leverage[symbol]

    # ------------------------------------------------------------------ account
    def capabilities_for(self, symbol: str) -> VenueCapabilities:
        return self.capabilities

    def account(self) -> Account:
        a = self._get("/fapi/v2/account", {})
        return Account(cash_usd=_dec(a.get("totalWalletBalance")), equity_usd=_dec(a.get("totalMarginBalance")),
                       buying_power_usd=_dec(a.get("availableBalance")))

    def positions(self) -> dict[str, BrokerPosition]:
        """Non-zero one-way positions (``positionRisk`` v2; v3 rows parse the same)."""
        rows = self._get("/fapi/v2/positionRisk", {})
        out = {}
        for r in rows:
            if r.get("positionSide", "BOTH") != "BOTH":
                raise ConfigError(f"{r.get('symbol')}: a {r.get('positionSide')} position means hedge mode; "
                                  "HYDRA trades one-way mode only")
            qty = _dec(r.get("positionAmt"))
            if qty != 0:
                out[r["symbol"]] = BrokerPosition(r["symbol"], qty, _dec(r.get("entryPrice")))
        self._positions_seen = {s: p.qty for s, p in out.items()}
        return out

    def asset(self, symbol: str) -> AssetSpec:
        if symbol in self.refused:
            raise InvalidOrder(self.refused[symbol], symbol=symbol)
        try:
            return self._assets[symbol]
        except KeyError:
            raise InvalidOrder(f"{symbol!r} is not one of this venue's perpetuals {self.symbols}", symbol=symbol) from None

    def is_market_open(self, symbol: str, now: datetime) -> bool:
        return True

    # ------------------------------------------------------------------ ids
    def _hydra_id(self, bid: str) -> str:
        rec = self._ids.get(bid)
        return rec["coid"] if rec else bid

    def _symbol_of(self, coid: str) -> str | None:
        rec = self._ids.get(binance_client_id(coid))
        if rec:
            return rec["symbol"]
        m = _HYDRA_ID.match(coid or "")
        return m.group("symbol") if m and m.group("symbol") in self.symbols else None

    def adopt_orders(self, client_order_ids: Iterable[str]) -> None:
        """Orders another HYDRA process sent on this account under HYDRA ids (a `kill`'s closes, issue #20):
        known from now on (their fills carry the HYDRA id; reconciliation looks them up by id)."""
        new = {binance_client_id(c): c for c in client_order_ids if self._symbol_of(c) in self.symbols}
        for bid, coid in new.items():
            self._ids.setdefault(bid, {"coid": coid, "symbol": self._symbol_of(coid), "kind": "order",
                                       "status": "submitting"})
        if new:
            self._save_state()

    # ------------------------------------------------------------------ orders
    def submit(self, order: Order) -> Order:
        spec = self.asset(order.symbol)
        coid, bid = order.client_order_id, binance_client_id(order.client_order_id)
        ctx = {"symbol": order.symbol, "coid": coid}
        if order.order_type not in ORDER_TYPES:
            raise InvalidOrder(f"{order.order_type.value} orders are not sent to Binance USD-M", symbol=order.symbol,
                               client_order_id=coid)
        if order.qty <= 0 or spec.round_qty(order.qty) != order.qty:
            raise InvalidOrder(f"qty {order.qty} is not a positive multiple of {spec.qty_increment}",
                               symbol=order.symbol, client_order_id=coid)
        kind = "algo" if order.order_type in CONDITIONAL else "order"
        if bid in self._ids:
            # written ahead by this process or an earlier one: it may be at Binance already -- never twice
            placed = self._lookup(coid)
            if placed is not None:
                log.info("%s: already at Binance as %s; not sent again", coid, bid)
                return self._merge(order, placed)
        self._ids[bid] = {"coid": coid, "symbol": order.symbol, "kind": kind, "status": "submitting"}
        self._save_state()
        if kind == "algo":
            path, params = "/fapi/v1/algoOrder", self._algo_params(order, bid)
        else:
            path, params = "/fapi/v1/order", self._order_params(order, bid)
        try:
            body = self._request("POST", path, params, what=f"submit {coid}", **ctx)
        except _Unknown as exc:
            log.warning("%s: outcome unknown (%s); querying it by id, never re-sending", coid, exc)
            try:
                placed = self._lookup(coid)
            except BrokerError as qexc:
                placed, why = None, f"the query failed too ({qexc})"
            else:
                why = "Binance does not show it (yet)"
            if placed is not None:
                return self._merge(order, placed)
            self._ids[bid]["status"] = "unknown"
            self._save_state()
            raise UnknownOrderOutcome(f"submit {coid}: {exc}; {why}: it is looked up again, not re-sent",
                                      symbol=order.symbol, client_order_id=coid) from None
        except BrokerError:
            self._ids[bid]["status"] = "rejected"
            self._save_state()
            raise
        return self._merge(order, body)

    def _order_params(self, order: Order, bid: str) -> dict:
        p = {"symbol": order.symbol, "side": order.side.value.upper(), "type": order.order_type.value.upper(),
             "quantity": _plain(order.qty), "newClientOrderId": bid, "newOrderRespType": "RESULT"}
        if order.order_type is OrderType.LIMIT:
            if order.limit_price is None:
                raise InvalidOrder("a limit order needs limit_price", symbol=order.symbol,
                                   client_order_id=order.client_order_id)
            p["price"] = _plain(order.limit_price)
            p["timeInForce"] = "GTC" if order.time_in_force is TimeInForce.GTC else "IOC"
        if order.reduce_only:
            p["reduceOnly"] = "true"
        return p

    def _algo_params(self, order: Order, bid: str) -> dict:
        p = {"algoType": "CONDITIONAL", "symbol": order.symbol, "side": order.side.value.upper(),
             "type": CONDITIONAL[order.order_type], "quantity": _plain(order.qty), "clientAlgoId": bid,
             "workingType": "MARK_PRICE", "reduceOnly": "true" if order.reduce_only or order.purpose in ("stop", "exit")
             else "false"}
        if order.order_type is OrderType.TRAILING_STOP:
            if order.trail_percent is None or not Decimal("0.1") <= order.trail_percent <= 10:
                raise InvalidOrder(f"a trailing stop needs trail_percent in 0.1..10, got {order.trail_percent}",
                                   symbol=order.symbol, client_order_id=order.client_order_id)
            p["callbackRate"] = _plain(order.trail_percent)
        else:
            if order.stop_price is None:
                raise InvalidOrder("a stop order needs stop_price", symbol=order.symbol,
                                   client_order_id=order.client_order_id)
            p["triggerPrice"] = _plain(order.stop_price)
            if order.order_type is OrderType.STOP_LIMIT:
                p["price"] = _plain(order.limit_price or order.stop_price)
                p["timeInForce"] = "GTC"
        return p

    def _merge(self, order: Order, body: Mapping) -> Order:
        """``order`` with what Binance says about it (status, its order id, filled quantity and price)."""
        bid = body.get("clientOrderId") or body.get("clientAlgoId") or binance_client_id(order.client_order_id)
        raw = body.get("status") or body.get("algoStatus") or "NEW"
        status = _STATUS.get(raw, OrderStatus.ACCEPTED)
        if bid in self._ids:
            self._ids[bid]["status"] = raw.lower()
            if body.get("orderId") is not None:
                self._ids[bid]["order_id"] = int(body["orderId"])
            self._save_state()
        filled = _dec(body.get("executedQty"))
        avg = _dec(body.get("avgPrice")) or None
        return replace(order, status=status, broker_order_id=str(body.get("orderId") or body.get("algoId") or bid),
                       filled_qty=filled, filled_avg_price=avg if filled else None)

    def _lookup(self, coid: str) -> Mapping | None:
        """Binance's record of the order sent under ``coid`` (either endpoint), or None when it has none."""
        bid = binance_client_id(coid)
        symbol = self._symbol_of(coid)
        if symbol is None:
            return None
        kind = self._ids.get(bid, {}).get("kind")
        tries = [kind] if kind else ["order", "algo"]
        for k in tries:
            try:
                if k == "algo":
                    return self._get("/fapi/v1/algoOrder", {"clientAlgoId": bid}, symbol=symbol, coid=coid)
                return self._get("/fapi/v1/order", {"symbol": symbol, "origClientOrderId": bid}, symbol=symbol,
                                 coid=coid)
            except OrderNotFound:
                continue
        return None

    def get_order(self, client_order_id: str) -> Order | None:
        body = self._lookup(client_order_id)
        if body is None:
            return None
        return self._order_from(body)

    def _order_from(self, body: Mapping) -> Order:
        bid = body.get("clientOrderId") or body.get("clientAlgoId") or ""
        algo = "algoId" in body
        raw_type = body.get("orderType") if algo else body.get("type")
        otype = {"MARKET": OrderType.MARKET, "LIMIT": OrderType.LIMIT, "STOP_MARKET": OrderType.STOP,
                 "STOP": OrderType.STOP_LIMIT, "TRAILING_STOP_MARKET": OrderType.TRAILING_STOP}.get(raw_type,
                                                                                                   OrderType.MARKET)
        created = _from_ms(body.get("updateTime") or body.get("createTime") or body.get("time") or 0)
        coid = self._hydra_id(bid)
        m = _HYDRA_ID.match(coid)
        filled = _dec(body.get("executedQty"))
        stop = _dec(body.get("triggerPrice") or body.get("stopPrice")) or None
        return Order(coid, body["symbol"], Side(body["side"].lower()), _dec(body.get("origQty") or body.get("quantity")),
                     otype, TimeInForce.GTC, created, m.group("strategy") if m else "",
                     purpose="stop" if algo else "entry",
                     status=_STATUS.get(body.get("status") or body.get("algoStatus") or "NEW", OrderStatus.ACCEPTED),
                     broker_order_id=str(body.get("orderId") or body.get("algoId")), filled_qty=filled,
                     filled_avg_price=(_dec(body.get("avgPrice")) or None) if filled else None,
                     stop_price=stop, reduce_only=str(body.get("reduceOnly")).lower() == "true")

    def cancel(self, client_order_id: str) -> None:
        bid = binance_client_id(client_order_id)
        symbol = self._symbol_of(client_order_id)
        if symbol is None:
            raise OrderNotFound(f"{client_order_id}: not an order of this venue", client_order_id=client_order_id)
        if self._ids.get(bid, {}).get("kind") == "algo":
            self._delete("/fapi/v1/algoOrder", {"clientAlgoId": bid}, symbol=symbol, coid=client_order_id)
        else:
            self._delete("/fapi/v1/order", {"symbol": symbol, "origClientOrderId": bid}, symbol=symbol,
                         coid=client_order_id)
        if bid in self._ids:
            self._ids[bid]["status"] = "canceled"
            self._save_state()

    def open_orders(self) -> list[Order]:
        rows = []
        for s in self.symbols:
            rows += self._get("/fapi/v1/openOrders", {"symbol": s}, symbol=s)
        algo = self._get("/fapi/v1/openAlgoOrders", {})
        rows += algo if isinstance(algo, list) else algo.get("orders", [])
        return [self._order_from(r) for r in rows if r.get("symbol") in self.symbols]

    # ------------------------------------------------------------------ reconciliation
    def reconcile(self) -> UsdmReconciliation:
        """Read positions and working orders back; resolve every order HYDRA sent whose state it does not
        know (unknown, submitting) or that is no longer working, by querying it. Run at start-up and by
        every :meth:`poll_fills`."""
        rec = UsdmReconciliation(positions=self.positions(), open_orders=self.open_orders())
        working = {binance_client_id(o.client_order_id) for o in rec.open_orders}
        rec.foreign_orders = [o.client_order_id for o in rec.open_orders
                              if binance_client_id(o.client_order_id) not in self._ids]
        for bid, info in list(self._ids.items()):
            if info.get("status") in ("filled", "canceled", "expired", "rejected", "finished", "triggered"):
                continue
            if bid in working:
                continue
            try:
                body = self._lookup(info["coid"])
            except BrokerError as exc:
                rec.problems.append(f"{info['coid']}: {exc}")
                continue
            # no record at Binance: written ahead but never placed (or refused); nothing works under that id
            status = (body.get("status") or body.get("algoStatus") or "NEW").lower() if body else "rejected"
            info["status"] = status
            if body and body.get("orderId") is not None:
                info["order_id"] = int(body["orderId"])
            rec.resolved[info["coid"]] = status
        if rec.resolved:
            self._save_state()
        if rec.foreign_orders:
            rec.problems.append(f"working orders HYDRA did not send: {rec.foreign_orders}")
        self.last_reconciliation = rec
        return rec

    # ------------------------------------------------------------------ fills and funding
    def poll_fills(self, now: datetime) -> list[Fill]:
        """Reconcile, then the account's trades since the last call (``/fapi/v1/userTrades``), oldest first,
        each with its commission. The cursor handed out by the previous call is persisted now (that cycle
        has committed its fills), so a crash re-reports a cycle's fills instead of losing them."""
        require_utc(now, "now")
        if self._pending_cursor:
            self._trade_cursor.update(self._pending_cursor)
            self._pending_cursor = {}
            self._save_state()
        self.reconcile()
        fills: list[Fill] = []
        for s in self.symbols:
            last = self._trade_cursor.get(s)
            params = {"symbol": s, "limit": 1000}
            if last is not None:
                params["fromId"] = last + 1
            else:
                params["startTime"] = _ms(now - timedelta(days=1))
            rows = self._get("/fapi/v1/userTrades", params, symbol=s)
            for t in sorted(rows, key=lambda r: int(r["id"])):
                if last is not None and int(t["id"]) <= last:
                    continue
                fills.append(self._fill_from(t))
                self._pending_cursor[s] = max(self._pending_cursor.get(s, -1), int(t["id"]))
        return sorted(fills, key=lambda f: f.ts)

    def _fill_from(self, t: Mapping) -> Fill:
        symbol, oid = t["symbol"], int(t["orderId"])
        bid = next((b for b, i in self._ids.items() if i.get("order_id") == oid), None)
        if bid is None:
            body = self._get("/fapi/v1/order", {"symbol": symbol, "orderId": oid}, symbol=symbol)
            bid = body.get("clientOrderId") or f"binance-{oid}"
        fee = _dec(t.get("commission"))
        if t.get("commissionAsset", "USDT") != "USDT":
            log.warning("%s trade %s: commission %s %s is not in USDT; booked as 0 USDT (not converted)",
                        symbol, t["id"], fee, t.get("commissionAsset"))
            fee = Decimal(0)
        return Fill(self._hydra_id(bid), symbol, Side(t["side"].lower()), _dec(t["qty"]), _dec(t["price"]), abs(fee),
                    _from_ms(t["time"]), f"binance-{symbol}-{t['id']}", venue="perp")

    def venue_exit_reason(self, client_order_id: str) -> str | None:
        """``liquidation`` for a close Binance made itself (its ``autoclose-`` / ``adl_autoclose`` ids)."""
        return "liquidation" if client_order_id.startswith(LIQUIDATION_PREFIXES) else None

    def settle_funding(self, now: datetime) -> list[FundingPayment]:
        """FUNDING_FEE income since the last call, each ``tranId`` once. The rate and mark are not in the
        income row: the mark is the row's amount over (−qty × rate) with the rate from the public
        ``fundingRate`` history when it has that settlement; without it rate and mark are recorded as 0
        (the amount, which is what is booked, is Binance's own)."""
        start = self._income_from or _ms(now - timedelta(days=1))
        rows = self._get("/fapi/v1/income", {"incomeType": "FUNDING_FEE", "startTime": start, "limit": 1000})
        out = []
        for r in sorted(rows, key=lambda r: int(r["time"])):
            key = f"FUNDING_FEE:{r['tranId']}"
            if key in self._income_seen or r.get("symbol") not in self.symbols:
                continue
            self._income_seen.add(key)
            amount, ts = _dec(r["income"]), _from_ms(r["time"])
            qty = self._positions_seen.get(r["symbol"], Decimal(0))
            rate = mark = Decimal(0)
            try:
                hist = self._get("/fapi/v1/fundingRate", {"symbol": r["symbol"], "startTime": int(r["time"]) - 60_000,
                                                          "endTime": int(r["time"]) + 60_000, "limit": 1}, signed=False)
                if hist:
                    rate = _dec(hist[0].get("fundingRate"))
                    mark = _dec(hist[0].get("markPrice"))
            except BrokerError as exc:
                log.warning("%s funding at %s: rate not read (%s); amount booked as Binance paid it", r["symbol"], ts, exc)
            out.append(FundingPayment(r["symbol"], ts.replace(microsecond=0), rate, mark, qty, amount))
            self._income_from = max(self._income_from or 0, int(r["time"]))
        if out:
            self._save_state()
        return out

    fees_paid = property(lambda self: Decimal(0))   # fees are on the fills (``fee_usd``); the engine sums them


def build_binance_usdm(settings, *, live: bool = False, state_path: Path | None = None,
                       keys: BinanceKeys | None = None, **kw) -> BinanceUsdmBroker:
    """The adapter from ``Settings`` (``perps.symbols``, ``perps.max_leverage``)."""
    p = settings.perps
    return BinanceUsdmBroker(keys or BinanceKeys(), p.symbols, live=live, state_path=state_path,
                             max_leverage=p.max_leverage, **kw)


__all__ = ["BinanceKeys", "BinanceUsdmBroker", "BrokerUnavailable", "UsdmReconciliation", "binance_client_id",
           "build_binance_usdm", "sign", "DEMO_URL", "LIVE_URL", "CLIENT_ID"]
