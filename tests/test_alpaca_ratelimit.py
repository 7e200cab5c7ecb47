"""The token bucket, server rate-limit headers and jittered backoff (fake time, no HTTP)."""
import random

import pytest
import requests
from alpaca.common.exceptions import APIError

from hydra_engine.brokers.ratelimit import RateLimiter, is_retryable
from tests.alpaca_double import FakeTime


def limiter(fake, **kw):
    return RateLimiter(kw.pop("per_minute", 150), monotonic=fake.monotonic, wall=fake.wall, sleep=fake.sleep,
                       rng=random.Random(1), **kw)


def api_error(status):
    resp = requests.Response()
    resp.status_code = status
    return APIError('{"code": 1, "message": "x"}', requests.HTTPError(response=resp))


def test_budget_of_150_per_minute_is_never_exceeded():
    fake = FakeTime()
    lim = limiter(fake)
    start = fake.t
    for _ in range(300):
        lim.acquire()
    elapsed = fake.t - start
    # 300 calls with a burst of 37 need at least (300 - 37) / 2.5 per second
    assert elapsed >= (300 - lim.capacity) / lim.rate_per_s - 1e-6
    assert elapsed <= (300 - lim.capacity) / lim.rate_per_s + 1.0


def test_server_headers_cap_tokens_and_hold_until_reset():
    fake = FakeTime()
    lim = limiter(fake)
    resp = requests.Response()
    resp.status_code = 200
    resp.headers.update({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(fake.t) + 30)})
    lim.observe(resp)
    before = fake.t
    lim.acquire()
    assert fake.t - before >= 30                     # waited for the reset the server announced


def test_retry_policy_by_method_and_status():
    assert is_retryable(api_error(429), "POST")
    assert not is_retryable(api_error(503), "POST") and not is_retryable(api_error(500), "DELETE")
    assert is_retryable(api_error(503), "GET") and is_retryable(requests.ReadTimeout(), "GET")
    assert not is_retryable(requests.ReadTimeout(), "POST") and not is_retryable(api_error(422), "GET")


def test_backoff_is_bounded_jittered_and_gives_up():
    fake = FakeTime()
    lim = limiter(fake, max_attempts=4, base_delay_s=1.0, max_delay_s=5.0)
    calls = []

    def storm():
        calls.append(fake.t)
        raise api_error(429)
    with pytest.raises(APIError):
        lim.call(storm, method="POST")
    assert len(calls) == 4
    assert len(fake.sleeps) == 3 and all(0 <= s <= min(5.0, 2 ** i) for i, s in enumerate(fake.sleeps))
    assert len(set(fake.sleeps)) == 3                # jitter: not a fixed wait
