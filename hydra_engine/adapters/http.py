"""What the live adapters share: secret redaction, one family of typed errors, and a polling EventFeed base.

Why a base class: every live feed has the same duty towards the engine (``EventFeed``): poll no more
often than configured, never raise a source failure into the caller, keep the events it already had,
back off after failures (longer when the source says how long), and say what is wrong through
``health``. The adapters only write ``_poll`` (fetch and turn records into events) and raise the typed
errors below; the base turns those into back-off and health.

Secrets: FRED and CryptoPanic take their key in the query string, and ``requests`` puts the full URL in
its exception texts, so every message built here from a URL or an exception passes :func:`redact`.
"""
from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable

import requests

from hydra_engine.domain import UTC, require_utc
from hydra_engine.events import Event, visible

log = logging.getLogger(__name__)

REDACTED = "REDACTED"
# query parameters that carry credentials in the APIs we call (FRED api_key, CryptoPanic auth_token, ...)
_SECRET_PARAM = re.compile(r"(?i)\b(api_key|apikey|auth_token|access_token|token|key)=([^&\s#\"'<>]+)")


def redact(text: object, secrets: Iterable[str | None] = ()) -> str:
    """``text`` as a string with every credential query value and every given secret replaced."""
    out = _SECRET_PARAM.sub(lambda m: f"{m.group(1)}={REDACTED}", str(text))
    for secret in secrets:
        if secret:
            out = out.replace(secret, REDACTED)
    return out


def utc_now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- errors
class AdapterError(Exception):
    """Base of every error a live adapter raises. ``endpoint`` names what was called (never a URL with
    its query string, so no key can ride along)."""

    def __init__(self, endpoint: str, message: str):
        super().__init__(f"{endpoint}: {message}")
        self.endpoint = endpoint


class AuthError(AdapterError):
    """The credential is missing, wrong or not allowed (FRED 400 bad api_key, 401, a 403 that is no limit)."""


class RequestError(AdapterError):
    """The source rejected the request itself (a bad parameter, a wrong path); retrying will not help."""


class RateLimited(AdapterError):
    """The source throttled us; nothing may be sent before ``until`` (UTC)."""

    def __init__(self, endpoint: str, message: str, until: datetime):
        super().__init__(endpoint, f"{message}; no request before {until.isoformat()}")
        self.until = until


class Unavailable(AdapterError):
    """Network failure or 5xx after the bounded retries."""


class DataError(AdapterError):
    """The body breaks the contract; ``field`` names the missing or malformed field."""

    def __init__(self, endpoint: str, message: str, field: str):
        super().__init__(endpoint, message)
        self.field = field


class ProviderError(AdapterError):
    """The source reported an error inside a successful (HTTP 200) body (CryptoCompare, CryptoPanic)."""

    def __init__(self, endpoint: str, message: str, code: object = None):
        super().__init__(endpoint, message)
        self.code = code


# --------------------------------------------------------------------------- transport
def get_with_retries(session: requests.Session, url: str, *, endpoint: str, params: dict | None = None,
                     headers: dict | None = None, timeout: tuple[float, float] = (3.05, 10.0),
                     max_retries: int = 2, backoff_s: float = 1.0, sleep: Callable[[float], None] = time.sleep,
                     secrets: Iterable[str | None] = ()) -> requests.Response:
    """GET, retrying timeouts, connection errors and 5xx a bounded number of times with exponential
    back-off (injected ``sleep``); any other status is returned for the caller to type. Failures raise
    :class:`Unavailable` with the URL and the exception text redacted."""
    last = "no attempt"
    for attempt in range(max_retries + 1):
        try:
            resp = session.get(url, params=params, headers=headers, timeout=timeout)
        except (requests.Timeout, requests.ConnectionError) as exc:
            last = redact(f"{type(exc).__name__}: {exc}", secrets)
        except requests.RequestException as exc:
            raise Unavailable(endpoint, redact(f"{type(exc).__name__}: {exc}", secrets)) from None
        else:
            if resp.status_code < 500:
                return resp
            last = f"HTTP {resp.status_code}: {redact(resp.text[:200], secrets)}"
        if attempt < max_retries:
            sleep(backoff_s * 2 ** attempt)
    raise Unavailable(endpoint, f"failed after {max_retries + 1} attempts: {last}")


def json_body(resp: requests.Response, endpoint: str, secrets: Iterable[str | None] = ()) -> Any:
    """The parsed JSON body, or :class:`DataError` (field ``body``) with a redacted excerpt."""
    try:
        return resp.json()
    except ValueError:   # requests.JSONDecodeError is a ValueError
        excerpt = redact(resp.text[:120], secrets)
        raise DataError(endpoint, f"HTTP {resp.status_code} body is not JSON: {excerpt!r}", field="body") from None


def parse_utc(value: object, endpoint: str, field: str) -> datetime:
    """An ISO-8601 time with a ``Z`` or an offset, as a UTC datetime; naive or malformed is a DataError."""
    if not isinstance(value, str):
        raise DataError(endpoint, f"field '{field}' must be an ISO-8601 string, got {value!r}", field=field)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise DataError(endpoint, f"field '{field}' is not an ISO-8601 time: {value!r}", field=field) from None
    if parsed.tzinfo is None:
        raise DataError(endpoint, f"field '{field}' has no timezone: {value!r}", field=field)
    return parsed.astimezone(UTC)


# --------------------------------------------------------------------------- polling feed
class PollingFeed:
    """An :class:`~hydra_engine.events.EventFeed` that refreshes from its source inside ``events(now)``.

    * polls at most every ``poll_interval_s`` by the injected ``clock`` (the source's time, not the
      replayed ``now``: a live feed learns things at wall-clock time);
    * after a failure waits ``backoff_s * 2**(n-1)`` (capped by ``max_backoff_s``) or until the time a
      :class:`RateLimited` names, whichever is later -- so a dead source is never hammered;
    * events are keyed by :meth:`_key`; the first sighting wins, so a later poll never moves
      ``known_at`` forward.
    """

    name = "polling"
    kinds: tuple[str, ...] = ()

    def __init__(self, *, poll_interval_s: float, clock: Callable[[], datetime] = utc_now,
                 backoff_s: float = 60.0, max_backoff_s: float = 3600.0, stale_after_s: float | None = None,
                 secrets: Iterable[str | None] = ()):
        if poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s!r}")
        self.poll_interval = timedelta(seconds=poll_interval_s)
        self.backoff = timedelta(seconds=backoff_s)
        self.max_backoff = timedelta(seconds=max_backoff_s)
        self.stale_after = timedelta(seconds=stale_after_s if stale_after_s is not None else 3 * poll_interval_s)
        self._clock = clock
        self._secrets = tuple(s for s in secrets if s)
        self._events: dict[tuple, Event] = {}
        self._next_poll_at: datetime | None = None
        self._last_ok: datetime | None = None
        self._last_error: str | None = None
        self._failures = 0
        self.polls = 0   # polls attempted (refused ones not counted): tests and health read it

    # ------------------------------------------------------------------ EventFeed
    def events(self, now: datetime) -> list[Event]:
        require_utc(now, f"{self.name}.events(now)")
        self.refresh()
        return visible(self._events.values(), now)

    def health(self, now: datetime) -> tuple[bool, str]:
        require_utc(now, f"{self.name}.health(now)")
        n = len(self._events)
        if self._last_error is not None:
            wait = f"; next poll not before {self._next_poll_at.isoformat()}" if self._next_poll_at else ""
            return False, f"{self.name}: {self._last_error} ({self._failures} failed poll(s), keeping {n} events{wait})"
        if self._last_ok is None:
            return False, f"{self.name}: not polled yet"
        if now - self._last_ok > self.stale_after:
            return False, f"{self.name}: stale, last good poll {self._last_ok.isoformat()} ({n} events)"
        return True, f"{self.name}: ok, last poll {self._last_ok.isoformat()}, {n} events"

    # ------------------------------------------------------------------ polling
    def refresh(self) -> bool:
        """Poll if due; return whether a poll succeeded. Never raises for a source failure."""
        t = require_utc(self._clock(), f"{self.name} clock")
        if self._next_poll_at is not None and t < self._next_poll_at:
            return False
        self.polls += 1
        try:
            new = list(self._poll(t))
        except Exception as exc:   # noqa: BLE001 -- the contract: a source failure never reaches the engine
            self._fail(exc, t)
            return False
        self._merge(new, t)
        self._last_ok, self._last_error, self._failures = t, None, 0
        self._next_poll_at = t + self.poll_interval
        return True

    def _fail(self, exc: Exception, t: datetime) -> None:
        self._failures += 1
        until = t + min(self.backoff * 2 ** (self._failures - 1), self.max_backoff)
        if isinstance(exc, RateLimited):
            until = max(until, exc.until)   # the source's word beats our guess, even past max_backoff
        kind = type(exc).__name__ if isinstance(exc, AdapterError) else f"unexpected {type(exc).__name__}"
        self._last_error = redact(f"{kind}: {exc}", self._secrets)
        self._next_poll_at = until
        log.warning("%s poll failed (%s); skipping polls until %s", self.name, self._last_error, until.isoformat())

    def _merge(self, new: list[Event], poll_time: datetime) -> None:
        for event in new:
            self._events.setdefault(self._key(event), event)

    def _key(self, event: Event) -> tuple:
        return (event.kind, event.subject, event.happened_at)

    def _poll(self, poll_time: datetime) -> Iterable[Event]:   # pragma: no cover - abstract
        raise NotImplementedError


def retry_after_s(resp: requests.Response) -> float | None:
    """The seconds a ``Retry-After`` header asks for (a positive number), else None."""
    try:
        value = float(resp.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return value if value > 0 else None
