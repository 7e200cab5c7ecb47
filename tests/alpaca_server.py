"""A real HTTP server double on 127.0.0.1 for multi-process tests (crash/restart, security).

It serves the very handlers of :class:`tests.alpaca_double.AlpacaDouble` (trading + market data,
with their state, validation and scripted faults) over ``http.server.ThreadingHTTPServer`` in a
background thread of the test process, plus the three Binance USD-M routes the derivatives feed
reads. Because the server lives in the test process, its state (orders, positions, fills) survives
any number of HYDRA client processes being started and SIGKILLed.

Extras for fault injection:
  * ``kill_on(method, path_regex, when="before"|"after", pid=...)``: on the next matching request
    SIGKILL the client process, either before the request is processed (nothing happened at the
    "broker") or after it was processed (the broker acted, the client never got the answer); the
    connection is dropped without a reply either way;
  * an automatic "exchange": working market orders are filled ``fill_delay_s`` after submission
    (buys at the last close, sells 1 % above: more than the double's 25 bps crypto fee each way, so round
    trips are not losses and the risk layer's loss-streak cooldown never stops the entries), every fill is
    recorded in ``fills`` with the ``fill_id`` HYDRA derives from it (``<order id>:<cumulative qty>``);
  * ``fill_working()`` fills everything working now (e.g. while HYDRA is down).

Only loopback, only while the test holds the context manager; every request is bounded by the
client's own timeouts.
"""
from __future__ import annotations

import json
import os
import re
import signal
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlparse

import pandas as pd

from .alpaca_double import OPEN, AlpacaDouble, make_bars

UTC = timezone.utc
# 2023-10-23, the spot-ETF short squeeze: the BTC bar opened 22:00 rose 5.5 % while Bybit open interest
# fell 19.3 % (snapshots stamped 22:00 and 23:00, i.e. at that bar's open and close)
SQUEEZE_HOUR = pd.Timestamp("2023-10-23T22:00:00Z")
CRYPTO_FILES = (("BTC/USD", "BTCUSDT_1h.parquet", "BTCUSDT_oi_1h.parquet", "BTCUSDT"),
                ("ETH/USD", "ETHUSDT_1h_from_1m.parquet", "ETHUSDT_oi_1h.parquet", "ETHUSDT"))


# --------------------------------------------------------------------------- the real market, re-stamped
def real_window(shared_data: Path, kfile: str, oifile: str, hours: int = 120) -> tuple[list[float], list[float]]:
    k = pd.read_parquet(shared_data / "crypto_perp/binance_usdm/klines" / kfile).set_index("ts")
    """Closes of the bars opened up to ``SQUEEZE_HOUR``, and the open interest at each of their closes
    (Bybit stamps a snapshot with the time it was taken: the bar opened t-1h closes at its stamp t)."""
    closes = k.loc[SQUEEZE_HOUR - pd.Timedelta(hours=hours - 1):SQUEEZE_HOUR, "close"].tolist()
    oi = pd.read_parquet(shared_data / "crypto_perp/bybit_linear/open_interest" / oifile)["open_interest"]
    return closes, oi.loc[SQUEEZE_HOUR - pd.Timedelta(hours=hours - 2):SQUEEZE_HOUR + pd.Timedelta(hours=1)].tolist()


class BinanceMarket:
    """Funding and open-interest answers for BTCUSDT/ETHUSDT built from the real squeeze window."""

    def __init__(self) -> None:
        self.funding: dict[str, list[dict]] = {}
        self.oi_hist: dict[str, list[dict]] = {}
        self.oi_last: dict[str, float] = {}
        # the installed market is frozen at its last bar's close: a live snapshot is stamped within that
        # bar's next hour, so a test that crosses an hour boundary still sees the same market
        self.live_until: float | None = None

    def answer(self, path: str, query: dict, now: datetime):
        sym = query.get("symbol", "")
        if path == "/fapi/v1/fundingRate" and sym in self.funding:
            return 200, self.funding[sym]
        if path == "/futures/data/openInterestHist" and sym in self.oi_hist:
            return 200, self.oi_hist[sym]
        if path == "/fapi/v1/openInterest" and sym in self.oi_last:
            t = now.timestamp() if self.live_until is None else min(now.timestamp(), self.live_until)
            return 200, {"openInterest": f"{self.oi_last[sym]:.3f}", "symbol": sym,
                         "time": int(t * 1000)}      # a live snapshot: "now"
        return 400, {"code": -1121, "msg": "Invalid symbol."}


def install_real_market(double: AlpacaDouble, shared_data: Path, now: datetime) -> BinanceMarket:
    """Real BTC/ETH hourly bars and Bybit open interest up to the 2023-10-23 squeeze hour, re-stamped
    so the last closed bar ends at the current hour (the staleness watchdog accepts them)."""
    binance = BinanceMarket()
    last_open = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    binance.live_until = (last_open + timedelta(hours=2)).timestamp() - 1
    for symbol, kfile, oifile, bsym in CRYPTO_FILES:
        closes, oi = real_window(shared_data, kfile, oifile)
        start = last_open - timedelta(hours=len(closes) - 1)
        double.bars[symbol] = make_bars(start, timedelta(hours=1), closes)
        double.quotes[symbol] = {"ap": closes[-1] * 1.0001, "as": 1, "bp": closes[-1], "bs": 1,
                                 "t": now.strftime("%Y-%m-%dT%H:%M:%SZ")}
        binance.oi_hist[bsym] = [
            {"symbol": bsym, "sumOpenInterest": f"{v:.3f}", "sumOpenInterestValue": f"{v * closes[-1]:.2f}",
             "CMCCirculatingSupply": "0", "timestamp": str(int((start + timedelta(hours=i + 1)).timestamp() * 1000))}
            for i, v in enumerate(oi)]
        binance.oi_last[bsym] = oi[-1]
        settled = now.replace(hour=now.hour // 8 * 8, minute=0, second=0, microsecond=0)
        binance.funding[bsym] = [{"symbol": bsym, "fundingRate": "0.00010000", "markPrice": f"{closes[-1]:.2f}",
                                  "fundingTime": int((settled - timedelta(hours=8 * i)).timestamp() * 1000)}
                                 for i in (2, 1, 0)]
    return binance


def register_binance_mock(double: AlpacaDouble, binance: BinanceMarket, base: str = "https://fapi.binance.com",
                          now_fn=lambda: datetime.now(UTC)) -> None:
    """The same Binance answers for in-process tests, on the double's ``responses`` mock (faults
    scripted with ``double.fail`` apply to them too, since they go through ``double._dispatch``)."""
    for path in ("/fapi/v1/fundingRate", "/futures/data/openInterestHist", "/fapi/v1/openInterest"):
        def handler(request, path=path):
            q = {k: v[0] for k, v in parse_qs(urlparse(request.url).query).items()}
            status, body = binance.answer(path, q, now_fn())
            return status, {"Content-Type": "application/json"}, json.dumps(body)
        double._route("GET", base, re.escape(path), handler)


# --------------------------------------------------------------------------- the server
class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:   # clients are SIGKILLed mid-request on purpose
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _go(self) -> None:
        self.server.owner._handle(self)

    do_GET = do_POST = do_DELETE = do_PATCH = _go

    def log_message(self, *args) -> None:   # quiet
        pass


class AlpacaServer:
    """``with AlpacaServer(shared_data) as srv:`` — ``srv.url`` is the base for APCA_API_BASE_URL,
    APCA_API_DATA_URL and HYDRA_BINANCE_URL alike (their paths do not overlap)."""

    def __init__(self, shared_data: Path | None = None, *, fill_delay_s: float = 1.0, sell_premium: str = "1.01"):
        self._httpd = _QuietServer(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self.now = datetime.now(UTC)
        self.double = AlpacaDouble(trading_url=self.url, data_url=self.url, now=self.now)
        self.binance = install_real_market(self.double, shared_data, self.now) if shared_data else BinanceMarket()
        self._routes = [(r.method, r.url, r.callback) for r in self.double.mock.registered()]
        self.lock = threading.RLock()
        self.fill_delay = timedelta(seconds=fill_delay_s)
        self.sell_premium = Decimal(sell_premium)
        self.auto_fill = True
        self.fills: list[dict] = []           # every fill the "exchange" made
        self.requests: list[tuple[str, str]] = []
        self.accepted_entries: list[dict] = []   # buy orders as accepted, with the book at that moment
        self.killed: list[tuple[int, str, str, str]] = []   # (pid, method, path, when)
        self._kill: tuple[str, re.Pattern, str, int] | None = None
        self._kill_countdown = 1
        self._hold = 0
        self.post_answers: list[tuple[int, str, str]] = []   # (status, client_order_id, body) per POST /v2/orders
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "AlpacaServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def env(self) -> dict[str, str]:
        return {"APCA_API_BASE_URL": self.url, "APCA_API_DATA_URL": self.url, "HYDRA_BINANCE_URL": self.url}

    # ------------------------------------------------------------------ steering
    def kill_on(self, method: str, path_regex: str, *, when: str, pid: int, nth: int = 1) -> None:
        """SIGKILL ``pid`` at the ``nth`` next matching request, ``before`` or ``after`` processing it."""
        assert when in ("before", "after") and nth >= 1
        with self.lock:
            self._kill = (method, re.compile(path_regex), when, pid)
            self._kill_countdown = nth

    def hold_fills(self, requests: int) -> None:
        """No automatic fills during the next ``requests`` requests (orders stay working across a restart)."""
        with self.lock:
            self._hold = requests

    def disarm(self) -> None:
        with self.lock:
            self._kill = None

    def price(self, symbol: str) -> Decimal:
        return Decimal(str(self.double.bars[symbol][-1]["c"]))

    def fill_working(self, *, older_than: timedelta = timedelta(0)) -> list[dict]:
        """Fill every working market order submitted at least ``older_than`` ago."""
        with self.lock:
            now = datetime.now(UTC)
            self.double.now = now
            out = []
            for o in list(self.double._all_orders()):
                if o["status"] not in ("pending_new", "accepted", "new") or o["type"] != "market":
                    continue
                if now - datetime.fromisoformat(o["submitted_at"].replace("Z", "+00:00")) < older_than:
                    continue
                price = self.price(o["symbol"]) * (self.sell_premium if o["side"] == "sell" else 1)
                price = price.quantize(Decimal("0.01"))
                qty = Decimal(o["qty"]) - Decimal(o["filled_qty"])
                self.double.fill(o["client_order_id"], str(price))
                rec = {"order_id": o["id"], "client_order_id": o["client_order_id"], "symbol": o["symbol"],
                       "side": o["side"], "qty": str(qty), "price": str(price),
                       "fill_id": f"{o['id']}:{Decimal(o['filled_qty'])}", "at": now.isoformat()}
                self.fills.append(rec)
                out.append(rec)
            return out

    def working_orders(self) -> list[dict]:
        with self.lock:
            return [o for o in self.double._all_orders() if o["status"] in OPEN]

    def positions(self) -> dict[str, Decimal]:
        """Broker positions as ``{"BTC/USD": qty}`` (signed)."""
        with self.lock:
            return {(f"{k[:-3]}/{k[-3:]}" if p["asset_class"] == "crypto" else k): Decimal(p["qty"])
                    for k, p in self.double.positions.items()}

    # ------------------------------------------------------------------ serving
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        method, path = h.command, urlparse(h.path).path
        with self.lock:
            now = datetime.now(UTC)
            self.double.now = now
            self.requests.append((method, h.path))
            if self._hold > 0:
                self._hold -= 1
            elif self.auto_fill:
                self.fill_working(older_than=self.fill_delay)
            kill = self._kill if self._kill and self._kill[0] == method and self._kill[1].search(path) else None
            if kill is not None:
                self._kill_countdown -= 1
                if self._kill_countdown > 0:
                    kill = None
            if kill and kill[2] == "before":
                self._do_kill(kill, path)
                h.close_connection = True
                return
            status, headers, text = self._answer(method, path, h.path, body, now)
            if kill:                                  # processed, then the client dies before the answer
                self._do_kill(kill, path)
                h.close_connection = True
                return
        payload = text.encode() if isinstance(text, str) else (text or b"")
        h.send_response(status)
        for k, v in (headers or {}).items():
            if k.lower() not in ("content-length", "connection"):
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    def _do_kill(self, kill, path: str) -> None:
        method, _, when, pid = kill
        self._kill = None
        self.killed.append((pid, method, path, when))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _answer(self, method: str, path: str, raw_path: str, body: bytes, now: datetime):
        if path.startswith(("/fapi/", "/futures/")):
            q = {k: v[0] for k, v in parse_qs(urlparse(raw_path).query).items()}
            status, payload = self.binance.answer(path, q, now)
            return status, {"Content-Type": "application/json"}, json.dumps(payload)
        url = self.url + raw_path
        for m, pattern, callback in self._routes:
            if m == method and pattern.match(url):
                if method == "POST" and path == "/v2/orders":
                    before = {o["id"] for o in self.double._all_orders()}
                    book = self.positions()
                    working = [dict(o) for o in self.working_orders()]
                request = SimpleNamespace(method=method, url=url, body=body.decode() if body else None,
                                          headers={})
                try:
                    status, headers, text = callback(request)
                except Exception as exc:             # a scripted exception fault: drop the connection
                    return 599, {}, f"{type(exc).__name__}: {exc}"
                if method == "POST" and path == "/v2/orders":
                    coid = (json.loads(body or b"{}") or {}).get("client_order_id", "")
                    self.post_answers.append((status, coid, text if isinstance(text, str) else ""))
                if method == "POST" and path == "/v2/orders" and status == 200:
                    new = [o for o in self.double._all_orders() if o["id"] not in before]
                    for o in new:
                        if o["side"] == "buy":
                            self.accepted_entries.append({"order": dict(o), "positions": book, "working": working})
                return status, headers, text
        return 404, {"Content-Type": "application/json"}, json.dumps({"code": 40410000, "message": "not found"})
