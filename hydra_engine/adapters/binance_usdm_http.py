"""Binance USD-M signed REST transport for :mod:`.binance_usdm`: keys, the HMAC signature, the
error envelope and its HYDRA error classes, clock-skew (-1021) resync and the 429/418 back-off.
(Split from the adapter to keep each module under the project's 500-line rule.)
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Mapping
from urllib.parse import urlencode

import requests
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..domain import UTC, Order, OrderStatus, OrderType, require_utc
from ..ports import (AuthError, BrokerError, BrokerPosition, InsufficientBuyingPower, InvalidOrder, OrderNotFound,
                     RateLimited)
from ..perp.records import LeverageNotAllowed, ReduceOnlyRejected

log = logging.getLogger(__name__)

DEMO_URL = "https://demo-fapi.binance.com"
LIVE_URL = "https://fapi.binance.com"
CLIENT_ID = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")
RECV_WINDOW_MS = 5000
LIQUIDATION_PREFIXES = ("autoclose-", "adl_autoclose")   # Binance's ids for its own closes
CONDITIONAL = {OrderType.STOP: "STOP_MARKET", OrderType.STOP_LIMIT: "STOP", OrderType.TRAILING_STOP: "TRAILING_STOP_MARKET"}
ORDER_TYPES = frozenset({OrderType.MARKET, OrderType.LIMIT, *CONDITIONAL})

_STATUS = {"NEW": OrderStatus.ACCEPTED, "PARTIALLY_FILLED": OrderStatus.PARTIALLY_FILLED, "FILLED": OrderStatus.FILLED,
           "CANCELED": OrderStatus.CANCELED, "EXPIRED": OrderStatus.EXPIRED, "EXPIRED_IN_MATCH": OrderStatus.EXPIRED,
           "REJECTED": OrderStatus.REJECTED,
           # algo orders (ALGO_UPDATE statuses): triggered ones live on as a normal order
           "TRIGGERING": OrderStatus.ACCEPTED, "TRIGGERED": OrderStatus.FILLED, "FINISHED": OrderStatus.FILLED}


class BinanceKeys(BaseSettings):
    """Binance USD-M credentials (the demo account's keys come from demo.binance.com's API management)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("BINANCE_API_KEY"))
    api_secret: SecretStr | None = Field(None, validation_alias=AliasChoices("BINANCE_API_SECRET"))

    def missing(self) -> list[str]:
        return [n for n, v in (("BINANCE_API_KEY", self.api_key), ("BINANCE_API_SECRET", self.api_secret))
                if v is None or not v.get_secret_value().strip()]


class BrokerUnavailable(BrokerError):
    retryable = True
    user_hint = "Binance is not answering (timeout or server error); HYDRA tries again next cycle"


class _Unknown(Exception):
    """A request whose outcome Binance did not say (503, 5xx, timeout, dropped connection)."""


def binance_client_id(hydra_id: str) -> str:
    """The Binance ``newClientOrderId`` for a HYDRA client order id: deterministic, 36 characters."""
    return "hy-" + hashlib.sha256(hydra_id.encode()).hexdigest()[:33]


def sign(secret: str, payload: str) -> str:
    """hex HMAC-SHA256 of ``totalParams`` (NOTES-2 §4.4)."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def _dec(value: Any) -> Decimal:
    return Decimal(str(value)) if value not in (None, "") else Decimal(0)


def _ms(dt: datetime) -> int:
    return int(require_utc(dt, "time").timestamp() * 1000)


def _from_ms(ms: Any) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, UTC)


def _plain(d: Decimal) -> str:
    return format(d.normalize(), "f")


@dataclass
class UsdmReconciliation:
    """What the account holds and works, read back (start-up and every cycle)."""

    positions: dict[str, BrokerPosition] = field(default_factory=dict)
    open_orders: list[Order] = field(default_factory=list)
    foreign_orders: list[str] = field(default_factory=list)     # working orders whose ids HYDRA did not send
    resolved: dict[str, str] = field(default_factory=dict)      # HYDRA id -> status learnt by query
    problems: list[str] = field(default_factory=list)


class UsdmTransport:
    """Signed requests to one Binance USD-M base URL (the adapter's plumbing)."""

    # ------------------------------------------------------------------ transport
    def _redact(self, text: str) -> str:
        for s in (self._key, self._secret):
            if s and len(s) >= 4:
                text = text.replace(s, "***")
        return text

    def _now(self) -> datetime:
        return require_utc(self._clock(), "clock")

    def sync_time(self) -> int:
        """Offset (ms) of Binance's clock from ours, from ``GET /fapi/v1/time``."""
        before = self._now()
        body = self._request("GET", "/fapi/v1/time", {}, signed=False)
        after = self._now()
        local = (_ms(before) + _ms(after)) // 2
        self._offset_ms = int(body["serverTime"]) - local
        return self._offset_ms

    def _request(self, method: str, path: str, params: Mapping[str, Any], *, signed: bool = True,
                 what: str = "", symbol: str | None = None, coid: str | None = None, _skew_retry: bool = True) -> Any:
        what = what or f"{method} {path}"
        now = self._now()
        if self._blocked_until is not None and now < self._blocked_until:
            raise RateLimited(f"{what}: not sent, Binance asked HYDRA to back off until "
                              f"{self._blocked_until.isoformat()}", symbol=symbol, client_order_id=coid)
        query = {k: v for k, v in params.items() if v is not None}
        headers = {"X-MBX-APIKEY": self._key}
        if signed:
            query["recvWindow"] = RECV_WINDOW_MS
            query["timestamp"] = _ms(now) + self._offset_ms
        payload = urlencode(query)
        if signed:
            payload += "&signature=" + sign(self._secret, payload)
        url = self.base_url + path
        try:
            if method == "POST":   # form body, as Binance documents (signature last)
                headers["Content-Type"] = "application/x-www-form-urlencoded"
                resp = self._session.request(method, url, data=payload, headers=headers, timeout=self.timeout_s)
            else:
                resp = self._session.request(method, url + ("?" + payload if payload else ""), headers=headers,
                                             timeout=self.timeout_s)
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise _Unknown(f"{what}: {type(exc).__name__}") from None
        except requests.RequestException as exc:
            raise BrokerUnavailable(self._redact(f"{what}: {type(exc).__name__}: {exc}"), symbol=symbol,
                                    client_order_id=coid) from None
        status = resp.status_code
        if status < 300:
            try:
                return resp.json()
            except ValueError:
                raise BrokerUnavailable(f"{what}: HTTP {status} with a body that is not JSON", symbol=symbol,
                                        client_order_id=coid) from None
        code, msg = _error(resp)
        text = self._redact(f"{what}: Binance HTTP {status} code {code}: {msg}")
        if status in (429, 418):
            self._back_off(resp, status, msg, now)
            raise RateLimited(f"{text}; no call until {self._blocked_until.isoformat()}", symbol=symbol,
                              client_order_id=coid)
        if status == 503 or status >= 500 or status == 408:
            raise _Unknown(text)
        if code == -1021 and signed and _skew_retry:
            log.warning("%s: clock skew; re-reading Binance's time and sending once more", text)
            self.sync_time()
            return self._request(method, path, params, signed=signed, what=what, symbol=symbol, coid=coid,
                                 _skew_retry=False)
        raise _classify(status, code)(text, symbol=symbol, client_order_id=coid)

    def _back_off(self, resp: requests.Response, status: int, msg: str, now: datetime) -> None:
        self.rate_limited += 1
        stated = re.search(r"banned until (\d{12,14})", msg or "")
        if stated:
            until = _from_ms(stated.group(1))
        else:
            try:
                wait = float(resp.headers.get("Retry-After", ""))
            except ValueError:
                wait = 120.0 if status == 418 else 60.0
            until = now + timedelta(seconds=max(wait, 1.0))
        until = max(until, now + timedelta(seconds=1))
        self._blocked_until = max(until, self._blocked_until or until)
        log.warning("Binance HTTP %s: no call until %s", status, self._blocked_until.isoformat())

    def _get(self, path: str, params: Mapping[str, Any], **kw) -> Any:
        try:
            return self._request("GET", path, params, **kw)
        except _Unknown as exc:
            raise BrokerUnavailable(str(exc), symbol=kw.get("symbol"), client_order_id=kw.get("coid")) from None


    def _post(self, path: str, params: Mapping[str, Any], **kw) -> Any:
        try:
            return self._request("POST", path, params, **kw)
        except _Unknown as exc:
            raise BrokerUnavailable(str(exc), symbol=kw.get("symbol")) from None


    def _delete(self, path: str, params: Mapping[str, Any], **kw) -> Any:
        try:
            return self._request("DELETE", path, params, **kw)
        except _Unknown as exc:
            raise BrokerUnavailable(str(exc), symbol=kw.get("symbol"), client_order_id=kw.get("coid")) from None



def _error(resp: requests.Response) -> tuple[int | None, str]:
    try:
        body = resp.json()
        return (int(body["code"]) if "code" in body else None), str(body.get("msg", ""))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None, " ".join(resp.text.split())[:300] or "(empty body)"


def _classify(status: int, code: int | None) -> type[BrokerError]:
    if code in (-1022, -2014, -2015) or status in (401, 403):
        return AuthError
    if code == -2019:
        return InsufficientBuyingPower
    if code == -2022:
        return ReduceOnlyRejected
    if code in (-2011, -2013) or status == 404:
        return OrderNotFound
    if code == -4028:
        return LeverageNotAllowed
    if status == 400:
        return InvalidOrder
    return BrokerError
