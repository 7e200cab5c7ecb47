"""One rate limiter in front of every Alpaca REST call.

Alpaca allows 200 trading requests per minute per account (contracts NOTES §1.4); HYDRA budgets 150
so a burst of cancels during an exit never meets a 429. The limiter is a token bucket that also
believes the server: ``X-RateLimit-Remaining`` caps the local tokens and a zero remaining holds all
calls until ``X-RateLimit-Reset`` (unix seconds). On 429 and (for idempotent calls) 5xx, timeouts and
connection errors it backs off exponentially with full jitter; alpaca-py's own fixed 3 x 3 s retry is
switched off (NOTES §1.3) so there is exactly one retry policy.

A POST or DELETE is retried only on 429, which means "not processed": after a 5xx or a timeout
the order may exist, and only the broker adapter may decide, by looking it up by client_order_id.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Callable, TypeVar

import requests
from alpaca.common.exceptions import APIError

log = logging.getLogger(__name__)
T = TypeVar("T")

# DELETE is not here on purpose: DELETE /v2/positions places liquidation orders, and repeating it
# after a 5xx could sell the same shares twice.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _status(exc: BaseException) -> int | None:
    return exc.status_code if isinstance(exc, APIError) else None


def is_retryable(exc: BaseException, method: str) -> bool:
    """429 always (the request was refused unprocessed); 5xx, timeouts and connection errors only
    for reads, because a POST or DELETE may have been executed before the failure."""
    status = _status(exc)
    if status == 429:
        return True
    if method.upper() not in IDEMPOTENT_METHODS:
        return False
    if status is not None:
        return status >= 500
    return isinstance(exc, (requests.ConnectionError, requests.Timeout))


class RateLimiter:
    """Token bucket (``per_minute`` tokens, refilled continuously) plus server-driven holds and
    jittered exponential backoff. Clocks, sleep and RNG are injected so tests run instantly."""

    def __init__(self, per_minute: int = 150, *, burst: int | None = None, max_attempts: int = 5,
                 base_delay_s: float = 0.5, max_delay_s: float = 30.0,
                 monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None):
        if per_minute <= 0 or max_attempts < 1:
            raise ValueError(f"per_minute must be > 0 and max_attempts >= 1, got {per_minute}, {max_attempts}")
        self.rate_per_s = per_minute / 60.0
        self.capacity = float(burst if burst is not None else max(1, per_minute // 4))
        self.max_attempts = max_attempts
        self.base_delay_s, self.max_delay_s = base_delay_s, max_delay_s
        self._monotonic, self._wall, self._sleep = monotonic, wall, sleep
        self._rng = rng or random.Random()
        self._tokens = self.capacity
        self._last = monotonic()
        self._hold_until_wall = 0.0          # unix seconds; from X-RateLimit-Reset when remaining hit 0
        self._lock = threading.Lock()
        self.calls = 0                        # HTTP attempts let through (for status and tests)
        self.slept_s = 0.0
        self.retries = 0                      # calls retried after a retryable failure (issue #16: shown)
        self.rate_limited = 0                 # 429 answers seen

    # ------------------------------------------------------------------ bucket
    def _pause(self, seconds: float) -> None:
        if seconds > 0:
            self.slept_s += seconds
            self._sleep(seconds)

    def acquire(self) -> None:
        """Block until one request may go out."""
        with self._lock:
            self._pause(min(self._hold_until_wall - self._wall(), 61.0))   # a reset is at most a minute away
            while True:
                now = self._monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate_per_s)
                self._last = now
                if self._tokens >= 1.0 - 1e-9:           # float refill may land a hair below 1
                    self._tokens = max(0.0, self._tokens - 1.0)
                    self.calls += 1
                    return
                self._pause(max(0.001, (1.0 - self._tokens) / self.rate_per_s))

    def observe(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        """requests response hook: sync with ``X-RateLimit-Remaining`` / ``X-RateLimit-Reset``."""
        remaining, reset = (response.headers.get(h) for h in ("X-RateLimit-Remaining", "X-RateLimit-Reset"))
        try:
            remaining_n = int(remaining) if remaining is not None else None
            reset_s = float(reset) if reset is not None else None
        except ValueError:
            log.warning("unparseable rate-limit headers remaining=%r reset=%r", remaining, reset)
            return
        with self._lock:
            if remaining_n is not None:
                self._tokens = min(self._tokens, float(remaining_n))
                if remaining_n <= 0 and reset_s is not None:
                    self._hold_until_wall = max(self._hold_until_wall, reset_s)
            if response.status_code == 429:
                self.rate_limited += 1
            if response.status_code == 429 and reset_s is not None:
                self._hold_until_wall = max(self._hold_until_wall, reset_s)

    def backoff_s(self, attempt: int) -> float:
        """Full jitter: uniform(0, min(max_delay, base * 2**attempt)), attempt counted from 0."""
        return self._rng.uniform(0.0, min(self.max_delay_s, self.base_delay_s * 2 ** attempt))

    # ------------------------------------------------------------------ calls
    def call(self, fn: Callable[[], T], *, method: str = "GET") -> T:
        """Run ``fn`` under the budget, retrying retryable failures at most ``max_attempts`` times in all."""
        for attempt in range(self.max_attempts):
            self.acquire()
            try:
                return fn()
            except (APIError, requests.RequestException) as exc:
                if attempt + 1 >= self.max_attempts or not is_retryable(exc, method):
                    raise
                delay = self.backoff_s(attempt)
                self.retries += 1
                log.info("%s failed (%s); retry %d/%d in %.2fs", method, _status(exc) or type(exc).__name__,
                         attempt + 1, self.max_attempts - 1, delay)
                self._pause(delay)
        raise AssertionError("unreachable")  # pragma: no cover


class _TimeoutSession(requests.Session):
    """alpaca-py calls ``session.request`` without a timeout (it could hang forever); add one."""

    def __init__(self, timeout_s: float):
        super().__init__()
        self.timeout_s = timeout_s

    def request(self, method, url, **kwargs):  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout_s)
        return super().request(method, url, **kwargs)


def install(client: Any, limiter: RateLimiter, *, timeout_s: float = 10.0) -> Any:
    """Put ``limiter`` in front of every request an alpaca-py REST client makes.

    Replaces the client's session (same behaviour plus a timeout and the header hook), disables the
    SDK's built-in retry (private attributes ``_retry``, ``_retry_wait``, ``_retry_codes``, NOTES §1.3)
    and wraps ``_request`` so that each HTTP attempt first takes a token."""
    session = _TimeoutSession(timeout_s)
    session.hooks["response"].append(limiter.observe)
    client._session = session
    client._retry, client._retry_wait, client._retry_codes = 0, 0, []
    inner = client._request

    def _request(method: str, path: str, data=None, base_url=None, api_version=None):
        return limiter.call(lambda: inner(method, path, data, base_url, api_version), method=method)

    client._request = _request
    return client
