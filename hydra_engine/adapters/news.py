"""Crypto news as ``news`` events: CryptoCompare and CryptoPanic live clients, and a replay reader for the
headline files in shared/data/news (issue #22). Contract: shared/contracts/NOTES-2.md section 2.

* One record, :class:`NewsItem`, for every provider: ids are strings, times UTC, summaries HTML-unescaped
  and at most 2,000 characters. Article text is **untrusted** (it may hold instructions for an LLM): it is
  carried as data, never as instructions.
* **Symbols.** ``BTC`` -> ``BTC/USD``, ``ETH`` -> ``ETH/USD``; any other code is kept raw (``XRP``).
  CryptoCompare mixes coins and topics in its pipe-separated ``categories``: upper-case codes are coins,
  except the topic codes in ``_CC_TOPIC_CODES``; the rest (``Market``, ``Trading``) stay categories.
  CryptoPanic's ``currencies`` tags are noisy (NOTES-2 2.6): they are passed on, never trusted more.
  The untagged 2024 replay file (``crypto_headlines_*``) is tagged by the coins its title names as whole
  words (:func:`coins_named`); a headline naming none stays ``market``.
* **De-duplication** (:class:`NewsDeduper`, shareable between feeds): by (provider, id), then by the
  canonical URL (host lower-cased without ``www.``, ``utm_*``/``mtm_*`` parameters, fragment and
  trailing slash dropped), then by the normalised title when it has at least 4 words (shorter ones,
  e.g. "Ai Agents Blockchain", are too generic to prove two stories are one). The first sighting wins.
* **Errors inside HTTP 200 bodies** are typed: CryptoCompare ``Response: "Error"`` / ``Type != 100``
  (``Type 99`` is a rate limit), CryptoPanic ``status: "api_error"``.
* **Secrets.** CryptoPanic's ``auth_token`` is a query parameter and is echoed in ``next``; every URL or
  text that is logged or put in an exception is redacted. CryptoCompare's key goes in a header.
* **Times.** Live: ``happened_at = known_at = published time``. Replay: a headline stamped to the minute
  (or second) is known at its stamp; a **day-stamped** headline is known only at the **end of its day**
  -- in the zone its provenance states (Google News: America/Los_Angeles), else at the end of that date
  anywhere on Earth (UTC-12, i.e. the next day 12:00 UTC), so no zone guess can leak it early.
  Its ``happened_at`` is that same instant (the time inside the day is unknown).
"""
from __future__ import annotations

import csv
import gzip
import html
import logging
import re
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import requests

from hydra_engine.domain import UTC, require_utc
from hydra_engine.events import Event, visible

from .http import (AuthError, DataError, PollingFeed, ProviderError, RateLimited, RequestError, get_with_retries,
                   json_body, parse_utc, redact, utc_now)

log = logging.getLogger(__name__)

HYDRA_SYMBOLS = {"BTC": "BTC/USD", "ETH": "ETH/USD"}
_NAMES = {"bitcoin": "BTC", "ethereum": "ETH"}           # replay files name coins in words
_CC_TOPIC_CODES = frozenset({"ICO"})                     # upper-case CryptoCompare categories that are topics
_TICKER = re.compile(r"^[A-Z0-9]{2,10}$")
SUMMARY_MAX = 2000


@dataclass(frozen=True, slots=True)
class NewsItem:
    provider: str
    id: str
    url: str
    title: str
    summary: str
    published_at: datetime
    source: str
    symbols: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        require_utc(self.published_at, "NewsItem.published_at")


def hydra_symbol(code: str) -> str:
    return HYDRA_SYMBOLS.get(code.strip().upper(), code.strip())


def canonical_url(url: str) -> str:
    parts = urlsplit(url.strip())
    host = parts.netloc.lower().removeprefix("www.")
    query = [(k, v) for k, v in parse_qsl(parts.query) if not k.lower().startswith(("utm_", "mtm_"))]
    return urlunsplit((parts.scheme.lower(), host, parts.path.rstrip("/"), urlencode(query), ""))


def normalised_title(title: str) -> str:
    return " ".join(re.sub(r"[^\w]+", " ", html.unescape(title).lower()).split())


class NewsDeduper:
    """Remembers stories by provider id, canonical URL and normalised title (see the module docstring)."""

    def __init__(self) -> None:
        self._seen: set[tuple] = set()
        self.dropped = 0

    def first_time(self, item: NewsItem) -> bool:
        title = normalised_title(item.title)
        keys = [("id", item.provider, item.id)]
        if item.url:
            keys.append(("url", canonical_url(item.url)))
        if len(title.split()) >= 4:
            keys.append(("title", title))
        if any(k in self._seen for k in keys):
            self.dropped += 1
            return False
        self._seen.update(keys)
        return True


def news_events(item: NewsItem, known_at: datetime | None = None, happened_at: datetime | None = None,
                extra: dict | None = None) -> list[Event]:
    """One ``news`` event per HYDRA symbol the item mentions, or one for ``market`` when it names none."""
    payload = {"provider": item.provider, "id": item.id, "url": item.url, "title": item.title,
               "summary": item.summary, "source": item.source, "symbols": list(item.symbols),
               "categories": list(item.categories), **(extra or {})}
    return [Event(kind="news", subject=s, happened_at=happened_at or item.published_at,
                  known_at=known_at or item.published_at, payload=payload, source=item.provider)
            for s in (item.symbols or ("market",))]


_COIN_WORDS = {"bitcoin": "BTC", "bitcoins": "BTC", "btc": "BTC", "ethereum": "ETH", "ether": "ETH", "eth": "ETH"}


def coins_named(title: str) -> tuple[str, ...]:
    """The coin codes a headline names as whole words ("bitcoin", "BTC", "ether"...), in a fixed order;
    for replay files that carry no tags (a word inside another, "tether" or "bitcoinist", does not count)."""
    words = set(re.findall(r"[a-z]+", title.lower()))
    return tuple(sorted({code for word, code in _COIN_WORDS.items() if word in words}))


def _summary(text: object) -> str:
    return html.unescape(str(text or "")).strip()[:SUMMARY_MAX]


def _symbols(codes: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(hydra_symbol(c) for c in codes if c and c.strip()))


class _Client:
    """The transport both live clients share: bounded retries, statuses typed, secrets redacted."""

    provider = ""

    def __init__(self, session, secret, base_url, clock, sleep, max_retries, retry_after_s):
        self.session, self._secret = session or requests.Session(), secret
        self.base_url, self._clock, self._sleep = base_url.rstrip("/"), clock, sleep
        self.max_retries, self.retry_after_s = max_retries, retry_after_s

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, secret={'set' if self._secret else 'unset'})"

    def _get(self, url: str, endpoint: str, params: dict | None, headers: dict | None = None) -> Any:
        secrets = (self._secret,)
        resp = get_with_retries(self.session, url, endpoint=endpoint, params=params, headers=headers,
                                max_retries=self.max_retries, sleep=self._sleep, secrets=secrets)
        text = redact(resp.text[:200], secrets)
        if resp.status_code == 429:
            raw = resp.headers.get("Retry-After", "")
            wait = float(raw) if raw.replace(".", "", 1).isdigit() else self.retry_after_s   # seconds form only
            raise RateLimited(endpoint, "HTTP 429", until=self._clock() + timedelta(seconds=wait))
        if resp.status_code in (401, 403):
            raise AuthError(endpoint, f"HTTP {resp.status_code}: {text}")
        if resp.status_code != 200:
            raise RequestError(endpoint, f"HTTP {resp.status_code}: {text}")
        body = json_body(resp, endpoint, secrets)
        if not isinstance(body, dict):
            raise DataError(endpoint, f"expected a JSON object, got {type(body).__name__}", field="body")
        return body


class CryptoCompareClient(_Client):
    """``GET /data/v2/news/`` (the trailing slash matters: without it the API answers a 200 error)."""

    provider = "cryptocompare"

    def __init__(self, session: requests.Session | None = None, api_key: str | None = None, *,
                 base_url: str = "https://min-api.cryptocompare.com", lang: str = "EN",
                 categories: tuple[str, ...] = (), clock: Callable[[], datetime] = utc_now,
                 sleep: Callable[[float], None] = time.sleep, max_retries: int = 2, retry_after_s: float = 60.0):
        super().__init__(session, api_key, base_url, clock, sleep, max_retries, retry_after_s)
        self.lang, self.categories = lang, categories

    def fetch(self) -> list[NewsItem]:
        endpoint = "data/v2/news/"
        params = {"lang": self.lang, **({"categories": ",".join(self.categories)} if self.categories else {})}
        headers = {"authorization": f"Apikey {self._secret}"} if self._secret else None
        body = self._get(f"{self.base_url}/{endpoint}", endpoint, params, headers)
        if body.get("Response") == "Error" or body.get("Type") != 100:
            message, code = redact(body.get("Message"), (self._secret,)), body.get("Type")
            if code == 99 or "rate limit" in message.lower():
                raise RateLimited(endpoint, f"rate limit reported in an HTTP 200 body (Type {code}): {message}",
                                  until=self._clock() + timedelta(seconds=self.retry_after_s))
            raise ProviderError(endpoint, f"error in an HTTP 200 body (Type {code}): {message}", code=code)
        rows = body.get("Data")
        if not isinstance(rows, list):
            raise DataError(endpoint, f"field 'Data' must be a list, got {type(rows).__name__}", field="Data")
        return [self._item(row, f"Data[{i}]", endpoint) for i, row in enumerate(rows)]

    def _item(self, row: Any, where: str, endpoint: str) -> NewsItem:
        if not isinstance(row, dict):
            raise DataError(endpoint, f"{where}: expected a JSON object", field=where)
        for name in ("id", "url", "title", "published_on"):
            if row.get(name) in (None, ""):
                raise DataError(endpoint, f"{where}: missing field '{name}'", field=f"{where}.{name}")
        seconds = row["published_on"]
        if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds <= 0:
            raise DataError(endpoint, f"{where}: 'published_on' must be unix seconds, got {seconds!r}",
                            field=f"{where}.published_on")
        categories = tuple(c.strip() for c in str(row.get("categories") or "").split("|") if c.strip())
        codes = [c for c in categories if _TICKER.match(c) and c not in _CC_TOPIC_CODES]
        source = (row.get("source_info") or {}).get("name") or row.get("source") or ""
        return NewsItem(self.provider, str(row["id"]), row["url"], html.unescape(row["title"]),
                        _summary(row.get("body")),
                        datetime.fromtimestamp(seconds, UTC), source, _symbols(codes), categories)


class CryptoPanicClient(_Client):
    """``GET /posts/?auth_token=..&public=true`` (free v1); ``pages`` > 1 follows ``next`` (which echoes the token)."""

    provider = "cryptopanic"

    def __init__(self, session: requests.Session | None = None, auth_token: str | None = None, *,
                 base_url: str = "https://cryptopanic.com/api/free/v1", currencies: tuple[str, ...] = (),
                 pages: int = 1, clock: Callable[[], datetime] = utc_now, sleep: Callable[[float], None] = time.sleep,
                 max_retries: int = 2, retry_after_s: float = 300.0):
        super().__init__(session, auth_token, base_url, clock, sleep, max_retries, retry_after_s)
        self.currencies, self.pages = currencies, pages
        self.last_next: str | None = None   # redacted: safe to log or persist

    def fetch(self) -> list[NewsItem]:
        endpoint = "posts/"
        if not self._secret:
            raise AuthError(endpoint, "no CryptoPanic auth_token; nothing sent")
        url, params = f"{self.base_url}/{endpoint}", {"auth_token": self._secret, "public": "true"}
        if self.currencies:
            params["currencies"] = ",".join(self.currencies)
        items: list[NewsItem] = []
        for _ in range(self.pages):
            body = self._get(url, endpoint, params)
            if body.get("status") == "api_error" or not isinstance(body.get("results"), list):
                info = redact(body.get("info") or body.get("status") or "no 'results' list", (self._secret,))
                raise ProviderError(endpoint, f"error in the response body: {info}", code=body.get("status"))
            items += [self._item(r, f"results[{i}]", endpoint) for i, r in enumerate(body["results"])]
            url, params = body.get("next"), None    # the next URL carries the query, token included
            self.last_next = redact(url, (self._secret,)) if url else None
            if not url:
                break
            log.debug("CryptoPanic next page %s", self.last_next)
        return items

    def _item(self, row: Any, where: str, endpoint: str) -> NewsItem:
        if not isinstance(row, dict):
            raise DataError(endpoint, f"{where}: expected a JSON object", field=where)
        for name in ("id", "title", "url"):
            if row.get(name) in (None, ""):
                raise DataError(endpoint, f"{where}: missing field '{name}'", field=f"{where}.{name}")
        published = parse_utc(row.get("published_at"), endpoint, f"{where}.published_at")
        tags = row.get("currencies") or row.get("instruments") or []   # v1 / v2 (often absent: no tag)
        codes = [t.get("code", "") for t in tags if isinstance(t, dict)]
        source = (row.get("source") or {}).get("title") or row.get("domain") or ""
        return NewsItem(self.provider, str(row["id"]), row["url"], html.unescape(row["title"]),
                        _summary(row.get("description")), published, source, _symbols(codes),
                        (row["kind"],) if row.get("kind") else ())


class NewsFeed(PollingFeed):
    """Live ``news`` feed over one client; share one :class:`NewsDeduper` between feeds to de-duplicate
    across providers. Payload: provider, id, url, title, summary, source, symbols, categories."""

    kinds = ("news",)

    def __init__(self, client: CryptoCompareClient | CryptoPanicClient, *, deduper: NewsDeduper | None = None,
                 poll_interval_s: float = 300.0, clock: Callable[[], datetime] = utc_now, **kwargs):
        super().__init__(poll_interval_s=poll_interval_s, clock=clock, secrets=(client._secret,), **kwargs)
        self.client, self.deduper = client, deduper or NewsDeduper()
        self.name = f"news_{client.provider}"

    def _poll(self, poll_time: datetime) -> list[Event]:
        return [e for item in self.client.fetch() if self.deduper.first_time(item) for e in news_events(item)]

    def _key(self, event: Event) -> tuple:
        return (event.kind, event.subject, event.payload["provider"], event.payload["id"])


# --------------------------------------------------------------------------- replay
_LA = ZoneInfo("America/Los_Angeles")
_END_OF_DAY_ANYWHERE = timezone(timedelta(hours=-12))


def end_of_day(day: date, zone: timezone | ZoneInfo = _END_OF_DAY_ANYWHERE) -> datetime:
    """The instant ``day`` ends in ``zone`` (the next local midnight), in UTC."""
    return datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=zone).astimezone(UTC)


def _replay_row(name: str, row: dict) -> tuple[str, str, str, str, datetime, str, tuple[str, ...]] | None:
    """(title, url, summary, source, stamp, resolution, symbols) of a known file's row, or None if unusable."""
    def stamp(fmt: str, value: str) -> datetime:
        return datetime.strptime(value.strip(), fmt).replace(tzinfo=UTC)   # UTC where provenance says none
    try:
        if name.startswith("crypto_headlines_"):   # untagged: the coins its (lower-cased) title names
            return (row["headline"], "", row["description"], "", stamp("%Y-%m-%d %H:%M:%S", row["date"]), "second",
                    coins_named(row["headline"]))
        if name.startswith("cryptocompare_format_"):
            return (row["title"], row["url"], row["body"], row["source"],
                    stamp("%Y-%m-%d %H:%M:%S", row["published_on"]), "second", ())
        if name.startswith("cryptocurrencynews_com_bitcoin"):   # the site's bitcoin-news section
            return (row["title"], row["url"], "", "cryptocurrencynews.com", stamp("%b %d, %Y", row["date"]), "day",
                    ("BTC",))
        if name.startswith("cryptonews_kaggle"):
            coin = _NAMES.get(row.get("subject", "").strip().lower())
            return (row["title"], row["url"], row.get("text", ""), row["source"], stamp("%Y/%m/%d %H:%M", row["date"]),
                    "minute", (coin,) if coin else ())
        if name.startswith("googlenews_crypto"):
            at = datetime.fromisoformat(row["created_at"]).astimezone(UTC)
            day_stamped = at.astimezone(_LA).time() == datetime.min.time()   # Pacific midnight = a bare date
            word = row["keyword"].strip().lower()
            return (row["title"], row["url"], "", row["source_name"], at, "day" if day_stamped else "second",
                    (_NAMES.get(word, word),))
    except (KeyError, ValueError, TypeError, AttributeError):
        return None
    raise ValueError(f"no reader for news file {name!r}")


class NewsReplayFeed:
    """``news`` events from the shipped headline files (``PROVENANCE.md`` 5, ``PROVENANCE-2.md``); the
    known-at rules are in the module docstring. Rows without a title or a usable stamp are skipped and
    counted; duplicates (by URL or title) across files are dropped."""

    name = "news_replay"
    kinds = ("news",)

    def __init__(self, paths: Iterable[Path], deduper: NewsDeduper | None = None):
        self.paths = [Path(p) for p in paths]
        self.deduper = deduper or NewsDeduper()
        self._events: list[Event] | None = None
        self.skipped: dict[str, int] = {}

    def events(self, now: datetime) -> list[Event]:
        return visible(self._load(), require_utc(now, "news_replay.events(now)"))

    def health(self, now: datetime) -> tuple[bool, str]:
        missing = [p.name for p in self.paths if not p.is_file()]
        n = len(self._load())
        return (not missing and n > 0,
                f"news_replay: {n} events from {len(self.paths) - len(missing)} file(s); skipped rows {self.skipped}; "
                f"duplicates dropped {self.deduper.dropped}" + (f"; missing {missing}" if missing else ""))

    def _load(self) -> list[Event]:
        if self._events is None:
            self._events = [e for p in self.paths if p.is_file() for e in self._read(p)]
        return self._events

    def _read(self, path: Path) -> list[Event]:
        opener = gzip.open if path.suffix == ".gz" else open
        encoding = "latin-1" if path.name.startswith("cryptonews_kaggle") else "utf-8"   # PROVENANCE.md 5.2
        out, skipped = [], 0
        with opener(path, "rt", encoding=encoding, newline="") as fh:
            for n, row in enumerate(csv.DictReader(fh), start=2):
                parsed = _replay_row(path.name, row)
                if parsed is None or not (parsed[0] or "").strip():
                    skipped += 1
                    continue
                title, url, summary, source, at, resolution, codes = parsed
                if resolution == "day" and path.name.startswith("googlenews"):
                    stamp = at.astimezone(_LA).date()
                    known = end_of_day(stamp, _LA)
                elif resolution == "day":   # a bare date (parsed as UTC midnight): zone unknown
                    stamp = at.date()
                    known = end_of_day(stamp)
                else:
                    stamp = known = at
                item = NewsItem("replay", f"{path.name}:{n}", url or "", title.strip(), _summary(summary), known,
                                source or path.name, _symbols(codes))
                if self.deduper.first_time(item):
                    out += news_events(item, extra={"stamp": stamp.isoformat(), "stamp_resolution": resolution})
        self.skipped[path.name] = skipped
        return out
