"""An HTTP-level Alpaca double on ``responses``: real alpaca-py code runs, only the wire is faked.

Bodies are shaped like /work/shared/contracts/alpaca/examples (the order template is the spec's
``EquityOrderResponse`` example, assets are ``asset.AAPL`` / ``asset.BTCUSD``, and so on). The double
keeps state: submitted orders show up in GET (by id, by client_order_id, in lists with status/after/
direction/nested filters), can be filled (partly) on command, bracket legs go held -> new -> OCO,
positions follow fills (crypto positions keyed ``BTCUSD`` as Alpaca does), shares held by open sell
orders give the 403 ``insufficient qty`` answer. Faults can be scripted per route: status + body
(429 storms, 5xx, 403/422), non-JSON bodies, timeouts before or *after* the request was processed.

Every ``POST /v2/orders`` body is validated against the request schema of ``trading-api.json``.
alpaca-py sends qty/notional/prices as JSON numbers where the spec says strings (NOTES §1.2); the
validator converts exactly those fields (number -> its shortest decimal string) before validating,
records the raw and converted bodies, and also refuses keys the schema does not define.
"""
from __future__ import annotations

import copy
import itertools
import json
import os
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import responses
from openapi_schema_validator import OAS30Validator

CONTRACTS = Path(os.environ.get("HYDRA_CONTRACTS", Path(__file__).resolve().parents[2] / "shared" / "contracts")) / "alpaca"
EXAMPLES = CONTRACTS / "examples"
TRADING = "https://paper-api.alpaca.markets"
DATA = "https://data.alpaca.markets"
UTC = timezone.utc
NUMERIC_FIELDS = ("qty", "notional", "limit_price", "stop_price", "trail_price", "trail_percent")
OPEN = {"new", "accepted", "pending_new", "partially_filled", "held", "pending_cancel", "accepted_for_bidding"}


def example(name: str):
    return json.loads((EXAMPLES / name).read_text())


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _num_str(v) -> str:
    return str(Decimal(repr(v))) if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------- request-body validation
class OrderBodyValidator:
    """POST /v2/orders requestBody schema from the published spec, $refs resolved against the spec."""

    def __init__(self, spec_path: Path = CONTRACTS / "openapi" / "trading-api.json"):
        spec = json.loads(spec_path.read_text())
        schema = spec["paths"]["/v2/orders"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        self.properties = set(schema["properties"])
        self.validator = OAS30Validator({**schema, "components": spec["components"]})

    @staticmethod
    def coerce(body: dict) -> dict:
        """The documented alpaca-py/spec mismatch: numbers where the spec says decimal strings."""
        out = copy.deepcopy(body)
        for k in NUMERIC_FIELDS:
            if isinstance(out.get(k), (int, float)):
                out[k] = _num_str(out[k])
        for leg in ("take_profit", "stop_loss"):
            for k, v in (out.get(leg) or {}).items():
                if isinstance(v, (int, float)):
                    out[leg][k] = _num_str(v)
        return out

    def errors(self, body: dict) -> list[str]:
        errs = [f"{'/'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in self.validator.iter_errors(body)]
        errs += [f"{k}: not in the spec's request schema" for k in body if k not in self.properties]
        return errs


@dataclass
class Fault:
    method: str
    path: re.Pattern
    times: int
    status: int = 500
    body: str | None = None
    headers: dict | None = None
    exception: type[Exception] | None = None   # raised instead of answering
    after_processing: bool = False             # process the request first (accepted), then fail


class AlpacaDouble:
    """Use as a context manager; inspect ``calls``, ``order_bodies``; steer with ``fill``, ``fail``..."""

    def __init__(self, *, trading_url: str = TRADING, data_url: str = DATA, market_open: bool = True,
                 now: datetime = datetime(2025, 6, 24, 18, 15, tzinfo=UTC), cancel_delay_polls: int = 0,
                 crypto_fee_bps: str = "25"):
        self.trading_url, self.data_url = trading_url.rstrip("/"), data_url.rstrip("/")
        self.market_open, self.now = market_open, now
        self.cancel_delay_polls = cancel_delay_polls          # GETs an order stays pending_cancel
        self.never_cancel: set[str] = set()                   # client_order_ids whose cancel never completes
        # Alpaca charges crypto fees in the asset received (NOTES §1.6): a buy of q coins leaves
        # q × (1 - fee) in the position. 25 bps is the first tier's taker rate (market orders).
        self.crypto_fee = Decimal(crypto_fee_bps) / Decimal(10000)
        self.crypto_fees_taken: dict[str, Decimal] = {}       # order id -> coins kept as fee
        self.orders: dict[str, dict] = {}                     # id -> order body (legs by reference)
        self.positions: dict[str, dict] = {}                  # Alpaca position symbol -> body
        self.assets: dict[str, dict] = {}
        self.close_failures: dict[str, dict] = {}             # position symbol -> failure body for DELETE /v2/positions
        self.bars: dict[str, list[dict]] = {}                 # symbol -> bar bodies (t,o,h,l,c,v,...)
        self.quotes: dict[str, dict] = {}
        self.faults: list[Fault] = []
        self.calls: list[tuple[str, str]] = []
        self.order_bodies: list[dict] = []                    # coerced, validated request bodies
        self.raw_order_bodies: list[dict] = []
        self.body_errors: list[list[str]] = []
        self.validator = OrderBodyValidator()
        self.ratelimit_remaining = 199
        self._ids = itertools.count(1)
        self._pending_cancel_polls: dict[str, int] = {}
        self.mock = responses.RequestsMock(assert_all_requests_are_fired=False)
        self._routes()

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "AlpacaDouble":
        self.mock.start()
        return self

    def __exit__(self, *exc) -> None:
        self.mock.stop()
        self.mock.reset()

    def count(self, method: str, path_regex: str) -> int:
        return sum(1 for m, u in self.calls if m == method and re.search(path_regex, urlparse(u).path))

    # ------------------------------------------------------------------ steering
    def fail(self, method: str, path_regex: str, *, times: int = 1, status: int = 500, body=None,
             headers: dict | None = None, exception: type[Exception] | None = None,
             after_processing: bool = False) -> None:
        text = body if isinstance(body, str) or body is None else json.dumps(body)
        self.faults.append(Fault(method, re.compile(path_regex), times, status, text, headers, exception,
                                 after_processing))

    def set_new_york_time(self, hour: int, minute: int) -> datetime:
        """Market hours (issue #16): the double's clock at ``hour:minute`` New York time today, open only
        inside the regular session (09:30-16:00, Monday to Friday). Equity orders sent while closed are
        accepted and wait (Alpaca queues a DAY market order for the open); nothing fills them until open."""
        from zoneinfo import ZoneInfo
        ny = datetime.now(UTC).astimezone(ZoneInfo("America/New_York"))
        ny = ny.replace(hour=hour, minute=minute, second=0, microsecond=0)
        self.now = ny.astimezone(UTC)
        self.market_open = ny.weekday() < 5 and (9, 30) <= (hour, minute) < (16, 0)
        return self.now

    def add_foreign_order(self, symbol: str, side: str, qty: str, *, type: str = "stop", coid: str | None = None,
                          **prices: str) -> dict:
        """A working order placed outside HYDRA (by hand, another tool): its id is Alpaca's."""
        body = {"symbol": symbol, "side": side, "qty": qty, "type": type, "time_in_force": "gtc", **prices}
        order = self._new_order(body, coid or str(uuid.uuid4()), "/" in symbol)
        order["status"] = "new"
        self.orders[order["id"]] = order
        return order

    def add_position(self, symbol: str, qty: str, avg_entry_price: str, *, asset_class: str | None = None) -> None:
        crypto = (asset_class or ("crypto" if "/" in symbol else "us_equity")) == "crypto"
        body = copy.deepcopy(example("positions.get.json")[1 if crypto else 0])
        key = symbol.replace("/", "")
        body.update(symbol=key, qty=qty, qty_available=qty, avg_entry_price=avg_entry_price,
                    side="long" if Decimal(qty) > 0 else "short", exchange="CRYPTO" if crypto else body["exchange"])
        self.positions[key] = body

    def order(self, client_order_id: str) -> dict:
        return next(o for o in self._all_orders() if o["client_order_id"] == client_order_id)

    def fill(self, client_order_id: str, price: str, qty: str | None = None) -> dict:
        o = self.order(client_order_id)
        total = Decimal(o["qty"])
        done = Decimal(o["filled_qty"])
        q = Decimal(qty) if qty is not None else total - done
        avg_old = Decimal(o["filled_avg_price"] or 0)
        new_done = done + q
        o["filled_avg_price"] = str((avg_old * done + Decimal(price) * q) / new_done)
        o["filled_qty"] = str(new_done)
        o["status"] = "filled" if new_done >= total else "partially_filled"
        o["filled_at"] = o["updated_at"] = _iso(self.now)
        self._apply_to_position(o, q, Decimal(price))
        if o["status"] == "filled":
            for leg in o.get("legs") or []:
                leg["status"] = "new"
            parent = self._parent_of(o)
            if parent is not None:                             # OCO: the sibling leg is canceled
                for leg in parent["legs"]:
                    if leg is not o and leg["status"] in OPEN:
                        leg["status"], leg["canceled_at"] = "canceled", _iso(self.now)
        return o

    # ------------------------------------------------------------------ internals
    def _all_orders(self):
        for o in self.orders.values():
            yield o
            yield from o.get("legs") or []

    def _parent_of(self, leg: dict) -> dict | None:
        return next((o for o in self.orders.values() if any(l is leg for l in o.get("legs") or [])), None)

    def _apply_to_position(self, o: dict, q: Decimal, price: Decimal) -> None:
        key = o["symbol"].replace("/", "")
        sign = 1 if o["side"] == "buy" else -1
        if o["asset_class"] == "crypto" and sign > 0 and self.crypto_fee:
            fee = (q * self.crypto_fee).quantize(Decimal("1e-9"))   # positions carry up to 9 decimals
            self.crypto_fees_taken[o["id"]] = self.crypto_fees_taken.get(o["id"], Decimal(0)) + fee
            q -= fee
        pos = self.positions.get(key)
        old = Decimal(pos["qty"]) if pos else Decimal(0)
        new = old + sign * q
        if new == 0:
            self.positions.pop(key, None)
            return
        avg = price if old == 0 or (old > 0) != (new > 0) else (
            (Decimal(pos["avg_entry_price"]) * abs(old) + price * q) / abs(new) if abs(new) > abs(old)
            else Decimal(pos["avg_entry_price"]))
        self.add_position(o["symbol"], str(new), str(avg), asset_class=o["asset_class"])

    def _held_for_orders(self, symbol: str, side: str) -> Decimal:
        return sum((Decimal(o["qty"]) - Decimal(o["filled_qty"]) for o in self._all_orders()
                    if o["symbol"] == symbol and o["side"] == side and o["status"] in OPEN - {"held"}
                    and o["qty"] is not None), Decimal(0))

    def _asset(self, symbol: str) -> dict:
        if symbol in self.assets:
            return self.assets[symbol]
        if "/" in symbol:
            body = example("asset.BTCUSD.get.json")
            body.update(symbol=symbol, name=f"{symbol} pair", id=str(uuid.uuid5(uuid.NAMESPACE_URL, symbol)))
            if symbol == "ETH/USD":
                body.update(min_order_size="0.001", min_trade_increment="0.001", price_increment="0.1")
        else:
            body = example("asset.AAPL.get.json")
            body.update(symbol=symbol, name=symbol, id=str(uuid.uuid5(uuid.NAMESPACE_URL, symbol)),
                        shortable=symbol != "LZ", easy_to_borrow=symbol != "LZ")
        return body

    def _headers(self) -> dict:
        reset = int((self.now + timedelta(seconds=60)).timestamp())
        return {"X-RateLimit-Limit": "200", "X-RateLimit-Remaining": str(self.ratelimit_remaining),
                "X-RateLimit-Reset": str(reset), "Content-Type": "application/json"}

    def _reply(self, status: int, body) -> tuple:
        return status, self._headers(), "" if body is None else json.dumps(body)

    def _error(self, status: int, name_or_body) -> tuple:
        body = example(name_or_body) if isinstance(name_or_body, str) else name_or_body
        return self._reply(status, body)

    def _dispatch(self, handler):
        def callback(request):
            self.calls.append((request.method, request.url))
            path = urlparse(request.url).path
            for f in self.faults:
                if f.times > 0 and f.method == request.method and f.path.search(path):
                    f.times -= 1
                    if f.after_processing:
                        handler(request)
                    if f.exception is not None:
                        raise f.exception(f"simulated {f.exception.__name__} on {request.method} {path}")
                    headers = {**self._headers(), **(f.headers or {})}
                    return f.status, headers, f.body or ""
            return handler(request)
        return callback

    def _route(self, method: str, base: str, pattern: str, handler) -> None:
        self.mock.add_callback(method, re.compile(re.escape(base) + pattern + r"(\?.*)?$"),
                               callback=self._dispatch(handler))

    def _routes(self) -> None:
        t, d = self.trading_url, self.data_url
        self._route("GET", t, r"/v2/account", lambda r: self._reply(200, example("account.get.json")))
        self._route("GET", t, r"/v2/assets/(.+)",
                    lambda r: self._reply(200, self._asset(urlparse(r.url).path.split("/v2/assets/", 1)[1])))
        self._route("GET", t, r"/v2/clock", self._clock)
        self._route("GET", t, r"/v2/calendar", lambda r: self._reply(200, example("calendar.get.json")))
        self._route("POST", t, r"/v2/orders", self._post_order)
        self._route("GET", t, r"/v2/orders:by_client_order_id", self._get_by_coid)
        self._route("GET", t, r"/v2/orders", self._list_orders)
        self._route("DELETE", t, r"/v2/orders", self._cancel_all)
        self._route("GET", t, r"/v2/orders/([0-9a-f-]+)", self._get_order)
        self._route("DELETE", t, r"/v2/orders/([0-9a-f-]+)", self._cancel_order)
        self._route("GET", t, r"/v2/positions", lambda r: self._reply(200, list(self.positions.values())))
        self._route("DELETE", t, r"/v2/positions", self._close_all)
        self._route("GET", d, r"/v2/stocks/bars", lambda r: self._bars(r, "stocks.bars.lastpage.get.json"))
        self._route("GET", d, r"/v1beta3/crypto/us/bars", lambda r: self._bars(r, "crypto.us.bars.lastpage.get.json"))
        self._route("GET", d, r"/v2/stocks/quotes/latest", lambda r: self._quotes(r, "stocks.quotes.latest.get.json"))
        self._route("GET", d, r"/v1beta3/crypto/us/latest/quotes",
                    lambda r: self._quotes(r, "crypto.us.quotes.latest.get.json"))

    # ------------------------------------------------------------------ trading handlers
    def _clock(self, r):
        body = example("clock.get.json")
        body["is_open"] = self.market_open
        body["timestamp"] = self.now.isoformat()
        body["next_open"] = (self.now + timedelta(hours=15)).isoformat()
        body["next_close"] = (self.now + timedelta(hours=2)).isoformat()
        return self._reply(200, body)

    def _post_order(self, r):
        raw = json.loads(r.body)
        body = self.validator.coerce(raw)
        self.raw_order_bodies.append(raw)
        self.order_bodies.append(body)
        errs = self.validator.errors(body)
        self.body_errors.append(errs)
        if errs:
            return self._error(422, {"code": 40010000, "message": f"request body format is invalid: {errs}"})
        coid = body.get("client_order_id") or str(uuid.uuid4())
        if any(o["client_order_id"] == coid for o in self._all_orders()):
            return self._error(422, {"code": 40010001, "message": "client_order_id must be unique"})
        symbol, side = body["symbol"], body["side"]
        crypto = "/" in symbol
        opposite = "sell" if side == "buy" else "buy"
        if self._held_for_orders(symbol, opposite) > 0:
            return self._error(403, {"code": 40310000, "message": "potential wash trade detected. use complex orders"})
        pos = self.positions.get(symbol.replace("/", ""))
        held_qty = Decimal(pos["qty"]) if pos else Decimal(0)
        if side == "sell" and "qty" in body:
            available = held_qty - self._held_for_orders(symbol, "sell")
            if held_qty > 0 and Decimal(body["qty"]) > available:
                err = example("error.403.insufficient_qty.json")
                err.update(symbol=symbol, available=str(available), existing_qty=str(held_qty),
                           held_for_orders=str(self._held_for_orders(symbol, "sell")),
                           message=f"insufficient qty available for order (requested: {body['qty']}, available: {available})")
                return self._error(403, err)
            if held_qty <= 0 and crypto:
                return self._error(403, "error.403.insufficient_balance_crypto.json")
        order = self._new_order(body, coid, crypto)
        self.orders[order["id"]] = order
        return self._reply(200, order)

    def _new_order(self, body: dict, coid: str, crypto: bool) -> dict:
        o = example("order.limit_equity.post.json")
        n = next(self._ids)
        o.update({k: None for k in ("filled_at", "filled_avg_price", "limit_price", "stop_price", "trail_price",
                                    "trail_percent", "hwm", "legs", "notional", "qty", "canceled_at")})
        o.update(id=str(uuid.UUID(int=n)), client_order_id=coid, symbol=body["symbol"], side=body["side"],
                 type=body["type"], order_type=body["type"], time_in_force=body["time_in_force"],
                 asset_class="crypto" if crypto else "us_equity", filled_qty="0",
                 status="pending_new" if crypto else "accepted", order_class=body.get("order_class", "")
                 if body.get("order_class") != "simple" else "",
                 asset_id=self._asset(body["symbol"])["id"],
                 **{k: body[k] for k in NUMERIC_FIELDS if k in body},
                 created_at=_iso(self.now), updated_at=_iso(self.now), submitted_at=_iso(self.now))
        if body.get("order_class") == "bracket":
            legs = []
            exit_side = "sell" if body["side"] == "buy" else "buy"
            for suffix, typ, prices in (("tp", "limit", {"limit_price": body["take_profit"]["limit_price"]}),
                                        ("sl", "stop_limit" if "limit_price" in body["stop_loss"] else "stop",
                                         body["stop_loss"])):
                leg = copy.deepcopy(o)
                leg.update(id=str(uuid.UUID(int=next(self._ids))), client_order_id=f"{coid}-{suffix}", side=exit_side,
                           type=typ, order_type=typ, status="held", legs=None, limit_price=None, stop_price=None)
                leg.update(prices)
                legs.append(leg)
            o["legs"] = legs
        return o

    def _find(self, oid: str) -> dict | None:
        return next((o for o in self._all_orders() if o["id"] == oid), None)

    def _get_order(self, r):
        oid = urlparse(r.url).path.rsplit("/", 1)[1]
        o = self._find(oid)
        if o is None:
            return self._error(404, "error.404.order_not_found.json")
        if o["status"] == "pending_cancel" and o["client_order_id"] not in self.never_cancel:
            left = self._pending_cancel_polls.get(oid, 0)
            if left <= 0:
                o["status"], o["canceled_at"] = "canceled", _iso(self.now)
            self._pending_cancel_polls[oid] = left - 1
        return self._reply(200, o)

    def _get_by_coid(self, r):
        coid = parse_qs(urlparse(r.url).query)["client_order_id"][0]
        o = next((o for o in self._all_orders() if o["client_order_id"] == coid), None)
        return self._reply(200, o) if o else self._error(404, "error.404.order_not_found.json")

    def _list_orders(self, r):
        q = {k: v[0] for k, v in parse_qs(urlparse(r.url).query).items()}
        status, nested = q.get("status", "open"), q.get("nested") == "True"
        tops = sorted(self.orders.values(), key=lambda o: o["submitted_at"], reverse=q.get("direction") != "asc")
        if "after" in q:
            after = datetime.fromisoformat(q["after"].replace("Z", "+00:00"))
            tops = [o for o in tops if datetime.fromisoformat(o["submitted_at"].replace("Z", "+00:00")) > after]
        rows = []
        for o in tops:
            if nested:
                rows.append(o)
            else:
                rows.append({**o, "legs": None})
                rows.extend(o.get("legs") or [])
        keep = {"open": lambda o: o["status"] in OPEN, "closed": lambda o: o["status"] not in OPEN,
                "all": lambda o: True}[status]
        if nested:
            rows = [o for o in rows if keep(o) or any(keep(l) for l in o.get("legs") or [])]
        else:
            rows = [o for o in rows if keep(o)]
        return self._reply(200, rows[: int(q.get("limit", 50))])

    def _cancel_order(self, r):
        oid = urlparse(r.url).path.rsplit("/", 1)[1]
        o = self._find(oid)
        if o is None:
            return self._error(404, "error.404.order_not_found.json")
        if o["status"] not in OPEN:
            return self._error(422, {"code": 42210000, "message": f"order is not cancelable (status {o['status']})"})
        o["status"] = "pending_cancel"
        self._pending_cancel_polls[oid] = self.cancel_delay_polls
        return 204, self._headers(), ""

    def _cancel_all(self, r):
        out = []
        for o in self._all_orders():
            if o["status"] in OPEN:
                o["status"], o["canceled_at"] = "canceled", _iso(self.now)
                out.append({"id": o["id"], "status": 200})
        return self._reply(207, out)

    def _close_all(self, r):
        if parse_qs(urlparse(r.url).query).get("cancel_orders") == ["True"]:
            self._cancel_all(r)
        out = []
        for key, pos in list(self.positions.items()):
            if key in self.close_failures:
                out.append({"symbol": key, "status": self.close_failures[key].get("code", 40310000) // 100000,
                            "body": self.close_failures[key]})
                continue
            crypto = pos["asset_class"] == "crypto"
            symbol = f"{key[:-3]}/{key[-3:]}" if crypto else key
            qty = abs(Decimal(pos["qty"]))
            body = {"symbol": symbol, "qty": str(qty), "side": "sell" if Decimal(pos["qty"]) > 0 else "buy",
                    "type": "market", "time_in_force": "gtc" if crypto else "day"}
            order = self._new_order(body, f"close-{key}-{next(self._ids)}", crypto)
            self.orders[order["id"]] = order
            out.append({"symbol": key, "status": 200, "body": order})
        return self._reply(207, out)

    # ------------------------------------------------------------------ data handlers
    def _bars(self, r, template: str):
        q = {k: v[0] for k, v in parse_qs(urlparse(r.url).query).items()}
        body = example(template)
        symbols = q["symbols"].split(",")
        if self.bars:
            start = datetime.fromisoformat(q["start"]) if "start" in q else None
            end = datetime.fromisoformat(q["end"]) if "end" in q else None
            def inside(b):
                t = datetime.fromisoformat(b["t"].replace("Z", "+00:00"))
                return (start is None or t >= start) and (end is None or t <= end)
            body["bars"] = {s: [b for b in self.bars.get(s, []) if inside(b)] for s in symbols if s in self.bars}
        return self._reply(200, body)

    def _quotes(self, r, template: str):
        symbols = parse_qs(urlparse(r.url).query)["symbols"][0].split(",")
        body = example(template)
        body["quotes"] = {s: self.quotes.get(s, body["quotes"].get(s)) for s in symbols
                          if s in self.quotes or s in body["quotes"]}
        return self._reply(200, body)


def make_bars(start: datetime, step: timedelta, closes: list[float], *, stamp=None) -> list[dict]:
    """Bar bodies in Alpaca's wire format (``t,o,h,l,c,v,n,vw``), as in the examples."""
    out = []
    for i, c in enumerate(closes):
        t = (stamp or (lambda k: start + k * step))(i)
        out.append({"t": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "o": c, "h": c * 1.01, "l": c * 0.99, "c": c,
                    "v": 1000 + i, "n": 10, "vw": c})
    return out


# --------------------------------------------------------------------------- test helpers
API_KEY, SECRET_KEY = "PKDOUBLEKEY0001", "sEcReTdOuBlE0000000000000000000000000001"


class FakeTime:
    """One fake clock for monotonic time, wall time and sleep, so backoff costs no real time."""

    def __init__(self, start: datetime = datetime(2025, 6, 24, 18, 15, tzinfo=UTC)):
        self.t = start.timestamp()
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    wall = monotonic

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.t, UTC)


def make_keys(api_key: str = API_KEY, secret_key: str = SECRET_KEY):
    from hydra_engine.config import AlpacaKeys
    return AlpacaKeys(APCA_API_KEY_ID=api_key, APCA_API_SECRET_KEY=secret_key)


def make_broker(fake: FakeTime, **kw):
    """An AlpacaBroker on the double's default paper URL with fake time everywhere."""
    import random
    from hydra_engine.brokers.alpaca import AlpacaBroker
    from hydra_engine.brokers.ratelimit import RateLimiter
    limiter = kw.pop("limiter", None) or RateLimiter(150, monotonic=fake.monotonic, wall=fake.wall,
                                                     sleep=fake.sleep, rng=random.Random(7))
    kw.setdefault("session_id", "S1")
    return AlpacaBroker(make_keys(), clock=fake.now, limiter=limiter, sleep=fake.sleep, **kw)
