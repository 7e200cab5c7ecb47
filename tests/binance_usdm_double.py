"""A Binance USD-M double at the HTTP boundary: the demo account's signed endpoints (a tiny one-way,
isolated-margin exchange that fills market orders at once) and the public market-data endpoints.

Every answer is shaped as the contract examples in ``shared/contracts/binance/examples`` (the order
object of ``order.post.limit.ccxt_static.json``, ``positionRisk.v2.oneway.json``, ``leverage.post.json``,
``marginType.post.json``, the error envelopes verbatim from the ``error.*.json`` files). Every signed
request's HMAC is checked (NOTES-2 §4.7 recipe: query + body, signature last) and its timestamp against
the double's clock and ``recvWindow`` (-1021). ``fail(method, path, status, body, after=...)`` scripts a
fault: answered instead of processing, or (``after=True``) after processing (the order exists, the client
never hears so: the 503 "unknown").

Served either through ``responses`` (:meth:`install`) or over a loopback ``ThreadingHTTPServer``
(:class:`UsdmServer`, 127.0.0.1 only).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

UTC = timezone.utc
CONTRACTS = Path(os.environ.get("HYDRA_CONTRACTS", Path(__file__).resolve().parents[2] / "shared" / "contracts"))
EXAMPLES = CONTRACTS / "binance" / "examples"
KEY = "demo-key-0123456789abcdef"
SECRET = "demo-secret-fedcba9876543210"


def example(name: str):
    return json.loads((EXAMPLES / name).read_text())


def _filters(tick, min_price, max_price, step, max_qty, market_max, notional) -> list[dict]:
    return [{"filterType": "PRICE_FILTER", "minPrice": min_price, "maxPrice": max_price, "tickSize": tick},
            {"filterType": "LOT_SIZE", "stepSize": step, "minQty": step, "maxQty": max_qty},
            {"filterType": "MARKET_LOT_SIZE", "stepSize": step, "minQty": step, "maxQty": market_max},
            {"filterType": "MAX_NUM_ORDERS", "limit": "200"}, {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": "10"},
            {"filterType": "MIN_NOTIONAL", "notional": notional},
            {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500", "multiplierDecimal": "4"}]


def exchange_info_row(symbol: str, **filters) -> dict:
    """A ``GET /fapi/v1/exchangeInfo`` symbol row in Binance's schema. BTCUSDT/ETHUSDT default to the values of
    the rows recorded in ccxt/ccxt ts/src/test/static/markets/binance.json @0dca8ac (the source named in
    hydra_engine/perp/specs.json); no exchangeInfo example is in shared/contracts."""
    recorded = {"BTCUSDT": ("0.10", "556.80", "4529764", "0.001", "1000", "120", "5"),
                "ETHUSDT": ("0.01", "39.86", "306177", "0.001", "10000", "2000", "5")}
    keys = ("tick", "min_price", "max_price", "step", "max_qty", "market_max", "notional")
    values = {**dict(zip(keys, recorded.get(symbol, ("0.01", "0.01", "100000", "0.01", "100000", "10000", "5")))),
              **filters}
    return {"symbol": symbol, "pair": symbol, "contractType": "PERPETUAL", "status": "TRADING",
            "baseAsset": symbol[:-4], "quoteAsset": "USDT", "marginAsset": "USDT", "pricePrecision": 2,
            "quantityPrecision": 3, "filters": _filters(**values),
            "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                           "TRAILING_STOP_MARKET"], "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"]}


def leverage_bracket_rows(symbols) -> list[dict]:
    """``GET /fapi/v1/leverageBracket`` rows in Binance's schema from the shipped table (perp/brackets.json,
    itself Binance rows as stored by freqtrade); no leverageBracket example is in shared/contracts."""
    raw = json.loads((Path(__file__).resolve().parents[1] / "hydra_engine" / "perp" / "brackets.json").read_text())
    return [{"symbol": s, "notionalCoef": 1.0, "brackets": [
        {"bracket": b["bracket"], "initialLeverage": b["max_leverage"], "notionalCap": int(Decimal(b["notional_cap_usdt"])),
         "notionalFloor": int(Decimal(b["notional_floor_usdt"])), "maintMarginRatio": float(b["maint_margin_rate"]),
         "cum": float(b["maint_amount_usdt"])} for b in raw["symbols"][s]]} for s in symbols if s in raw["symbols"]]


class UsdmDouble:
    def __init__(self, *, marks: dict[str, str] | None = None, skew_ms: int = 0, hourly: dict[str, list[float]] | None = None):
        self.marks = {s: Decimal(v) for s, v in (marks or {"BTCUSDT": "30000.0", "ETHUSDT": "1800.00"}).items()}
        self.skew_ms = skew_ms                     # the server's clock minus the real one
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str, dict]] = []    # (method, path, params) of every request
        self.bad_signatures = 0
        self.orders: dict[int, dict] = {}
        self.algo: dict[int, dict] = {}
        self.trades: list[dict] = []
        self.income: list[dict] = []
        self.positions: dict[str, tuple[Decimal, Decimal]] = {}     # symbol -> (amount, entry)
        self.leverage: dict[str, int] = {}
        self.margin_type: dict[str, str] = {}
        self.hedge_mode = False
        self._faults: list[dict] = []
        self._next_id = 4087922044
        self._next_trade = 700000
        self.hourly = hourly or {}                 # symbol -> hourly closes (oldest first), re-stamped to now
        self.funding_rows: dict[str, list[dict]] = {}
        self.exchange_info = {"timezone": "UTC", "serverTime": 0, "symbols": [exchange_info_row(s) for s in self.marks]}
        self.leverage_brackets = leverage_bracket_rows(list(self.marks))

    # ------------------------------------------------------------------ steering
    def fail(self, method: str, path: str, status: int, body, *, times: int = 1, after: bool = False,
             headers: dict | None = None) -> None:
        self._faults.append({"method": method, "path": path, "status": status, "body": body, "times": times,
                             "after": after, "headers": headers or {}})

    def server_ms(self) -> int:
        return int(datetime.now(UTC).timestamp() * 1000) + self.skew_ms

    def calls(self, method: str, path: str) -> list[dict]:
        return [p for m, pa, p in self.requests if m == method and pa == path]

    # ------------------------------------------------------------------ dispatch
    def handle(self, method: str, url: str, body: str, headers: dict) -> tuple[int, dict, str]:
        parts = urlsplit(url)
        path = parts.path
        raw = (parts.query or "") + (body or "")
        params = dict(parse_qsl(raw, keep_blank_values=True))
        with self.lock:
            self.requests.append((method, path, params))
            fault = next((f for f in self._faults if f["method"] == method and re.fullmatch(f["path"], path)
                          and f["times"] > 0), None)
            if fault and not fault["after"]:
                fault["times"] -= 1
                return fault["status"], fault["headers"], json.dumps(fault["body"])
            if path.startswith("/fapi/v1/") and path not in PUBLIC:
                err = self._check_signed(raw, params, headers)
                if err:
                    return err
            try:
                status, answer = self._route(method, path, params)
            except _Err as e:
                status, answer = e.status, e.body
            if fault:
                fault["times"] -= 1
                return fault["status"], fault["headers"], json.dumps(fault["body"])
            return status, {}, json.dumps(answer)

    def _check_signed(self, raw: str, params: dict, headers: dict):
        if headers.get("X-MBX-APIKEY") != KEY:
            return 401, {}, json.dumps({"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."})
        payload, _, sig = raw.rpartition("&signature=")
        if not sig or hmac.new(SECRET.encode(), payload.encode(), hashlib.sha256).hexdigest() != sig:
            self.bad_signatures += 1
            return 400, {}, json.dumps(example("error.-1022.invalid_signature.json"))
        ts, window, server = int(params["timestamp"]), int(params.get("recvWindow", 5000)), self.server_ms()
        if not (ts < server + 1000 and server - ts <= window):
            return 400, {}, json.dumps(example("error.-1021.timestamp_outside_recvwindow.json"))
        return None

    def _route(self, method: str, path: str, p: dict):
        key = (method, path)
        if key == ("GET", "/fapi/v1/time"):
            return 200, {"serverTime": self.server_ms()}
        if key == ("GET", "/fapi/v1/exchangeInfo"):
            return 200, {**self.exchange_info, "serverTime": self.server_ms()}
        if key == ("GET", "/fapi/v1/leverageBracket"):
            rows = [r for r in self.leverage_brackets if r["symbol"] == p.get("symbol", r["symbol"])]
            return 200, rows if "symbol" not in p else rows[0]
        if key == ("GET", "/fapi/v1/positionSide/dual"):
            return 200, {"dualSidePosition": self.hedge_mode}
        if key == ("POST", "/fapi/v1/marginType"):
            if self.margin_type.get(p["symbol"]) == p["marginType"]:
                raise _Err(400, example("error.-4046.no_need_to_change_margin_type.json"))
            self.margin_type[p["symbol"]] = p["marginType"]
            return 200, example("marginType.post.json")
        if key == ("POST", "/fapi/v1/leverage"):
            self.leverage[p["symbol"]] = int(p["leverage"])
            return 200, {**example("leverage.post.json"), "leverage": int(p["leverage"]), "symbol": p["symbol"]}
        if key == ("POST", "/fapi/v1/order"):
            return 200, self._new_order(p)
        if key == ("GET", "/fapi/v1/order"):
            o = self._find(p)
            return 200, o
        if key == ("DELETE", "/fapi/v1/order"):
            o = self._find(p)
            if o["status"] != "NEW":
                raise _Err(400, {"code": -2011, "msg": "Unknown order sent."})
            o["status"] = "CANCELED"
            return 200, o
        if key == ("GET", "/fapi/v1/openOrders"):
            return 200, [o for o in self.orders.values() if o["symbol"] == p["symbol"] and o["status"] == "NEW"]
        if key == ("POST", "/fapi/v1/algoOrder"):
            return 200, self._new_algo(p)
        if key == ("GET", "/fapi/v1/algoOrder"):
            a = next((a for a in self.algo.values() if a["clientAlgoId"] == p.get("clientAlgoId")), None)
            if a is None:
                raise _Err(400, {"code": -2013, "msg": "Order does not exist."})
            return 200, a
        if key == ("DELETE", "/fapi/v1/algoOrder"):
            a = next((a for a in self.algo.values() if a["clientAlgoId"] == p.get("clientAlgoId")), None)
            if a is None or a["algoStatus"] != "NEW":
                raise _Err(400, {"code": -2011, "msg": "Unknown order sent."})
            a["algoStatus"] = "CANCELED"
            return 200, {"algoId": a["algoId"], "clientAlgoId": a["clientAlgoId"], "code": "200", "msg": "success"}
        if key == ("GET", "/fapi/v1/openAlgoOrders"):
            return 200, [a for a in self.algo.values() if a["algoStatus"] == "NEW"]
        if key == ("GET", "/fapi/v2/positionRisk"):
            template = example("positionRisk.v2.oneway.json")[0]
            rows = []
            for s in sorted(set(self.positions) | set(self.leverage)):
                amt, entry = self.positions.get(s, (Decimal(0), Decimal(0)))
                rows.append({**template, "symbol": s, "positionAmt": str(amt), "entryPrice": str(entry),
                             "markPrice": str(self.marks[s]), "leverage": str(self.leverage.get(s, 20)),
                             "marginType": self.margin_type.get(s, "cross").lower().replace("crossed", "cross")})
            return 200, rows
        if key == ("GET", "/fapi/v2/account"):
            acct = example("account.v2.single_asset.json")
            return 200, acct
        if key == ("GET", "/fapi/v1/userTrades"):
            rows = [t for t in self.trades if t["symbol"] == p["symbol"]]
            if "fromId" in p:
                rows = [t for t in rows if t["id"] >= int(p["fromId"])]
            elif "startTime" in p:
                rows = [t for t in rows if t["time"] >= int(p["startTime"])]
            return 200, rows[: int(p.get("limit", 500))]
        if key == ("GET", "/fapi/v1/income"):
            rows = [r for r in self.income if r["incomeType"] == p.get("incomeType", r["incomeType"])
                    and r["time"] >= int(p.get("startTime", 0))]
            return 200, rows
        # ---- public market data
        if key == ("GET", "/fapi/v1/klines"):
            return 200, self._klines(p)
        if key == ("GET", "/fapi/v1/premiumIndex"):
            s = p["symbol"]
            return 200, {**example("premiumIndex.symbol.json"), "symbol": s, "markPrice": str(self.marks[s]),
                         "time": self.server_ms()}
        if key == ("GET", "/fapi/v1/fundingRate"):
            rows = self.funding_rows.get(p["symbol"], [])
            if "startTime" in p:
                rows = [r for r in rows if int(p["startTime"]) <= r["fundingTime"] <= int(p.get("endTime", 10**15))]
            return 200, rows[-int(p.get("limit", 100)):]
        if key == ("GET", "/fapi/v1/openInterest"):
            return 200, {**example("openInterest.json"), "symbol": p["symbol"], "time": self.server_ms()}
        if key == ("GET", "/futures/data/openInterestHist"):
            return 200, []
        raise _Err(400, example("error.invalid_symbol.json"))

    # ------------------------------------------------------------------ the little exchange
    def _find(self, p: dict) -> dict:
        for o in self.orders.values():
            if o["symbol"] == p["symbol"] and (o["clientOrderId"] == p.get("origClientOrderId")
                                               or str(o["orderId"]) == p.get("orderId")):
                return o
        raise _Err(400, {"code": -2013, "msg": "Order does not exist."})

    def _new_order(self, p: dict) -> dict:
        s, side, typ = p["symbol"], p["side"], p["type"]
        if typ not in ("MARKET", "LIMIT"):
            raise _Err(400, example("error.-4120.use_algo_order_api.json"))
        if "positionSide" in p and p["positionSide"] != "BOTH":
            raise _Err(400, example("error.-4061.position_side_mismatch.json"))
        cid = p.get("newClientOrderId", "")
        if not re.fullmatch(r"[\.A-Z\:/a-z0-9_-]{1,36}", cid):
            raise _Err(400, {"code": -1100, "msg": "Illegal characters found in parameter 'newClientOrderId'."})
        if any(o["clientOrderId"] == cid and o["status"] == "NEW" for o in self.orders.values()):
            raise _Err(400, {"code": -4116, "msg": "ClientOrderId is duplicated."})
        qty = Decimal(p["quantity"])
        amt, entry = self.positions.get(s, (Decimal(0), Decimal(0)))
        sign = 1 if side == "BUY" else -1
        if p.get("reduceOnly") == "true" and (amt == 0 or amt * sign > 0 or qty > abs(amt)):
            raise _Err(400, example("error.-2022.reduce_only_rejected.json"))
        price = self.marks[s]
        if p.get("reduceOnly") != "true" and qty * price < 5:
            raise _Err(400, example("error.-4164.min_notional.json"))
        oid = self._next_id
        self._next_id += 1
        now = self.server_ms()
        o = {**example("order.post.limit.ccxt_static.json"), "orderId": oid, "symbol": s, "clientOrderId": cid,
             "side": side, "type": typ, "origType": typ, "origQty": str(qty), "price": p.get("price", "0"),
             "reduceOnly": p.get("reduceOnly") == "true", "timeInForce": p.get("timeInForce", "GTC"),
             "updateTime": now, "status": "NEW", "executedQty": "0", "avgPrice": "0.00", "cumQuote": "0"}
        self.orders[oid] = o
        if typ == "MARKET":
            self._fill(o, qty, price, now)
        return o

    def _fill(self, o: dict, qty: Decimal, price: Decimal, now: int) -> None:
        s, sign = o["symbol"], (1 if o["side"] == "BUY" else -1)
        amt, entry = self.positions.get(s, (Decimal(0), Decimal(0)))
        new = amt + sign * qty
        if amt == 0 or amt * sign > 0:
            entry = (abs(amt) * entry + qty * price) / abs(new)
        elif new * amt < 0:
            entry = price
        self.positions[s] = (new, entry if new != 0 else Decimal(0))
        if new == 0:
            del self.positions[s]
        o.update(status="FILLED", executedQty=str(qty), avgPrice=str(price), cumQuote=str(qty * price))
        self._next_trade += 1
        fee = (qty * price * Decimal("0.0005")).quantize(Decimal("0.00000001"))
        self.trades.append({"buyer": o["side"] == "BUY", "commission": str(fee), "commissionAsset": "USDT",
                            "id": self._next_trade, "maker": False, "orderId": o["orderId"], "price": str(price),
                            "qty": str(qty), "quoteQty": str(qty * price), "realizedPnl": "0", "side": o["side"],
                            "positionSide": "BOTH", "symbol": s, "time": now})

    def _new_algo(self, p: dict) -> dict:
        if p.get("algoType") != "CONDITIONAL":
            raise _Err(400, example("error.mandatory_param.json"))
        aid = 2146760 + len(self.algo)
        a = {"algoId": aid, "clientAlgoId": p["clientAlgoId"], "algoType": "CONDITIONAL", "orderType": p["type"],
             "symbol": p["symbol"], "side": p["side"], "positionSide": "BOTH", "timeInForce": p.get("timeInForce", "GTC"),
             "quantity": p.get("quantity"), "algoStatus": "NEW", "actualOrderId": "", "actualPrice": "0.00000",
             "triggerPrice": p.get("triggerPrice", "0"), "price": p.get("price", "0"),
             "workingType": p.get("workingType", "CONTRACT_PRICE"), "closePosition": False, "priceProtect": False,
             "reduceOnly": p.get("reduceOnly") == "true", "createTime": self.server_ms(), "updateTime": self.server_ms(),
             "triggerTime": 0, "goodTillDate": 0}
        self.algo[aid] = a
        return a

    def _klines(self, p: dict) -> list:
        """Real hourly closes re-stamped so the newest bar closed at the last whole ``interval``; every
        interval gets the same closes (its bars are synthetic in time, real in price)."""
        s = p["symbol"]
        step = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600}[p["interval"]]
        closes = self.hourly.get(s) or [float(self.marks[s])]
        limit = int(p.get("limit", 500))
        now_s = self.server_ms() // 1000
        last_open = now_s // step * step - step
        n = min(limit, len(closes))
        rows = []
        for i, c in enumerate(closes[-n:]):
            o = last_open - (n - 1 - i) * step
            prev = closes[-n:][i - 1] if i else c
            rows.append([o * 1000, f"{prev:.2f}", f"{max(prev, c) * 1.001:.2f}", f"{min(prev, c) * 0.999:.2f}",
                         f"{c:.2f}", "100.0", (o + step) * 1000 - 1, "0", 10, "50.0", "0", "0"])
        # plus the bar still forming (Binance returns it; it must not be used)
        o = last_open + step
        rows.append([o * 1000, f"{closes[-1]:.2f}", f"{closes[-1]:.2f}", f"{closes[-1]:.2f}", f"{closes[-1]:.2f}",
                     "1.0", (o + step) * 1000 - 1, "0", 1, "0", "0", "0"])
        if "endTime" in p:
            rows = [r for r in rows if r[0] <= int(p["endTime"])]
        if "startTime" in p:
            rows = [r for r in rows if r[0] >= int(p["startTime"])]
        return rows[-limit:]

    # ------------------------------------------------------------------ serving through responses
    def install(self, mock, base: str) -> None:
        def cb(request):
            status, headers, text = self.handle(request.method, request.url,
                                                request.body.decode() if isinstance(request.body, bytes)
                                                else (request.body or ""), dict(request.headers))
            return status, {"Content-Type": "application/json", **headers}, text
        for method in ("GET", "POST", "DELETE"):
            mock.add_callback(method, re.compile(re.escape(base) + r"/.*"), callback=cb)


PUBLIC = {"/fapi/v1/time", "/fapi/v1/exchangeInfo", "/fapi/v1/klines", "/fapi/v1/premiumIndex", "/fapi/v1/fundingRate", "/fapi/v1/openInterest"}


class _Err(Exception):
    def __init__(self, status: int, body):
        self.status, self.body = status, body


class UsdmServer:
    """``with UsdmServer(double) as srv:`` — the double on ``srv.url`` (127.0.0.1, an ephemeral port)."""

    def __init__(self, double: UsdmDouble):
        self.double = double
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _go(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                status, headers, text = owner.double.handle(self.command, self.path, body, dict(self.headers))
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _go

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def __enter__(self) -> "UsdmServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def restamped_funding(symbol: str, mark: float, now: datetime, rate: str = "0.00010000") -> list[dict]:
    settled = now.replace(hour=now.hour // 8 * 8, minute=0, second=0, microsecond=0)
    return [{"symbol": symbol, "fundingRate": rate, "markPrice": f"{mark:.2f}",
             "fundingTime": int((settled - timedelta(hours=8 * i)).timestamp() * 1000)} for i in (2, 1, 0)]
