"""Binance USD-M futures public market data: premium index, funding history and open interest.

Why this client is small but strict: Binance limits are per IP, a 429 ignored turns into an HTTP 418
ban that lasts from 2 minutes to 3 days, and the liquidation-cascade hunter must never trade on a
half-parsed number. So every request (retries included) passes one local budget that also trusts the
server's ``X-MBX-USED-WEIGHT-1M``; the first 429 backs off, a 418 refuses everything until the ban
ends, and every failure surfaces as a typed :class:`BinanceError` (never a raw KeyError or
JSONDecodeError). Values are ``Decimal`` (Binance sends decimal strings), times are UTC datetimes.

Retries are a bounded loop here rather than urllib3's ``Retry``: each attempt costs weight, so each
must go through the budget, and the sleep is injected so tests never wait.
"""
from __future__ import annotations

import math

import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

import requests

from hydra_engine.adapters.http import retry_after_s
from hydra_engine.domain import UTC, require_utc

BASE_URL = "https://fapi.binance.com"
OI_PERIODS = ("5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,30}$")


# --------------------------------------------------------------------------- errors
class BinanceError(Exception):
    """Base of every error this client raises; callers catch this one class."""


class BinanceAPIError(BinanceError):
    """Binance answered with its error body ``{"code": .., "msg": ..}`` (e.g. -1121 invalid symbol)."""

    def __init__(self, code: int | None, msg: str, status: int | None = None):
        super().__init__(f"Binance error {code} (HTTP {status}): {msg}")
        self.code, self.msg, self.status = code, msg, status


class BinanceRateLimited(BinanceError):
    """HTTP 429/403 from Binance: the client backs off for ``retry_after_s`` and refuses until then."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BinanceBudgetExceeded(BinanceRateLimited):
    """Refused locally, nothing sent: the request would break HYDRA's own (stricter) budget."""


class BinanceBanned(BinanceError):
    """HTTP 418 IP ban: every call is refused without touching the network until ``until`` (UTC)."""

    def __init__(self, message: str, until: datetime):
        super().__init__(message)
        self.until = until


class BinanceUnavailable(BinanceError):
    """Binance cannot be reached or serves errors (5xx, timeouts after retries, 451 geo-block)."""


class BinanceDataError(BinanceError):
    """The response is not what the contract says; ``field`` names the missing or malformed field."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


# --------------------------------------------------------------------------- typed responses
@dataclass(frozen=True, slots=True)
class PremiumIndex:
    """Mark/index price (USDT) and the funding rate of the running interval (fraction per interval)."""

    symbol: str
    mark_price: Decimal
    index_price: Decimal
    last_funding_rate: Decimal
    next_funding_time: datetime
    time: datetime


@dataclass(frozen=True, slots=True)
class FundingRate:
    """One settled funding: ``rate`` is a fraction per interval (8h on BTC/ETH); mark price in USDT."""

    symbol: str
    rate: Decimal
    funding_time: datetime
    mark_price: Decimal | None   # old records carry "" here


@dataclass(frozen=True, slots=True)
class OpenInterest:
    """Current open interest in base-asset units (BTC for BTCUSDT), not USD."""

    symbol: str
    open_interest: Decimal
    time: datetime


@dataclass(frozen=True, slots=True)
class OpenInterestPoint:
    """One openInterestHist row: open interest in base units and its value in USDT."""

    symbol: str
    sum_open_interest: Decimal
    sum_open_interest_value: Decimal
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class Kline:
    """One candle: open/close time (UTC; ``close_time`` is Binance's closeTime + 1 ms) and prices in USDT."""

    open_time: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    close_time: datetime


KLINE_INTERVALS = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d")


# --------------------------------------------------------------------------- budget
@dataclass(frozen=True, slots=True)
class BinanceLimits:
    """HYDRA's local caps, half of what Binance allows per IP so other tools on the host still fit."""

    weight_per_min: int = 1200            # Binance REQUEST_WEIGHT: 2400 / minute
    funding_req_per_5min: int = 250       # /fapi/v1/fundingRate (+fundingInfo): 500 / 5 min
    futures_data_req_per_5min: int = 500  # /futures/data/*: 1000 / 5 min
    max_wait_s: float = 5.0               # wait at most this long for budget, else refuse
    default_retry_after_s: float = 60.0   # back-off after a 429 without Retry-After
    default_ban_s: float = 300.0          # ban length when a 418 does not say


class _Window:
    """Requests sent in the last ``span_s`` seconds (a sliding window of send times)."""

    def __init__(self, cap: int, span_s: float):
        self.cap, self.span_s, self.sent = cap, span_s, deque()

    def wait_s(self, now: float) -> float:
        while self.sent and self.sent[0] <= now - self.span_s:
            self.sent.popleft()
        return 0.0 if len(self.sent) < self.cap else self.sent[0] + self.span_s - now


# --------------------------------------------------------------------------- client
class BinanceFuturesClient:
    """Public (no key) USD-M futures REST endpoints, budgeted, retried and parsed into dataclasses."""

    def __init__(self, session: requests.Session | None = None, base_url: str = BASE_URL, *,
                 connect_timeout_s: float = 3.05, read_timeout_s: float = 10.0, max_retries: int = 2,
                 backoff_s: float = 0.5, limits: BinanceLimits = BinanceLimits(),
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep):
        self.session = session or requests.Session()
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.max_retries, self.backoff_s, self.limits = max_retries, backoff_s, limits
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._minute = -1
        self._used_weight = 0          # max(local count, server header) in the current UTC minute
        self.server_used_weight_1m: int | None = None   # last X-MBX-USED-WEIGHT-1M seen
        self._windows = {"funding": _Window(limits.funding_req_per_5min, 300.0),
                         "futures_data": _Window(limits.futures_data_req_per_5min, 300.0)}
        self._backoff_until = 0.0
        self._banned_until = 0.0

    # ------------------------------------------------------------------ endpoints
    def premium_index(self, symbol: str) -> PremiumIndex:
        """GET /fapi/v1/premiumIndex?symbol= (weight 1; without a symbol it would cost 10)."""
        row = self._get("/fapi/v1/premiumIndex", {"symbol": binance_symbol(symbol)}, weight=1)
        where = "premiumIndex"
        return PremiumIndex(symbol=_str(row, "symbol", where), mark_price=_dec(row, "markPrice", where),
                            index_price=_dec(row, "indexPrice", where),
                            last_funding_rate=_dec(row, "lastFundingRate", where),
                            next_funding_time=_ms(row, "nextFundingTime", where), time=_ms(row, "time", where))

    def funding_rate_history(self, symbol: str, start: datetime | None = None, end: datetime | None = None,
                             limit: int = 100) -> list[FundingRate]:
        """GET /fapi/v1/fundingRate: settled rates, oldest first (no start/end = the latest ``limit``)."""
        params = {"symbol": binance_symbol(symbol), "limit": _limit(limit, 1000), **_range(start, end)}
        rows = _rows(self._get("/fapi/v1/fundingRate", params, weight=1, window="funding"), "fundingRate")
        out = [_funding(row, f"fundingRate[{i}]") for i, row in enumerate(rows)]
        return sorted(out, key=lambda f: f.funding_time)

    def open_interest(self, symbol: str) -> OpenInterest:
        """GET /fapi/v1/openInterest (weight 1): the current open interest in base units."""
        row = self._get("/fapi/v1/openInterest", {"symbol": binance_symbol(symbol)}, weight=1)
        where = "openInterest"
        return OpenInterest(symbol=_str(row, "symbol", where), open_interest=_dec(row, "openInterest", where),
                            time=_ms(row, "time", where))

    def open_interest_history(self, symbol: str, period: str = "1h", limit: int = 30,
                              start: datetime | None = None, end: datetime | None = None) -> list[OpenInterestPoint]:
        """GET /futures/data/openInterestHist (weight 0, 1000 req/5 min, last 30 days only), oldest first."""
        if period not in OI_PERIODS:
            raise ValueError(f"period must be one of {', '.join(OI_PERIODS)}, got {period!r}")
        params = {"symbol": binance_symbol(symbol), "period": period, "limit": _limit(limit, 500), **_range(start, end)}
        rows = _rows(self._get("/futures/data/openInterestHist", params, weight=0, window="futures_data"),
                     "openInterestHist")
        out = [_oi_point(row, f"openInterestHist[{i}]") for i, row in enumerate(rows)]
        return sorted(out, key=lambda p: p.timestamp)   # doc examples are not sorted

    def klines(self, symbol: str, interval: str = "1h", limit: int = 500, start: datetime | None = None,
               end: datetime | None = None) -> list[Kline]:
        """GET /fapi/v1/klines (weight 1/2/5/10 by ``limit``), oldest first. The newest row may be the bar
        still forming: callers keep only bars whose ``close_time`` has passed."""
        if interval not in KLINE_INTERVALS:
            raise ValueError(f"interval must be one of {', '.join(KLINE_INTERVALS)}, got {interval!r}")
        limit = _limit(limit, 1500)
        weight = 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10
        params = {"symbol": binance_symbol(symbol), "interval": interval, "limit": limit, **_range(start, end)}
        rows = _rows(self._get("/fapi/v1/klines", params, weight=weight), "klines")
        out = []
        for i, r in enumerate(rows):
            where = f"klines[{i}]"
            if not isinstance(r, list) or len(r) < 7:
                raise BinanceDataError(f"{where}: expected a 12-element array, got {r!r:.80}", "klines")
            try:
                out.append(Kline(datetime.fromtimestamp(int(r[0]) / 1000, UTC), float(r[1]), float(r[2]),
                                 float(r[3]), float(r[4]), float(r[5]),
                                 datetime.fromtimestamp((int(r[6]) + 1) / 1000, UTC)))
            except (TypeError, ValueError) as exc:
                raise BinanceDataError(f"{where}: {exc}", "klines") from None
        return sorted(out, key=lambda k: k.open_time)

    @property
    def used_weight_1m(self) -> int:
        """Weight spent in the current UTC minute, as far as HYDRA knows (local count or server header)."""
        with self._lock:
            self._roll(self._clock())
            return self._used_weight

    # ------------------------------------------------------------------ transport
    def _get(self, path: str, params: dict, *, weight: int, window: str | None = None) -> Any:
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            self._acquire(path, weight, window)
            try:
                resp = self.session.get(self.base_url + path, params=params, timeout=self.timeout)
            except (requests.Timeout, requests.ConnectionError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            except requests.RequestException as exc:
                raise BinanceUnavailable(f"GET {path}: {type(exc).__name__}: {exc}") from exc
            else:
                self._note_weight(resp)
                status = resp.status_code
                if status < 400:
                    return _json(resp, path)
                if status in (429, 403):   # 403 = WAF limit: same medicine as 429
                    raise self._back_off(resp, path)
                if status == 418:
                    raise self._ban(resp, path)
                if status == 451:
                    raise BinanceUnavailable(f"GET {path}: HTTP 451, Binance refuses this location; not retrying")
                if status >= 500 or status == 408:
                    last = f"HTTP {status}: {resp.text[:200]}"
                else:
                    code, msg = _error_body(resp)
                    raise BinanceAPIError(code, msg, status)
            if attempt < self.max_retries:
                self._sleep(self.backoff_s * 2 ** attempt)
        raise BinanceUnavailable(f"GET {path} failed after {self.max_retries + 1} attempts: {last}")

    def _roll(self, now: float) -> None:
        minute = int(now // 60)
        if minute != self._minute:
            self._minute, self._used_weight = minute, 0

    def _acquire(self, path: str, weight: int, window: str | None) -> None:
        """Refuse during a ban or back-off; wait briefly (or refuse) when a budget is spent; then count."""
        with self._lock:
            now = self._clock()
            if now < self._banned_until:
                until = datetime.fromtimestamp(self._banned_until, UTC)
                raise BinanceBanned(f"GET {path} refused: IP banned by Binance until {until.isoformat()}", until)
            if now < self._backoff_until:
                wait = self._backoff_until - now
                raise BinanceRateLimited(f"GET {path} refused: backing off after a 429 for {wait:.0f} s more", wait)
            self._roll(now)
            wait = 0.0 if self._used_weight + weight <= self.limits.weight_per_min else (self._minute + 1) * 60 - now
            if window:
                wait = max(wait, self._windows[window].wait_s(now))
            if wait > 0:
                if wait > self.limits.max_wait_s:
                    raise BinanceBudgetExceeded(
                        f"GET {path} refused locally: budget spent (weight {self._used_weight}/"
                        f"{self.limits.weight_per_min} per min, {window or 'no'} window); free in {wait:.1f} s", wait)
                self._sleep(wait)
                now = self._clock()
                self._roll(now)
            self._used_weight += weight
            if window:
                self._windows[window].sent.append(now)

    def _note_weight(self, resp: requests.Response) -> None:
        raw = resp.headers.get("X-MBX-USED-WEIGHT-1M")
        if raw is None:
            return
        try:
            used = int(raw)
        except ValueError:
            return   # a bad header must not hide the data; the local count still holds
        with self._lock:
            self.server_used_weight_1m = used
            self._roll(self._clock())
            self._used_weight = max(self._used_weight, used)

    def _back_off(self, resp: requests.Response, path: str) -> BinanceRateLimited:
        wait = retry_after_s(resp) or self.limits.default_retry_after_s
        with self._lock:
            self._backoff_until = max(self._backoff_until, self._clock() + wait)
        code, msg = _error_body(resp)
        return BinanceRateLimited(f"GET {path}: HTTP {resp.status_code} ({code}: {msg}); backing off {wait:.0f} s",
                                  wait)

    def _ban(self, resp: requests.Response, path: str) -> BinanceBanned:
        code, msg = _error_body(resp)
        now = self._clock()
        stated = re.search(r"banned until (\d{12,14})", msg or "")
        until = (int(stated.group(1)) / 1000 if stated
                 else now + (retry_after_s(resp) or self.limits.default_ban_s))
        with self._lock:
            self._banned_until = max(self._banned_until, until, now + 1)
        until_dt = datetime.fromtimestamp(self._banned_until, UTC)
        return BinanceBanned(f"GET {path}: HTTP 418 IP ban ({code}: {msg}); all calls refused until "
                             f"{until_dt.isoformat()}", until_dt)


# --------------------------------------------------------------------------- parsing helpers
def _funding(r: Any, where: str) -> FundingRate:
    return FundingRate(symbol=_str(r, "symbol", where), rate=_dec(r, "fundingRate", where),
                       funding_time=_ms(r, "fundingTime", where),
                       mark_price=_dec(r, "markPrice", where, optional=True))


def _oi_point(r: Any, where: str) -> OpenInterestPoint:
    return OpenInterestPoint(symbol=_str(r, "symbol", where), sum_open_interest=_dec(r, "sumOpenInterest", where),
                             sum_open_interest_value=_dec(r, "sumOpenInterestValue", where),
                             timestamp=_ms(r, "timestamp", where))


def binance_symbol(symbol: str) -> str:
    """Return ``symbol`` if it looks like a Binance symbol (``BTCUSDT``), else raise ValueError."""
    if not isinstance(symbol, str) or not _SYMBOL_RE.match(symbol):
        raise ValueError(f"symbol must be a Binance symbol such as 'BTCUSDT', got {symbol!r}")
    return symbol


def _limit(limit: int, maximum: int) -> int:
    if not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise ValueError(f"limit must be an int in [1, {maximum}], got {limit!r}")
    return limit


def _range(start: datetime | None, end: datetime | None) -> dict[str, int]:
    out = {}
    for name, value in (("startTime", start), ("endTime", end)):
        if value is not None:
            out[name] = int(require_utc(value, name.replace("Time", "")).timestamp() * 1000)
    if start is not None and end is not None and start > end:
        raise ValueError(f"start {start.isoformat()} is after end {end.isoformat()}")
    return out


def _json(resp: requests.Response, path: str) -> Any:
    try:
        data = resp.json()
    except ValueError:   # requests.JSONDecodeError is a ValueError
        raise BinanceDataError(f"GET {path}: body is not JSON: {resp.text[:120]!r}", field="body") from None
    if isinstance(data, dict) and "code" in data and "msg" in data and data.get("code") not in (0, 200):
        raise BinanceAPIError(data.get("code"), str(data.get("msg")), resp.status_code)
    return data


def _error_body(resp: requests.Response) -> tuple[int | None, str]:
    try:
        data = resp.json()
        return data.get("code"), str(data.get("msg", ""))
    except (ValueError, AttributeError):
        return None, resp.text[:200]


def _rows(data: Any, where: str) -> list:
    if not isinstance(data, list):
        raise BinanceDataError(f"{where}: expected a JSON array, got {type(data).__name__}", field=where)
    return data


def _field(row: Any, name: str, where: str) -> Any:
    if not isinstance(row, dict):
        raise BinanceDataError(f"{where}: expected a JSON object, got {type(row).__name__}", field=where)
    if name not in row:
        raise BinanceDataError(f"{where}: missing field '{name}'", field=name)
    return row[name]


def _str(row: Any, name: str, where: str) -> str:
    value = _field(row, name, where)
    if not isinstance(value, str) or not value:
        raise BinanceDataError(f"{where}: field '{name}' must be a non-empty string, got {value!r}", field=name)
    return value


def _dec(row: Any, name: str, where: str, optional: bool = False) -> Decimal | None:
    raw = _field(row, name, where)
    if optional and raw in ("", None):
        return None
    try:
        if isinstance(raw, bool):
            raise InvalidOperation
        value = Decimal(str(raw))
    except InvalidOperation:
        raise BinanceDataError(f"{where}: field '{name}' is not a decimal: {raw!r}", field=name) from None
    if not value.is_finite() or not math.isfinite(float(value)):   # 1e400 is a finite Decimal, an inf float
        raise BinanceDataError(f"{where}: field '{name}' is not finite: {raw!r}", field=name)
    return value


def _ms(row: Any, name: str, where: str) -> datetime:
    """Epoch milliseconds, as a number or a numeric string (futures/data doc examples), to UTC."""
    raw = _field(row, name, where)
    try:
        if isinstance(raw, bool):
            raise InvalidOperation
        ms = Decimal(str(raw))
        if not ms.is_finite() or ms != ms.to_integral_value() or ms <= 0:
            raise InvalidOperation
    except InvalidOperation:
        raise BinanceDataError(f"{where}: field '{name}' is not epoch milliseconds: {raw!r}", field=name) from None
    try:
        return _EPOCH + timedelta(milliseconds=int(ms))
    except OverflowError:   # e.g. 1e20: past what a datetime can hold (year 9999)
        raise BinanceDataError(f"{where}: field '{name}' is out of range for a time: {raw!r}", field=name) from None
