"""CryptoCompare and CryptoPanic clients and feeds against the contract examples
(shared/contracts/news/examples), replayed with ``responses``; and the replay reader over
shared/data/news with its known-at rules (a day-stamped headline is known at the END of its day)."""
from __future__ import annotations

import copy
import json
import logging
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
import responses
from responses import matchers

from hydra_engine.adapters.http import AuthError, ProviderError, RateLimited
from hydra_engine.adapters.news import (CryptoCompareClient, CryptoPanicClient, NewsDeduper, NewsFeed,
                                        NewsReplayFeed, canonical_url, end_of_day)

UTC = timezone.utc
SHARED = Path(__file__).resolve().parents[2] / "shared"
EXAMPLES = SHARED / "contracts" / "news" / "examples"
NEWS_DATA = SHARED / "data" / "news"
CC_URL = "https://min-api.cryptocompare.com/data/v2/news/"
CP_URL = "https://cryptopanic.com/api/free/v1/posts/"
TOKEN = "cp0123456789abcdef0123456789abcdef01234567"
CC_KEY = "cc-key-0123456789abcdef"
T0 = datetime(2025, 2, 26, 12, 0, tzinfo=UTC)


def example(name: str):
    path = EXAMPLES / name
    if not path.is_file():
        pytest.skip(f"contract example {path} not found (shared/contracts is absent)")
    return json.loads(path.read_text())


class Clock:
    def __init__(self, t: datetime = T0):
        self.t = t

    def __call__(self) -> datetime:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def rsps():
    with responses.RequestsMock() as mock:
        yield mock


def cc(clock, key=None):
    return CryptoCompareClient(requests.Session(), key, clock=clock, sleep=lambda s: None)


def cp(clock, token=TOKEN, **kw):
    return CryptoPanicClient(requests.Session(), token, clock=clock, sleep=lambda s: None, **kw)


# --------------------------------------------------------------------------- CryptoCompare
def test_cryptocompare_items_normalised(clock, rsps):
    rsps.get(CC_URL, json=example("cryptocompare.news_v2.200.json"),
             match=[matchers.query_param_matcher({"lang": "EN"})])
    items = cc(clock).fetch()
    assert len(items) == 8
    first = items[0]
    assert (first.provider, first.id, first.source) == ("cryptocompare", "2688074", "CoinDesk")
    assert first.published_at == datetime.fromtimestamp(1565003112, UTC)
    assert first.categories == ("BTC", "Market", "Trading")     # split on '|'
    assert first.symbols == ("BTC/USD",)                         # topics are not symbols
    assert all("&#" not in i.summary for i in items)             # HTML entities unescaped


def test_cryptocompare_events_one_per_symbol_or_market(clock, rsps):
    rsps.get(CC_URL, json=example("cryptocompare.news_v2.50items.200.json"))
    events = NewsFeed(cc(clock), clock=clock).events(T0)
    subjects = {e.subject for e in events}
    assert {"BTC/USD", "ETH/USD", "XRP", "market"} <= subjects   # unknown codes kept raw
    assert "ICO" not in subjects and "Market" not in subjects
    e = events[0]
    assert e.kind == "news" and e.happened_at == e.known_at and e.source == "cryptocompare"
    assert e.payload["provider"] == "cryptocompare" and isinstance(e.payload["id"], str)


@pytest.mark.parametrize("name, error, text", [
    ("cryptocompare.news_no_trailing_slash.error.json", ProviderError, "Path does not exist"),
    ("cryptocompare.error.rate_limit.json", RateLimited, "over your rate limit"),
])
def test_cryptocompare_error_inside_200_body_is_typed(clock, rsps, name, error, text):
    rsps.get(CC_URL, json=example(name))   # HTTP 200
    with pytest.raises(error, match=text) as info:
        cc(clock).fetch()
    assert "HTTP 200 body" in str(info.value)
    feed = NewsFeed(cc(clock), clock=clock)
    assert feed.events(T0) == []
    ok, message = feed.health(T0)
    assert not ok and error.__name__ in message


def test_cryptocompare_key_goes_in_a_header_not_the_url(clock, rsps, caplog):
    rsps.get(CC_URL, json=example("cryptocompare.error.rate_limit.json"),
             match=[matchers.header_matcher({"authorization": f"Apikey {CC_KEY}"})])
    with caplog.at_level(logging.DEBUG):
        NewsFeed(cc(clock, CC_KEY), clock=clock).events(T0)
    assert CC_KEY not in rsps.calls[0].request.url
    assert all(CC_KEY not in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- CryptoPanic
def test_cryptopanic_items_normalised(clock, rsps):
    rsps.get(CP_URL, json=example("cryptopanic.posts_free_v1.200.json"),
             match=[matchers.query_param_matcher({"auth_token": TOKEN, "public": "true"})])
    items = cp(clock).fetch()
    assert len(items) == 20 and all(isinstance(i.id, str) for i in items)
    assert items[0].id == "20750357" and items[0].published_at == datetime(2025, 2, 26, 11, 20, 14, tzinfo=UTC)
    assert items[0].symbols == ("EPS",)                   # noisy tag kept raw, not trusted more
    assert items[1].symbols == ()                         # no currencies: no symbol
    assert items[9].symbols == ("TON",)                   # repeated tags collapsed
    assert items[10].symbols[:3] == ("BTC/USD", "ETH/USD", "USDT")


def test_cryptopanic_token_redacted_in_next_logs_and_errors(clock, rsps, caplog):
    body = example("cryptopanic.posts_free_v1.200.json")
    page1 = {**body, "next": f"{CP_URL}?auth_token={TOKEN}&public=true&page=2"}   # the API echoes the token
    rsps.get(CP_URL, json=page1, match=[matchers.query_param_matcher({"auth_token": TOKEN, "public": "true"})])
    rsps.get(CP_URL, status=429, json={"status": "api_error", "info": f"rate limited for {TOKEN}"},
             match=[matchers.query_param_matcher({"auth_token": TOKEN, "public": "true", "page": "2"})])
    client = cp(clock, pages=2)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(RateLimited) as info:
            client.fetch()
        feed = NewsFeed(cp(clock, pages=2), clock=clock)
        feed.events(T0)
    assert client.last_next == f"{CP_URL}?auth_token=REDACTED&public=true&page=2"
    assert TOKEN not in str(info.value) and TOKEN not in feed.health(T0)[1]
    assert "CryptoPanic next page" in caplog.text
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


def test_cryptopanic_connection_error_url_is_redacted(clock, rsps):
    error = requests.ConnectionError(f"Max retries exceeded with url: /api/free/v1/posts/?auth_token={TOKEN}")
    rsps.get(CP_URL, body=error)
    feed = NewsFeed(cp(clock), clock=clock)
    feed.events(T0)
    ok, message = feed.health(T0)
    assert not ok and "auth_token=REDACTED" in message and TOKEN not in message


def test_cryptopanic_api_error_body_and_auth(clock, rsps):
    rsps.get(CP_URL, json={"status": "api_error", "info": "Token not found"})
    with pytest.raises(ProviderError, match="Token not found"):
        cp(clock).fetch()
    rsps.replace(responses.GET, CP_URL, status=401, json={"status": "api_error"})
    with pytest.raises(AuthError, match="HTTP 401"):
        cp(clock).fetch()
    with pytest.raises(AuthError, match="no CryptoPanic auth_token"):
        cp(clock, token=None).fetch()


# --------------------------------------------------------------------------- de-duplication
def test_dedup_across_providers_by_title_and_url(clock, rsps):
    cc_body = example("cryptocompare.news_v2.200.json")
    story = cc_body["Data"][0]
    cp_body = copy.deepcopy(example("cryptopanic.posts_free_v1.200.json"))
    # the same story as CryptoPanic would carry it: its own id and URL, the title in other punctuation/case
    cp_body["results"][3]["title"] = story["title"].upper().replace(" as ", " as, ")
    # and one item linking the same article as CryptoCompare's second item, with tracking parameters
    cp_body["results"][5]["url"] = cc_body["Data"][1]["url"] + "/?utm_source=x#comments"
    rsps.get(CC_URL, json=cc_body)
    rsps.get(CP_URL, json=cp_body)
    shared = NewsDeduper()
    cc_feed = NewsFeed(cc(clock), deduper=shared, clock=clock)
    cp_feed = NewsFeed(cp(clock), deduper=shared, clock=clock)
    cc_events, cp_events = cc_feed.events(T0), cp_feed.events(T0)
    cp_ids = {e.payload["id"] for e in cp_events}
    assert str(cp_body["results"][3]["id"]) not in cp_ids and str(cp_body["results"][5]["id"]) not in cp_ids
    assert len(cp_ids) == 18 and shared.dropped == 2
    assert len({e.payload["id"] for e in cc_events}) == 8


def test_dedup_by_provider_id_and_repoll_adds_nothing(clock, rsps):
    rsps.get(CC_URL, json=example("cryptocompare.news_v2.200.json"))
    feed = NewsFeed(cc(clock), clock=clock, poll_interval_s=60)
    first = feed.events(T0)
    clock.t = T0 + timedelta(minutes=2)
    assert feed.events(clock.t) == first and len(rsps.calls) == 2


def test_canonical_url():
    assert canonical_url("https://WWW.Example.com/a/b/?utm_source=x&id=3&mtm_campaign=API#top") == \
        "https://example.com/a/b?id=3"


# --------------------------------------------------------------------------- replay
def replay(*names):
    paths = [NEWS_DATA / n for n in names]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"shipped news files not found under {NEWS_DATA}")
    return NewsReplayFeed(paths)


def test_end_of_day_rule():
    assert end_of_day(date(2017, 6, 6)) == datetime(2017, 6, 7, 12, 0, tzinfo=UTC)   # anywhere on Earth (UTC-12)


def test_replay_day_stamped_headline_known_at_end_of_its_day():
    feed = replay("cryptocurrencynews_com_bitcoin_titles_2017-06_2019-03.csv")
    title = "A Potential Reason Behind Bitcoin's Surge"   # dated "Jun 6, 2017"
    end = datetime(2017, 6, 7, 12, 0, tzinfo=UTC)
    assert not [e for e in feed.events(end - timedelta(seconds=1)) if e.payload["title"] == title]
    [event] = [e for e in feed.events(end) if e.payload["title"] == title]
    assert event.known_at == event.happened_at == end
    assert event.subject == "BTC/USD" and event.payload["stamp"] == "2017-06-06"
    assert event.payload["stamp_resolution"] == "day"


def test_replay_google_news_day_stamp_ends_at_pacific_midnight():
    feed = replay("googlenews_crypto_headlines_2020-01_2022-04.csv.gz")
    # "2022-04-01 07:00:00+00:00" is midnight in Los Angeles (PDT): known when that day ends there
    events = [e for e in feed.events(datetime(2022, 4, 3, tzinfo=UTC))
              if "19 million coin milestone" in e.payload["title"]]
    assert events and events[0].known_at == datetime(2022, 4, 2, 7, 0, tzinfo=UTC)
    assert events[0].subject == "BTC/USD"


def test_replay_minute_and_second_stamps_known_at_stamp():
    feed = replay("cryptonews_kaggle_subset_2023-12.csv", "crypto_headlines_2024-03_2024-05.csv")
    at = datetime(2023, 12, 19, 6, 40, tzinfo=UTC)   # "2023/12/19 6:40"
    grayscale = [e for e in feed.events(at) if e.payload["title"].startswith("Grayscale CEO Calls")]
    assert grayscale and grayscale[0].known_at == at and grayscale[0].payload["stamp_resolution"] == "minute"
    assert not [e for e in feed.events(at - timedelta(seconds=1)) if e.payload["title"].startswith("Grayscale CEO")]
    later = feed.events(datetime(2024, 3, 5, 17, 4, 11, tzinfo=UTC))
    assert later[-1].payload["title"].startswith("bitcoin: what has caused")
    ok, message = feed.health(T0)
    assert ok and "cryptonews_kaggle_subset_2023-12.csv': 1178" in message   # rows without a title, counted
