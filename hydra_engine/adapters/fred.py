"""FRED release calendars for CPI and the Employment Situation (NFP) as ``macro_release`` events (issue #18).

Contract: shared/contracts/NOTES-2.md section 1. What this module decides, and why:

* **Time of day.** FRED gives dates only. BLS publishes CPI and the Employment Situation at 08:30
  Eastern, so each date becomes 08:30 America/New_York converted to UTC with ``zoneinfo`` (13:30 UTC in
  winter, 12:30 UTC in summer; never a fixed offset).
* **One headline date per month.** FRED's list for a release holds every date on which *any* series of
  the release was revised, so a month may show more than one date. FRED cannot tell which is the
  headline, so the rule is per release and documented here (unverified against live lists, NOTES-2
  1.2 [S?]): for **CPI the last date of a calendar month** is the headline (BLS publishes the yearly
  seasonal-factor revisions a few days *before* the January CPI, in February); for **NFP the first date
  of a month** is the headline (the annual benchmark rides with the January report, so anything later in
  the month is a revision). Dropped dates are logged at INFO with the month.
* **known_at.** The time this client first saw the date in a successful poll (the injected clock). That
  holds for past dates and for scheduled ones FRED lists in advance alike: FRED's vintage dates say when
  data appeared, not when the *calendar* was announced, so backdating would be a guess. A later poll
  never moves ``known_at``. A scheduled (future) date that disappears from a later successful poll was
  moved or cancelled (shutdowns do this, NOTES-2 1.7): it is dropped with a warning.
* **Secrets.** The api key travels in the query string (FRED has no header form); it is never logged and
  is redacted from every message, including ``requests``' own exception texts.
* **Limits.** FRED enforces a burst limit of about 2 requests/second: requests are paced ``min_gap_s``
  apart. HTTP 429 (and 423) raise :class:`RateLimited`, the feed then waits ``Retry-After`` or its
  exponential back-off. 400 is :class:`AuthError` when it names ``api_key``, else :class:`RequestError`.

FOMC is not in FRED and is not handled here.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import date, datetime, time as dtime, timedelta
from typing import Callable, Iterable
from zoneinfo import ZoneInfo

import requests

from hydra_engine.domain import UTC
from hydra_engine.events import Event

from .http import (AuthError, DataError, PollingFeed, RateLimited, RequestError, get_with_retries, json_body,
                   redact, retry_after_s, utc_now)

log = logging.getLogger(__name__)

BASE_URL = "https://api.stlouisfed.org/fred"
NEW_YORK = ZoneInfo("America/New_York")
BLS_RELEASE_TIME = dtime(8, 30)


@dataclass(frozen=True, slots=True)
class ReleaseSpec:
    """A FRED release HYDRA follows: its subject, id, expected name, and which date of a month is the headline."""

    subject: str
    release_id: int
    name: str
    headline: str          # "first" or "last" date in a calendar month (see the module docstring)
    local_time: dtime = BLS_RELEASE_TIME

    def __post_init__(self) -> None:
        if self.headline not in ("first", "last"):
            raise ValueError(f"headline must be 'first' or 'last', got {self.headline!r}")


CPI = ReleaseSpec("CPI", 10, "Consumer Price Index", headline="last")
NFP = ReleaseSpec("NFP", 50, "Employment Situation", headline="first")   # id 50 is [S?]: verify_names checks it


def api_key_from_env(environ: dict | None = None) -> str | None:
    """``FRED_API_KEY`` from the environment, or None (the feed then reports it and sends nothing)."""
    value = (environ if environ is not None else os.environ).get("FRED_API_KEY", "").strip()
    return value or None


def release_time_utc(day: date, local_time: dtime = BLS_RELEASE_TIME) -> datetime:
    """``day`` at ``local_time`` New York time, as UTC (DST-correct through zoneinfo)."""
    return datetime.combine(day, local_time, tzinfo=NEW_YORK).astimezone(UTC)


def headline_dates(dates: Iterable[date], headline: str, subject: str = "") -> list[date]:
    """One date per calendar month: the first or the last FRED lists (``headline``); the rest are logged."""
    by_month: dict[tuple[int, int], list[date]] = {}
    for d in sorted(set(dates)):
        by_month.setdefault((d.year, d.month), []).append(d)
    out = []
    for (year, month), days in sorted(by_month.items()):
        keep = days[0] if headline == "first" else days[-1]
        dropped = [d.isoformat() for d in days if d != keep]
        if dropped:
            log.info("FRED %s %04d-%02d: headline %s, revision date(s) dropped: %s",
                     subject, year, month, keep.isoformat(), ", ".join(dropped))
        out.append(keep)
    return out


class FredClient:
    """``fred/release/dates`` and ``fred/release`` over ``requests``; typed errors, paced, key redacted."""

    def __init__(self, session: requests.Session | None = None, api_key: str | None = None, *,
                 base_url: str = BASE_URL, min_gap_s: float = 1.0, max_retries: int = 2, backoff_s: float = 1.0,
                 default_retry_after_s: float = 60.0, clock: Callable[[], datetime] = utc_now,
                 monotonic: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.session = session or requests.Session()
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.min_gap_s, self.max_retries, self.backoff_s = min_gap_s, max_retries, backoff_s
        self.default_retry_after_s = default_retry_after_s
        self._clock, self._monotonic, self._sleep = clock, monotonic, sleep
        self._last_sent: float | None = None

    def __repr__(self) -> str:   # never show the key, even in a debugger or a log of the object
        return f"FredClient(base_url={self.base_url!r}, api_key={'set' if self._api_key else 'unset'})"

    def release_dates(self, release_id: int, start: date, end: date | None = None) -> list[date]:
        """Every date FRED lists for ``release_id`` in [start, end] (scheduled ones included), sorted."""
        endpoint = "fred/release/dates"
        params = {"release_id": release_id, "file_type": "json", "realtime_start": start.isoformat(),
                  "realtime_end": "9999-12-31", "include_release_dates_with_no_data": "true",
                  "sort_order": "asc", "limit": 10000, "offset": 0}
        out: set[date] = set()
        while True:
            body = self._get(endpoint, params)
            rows = body.get("release_dates")
            if not isinstance(rows, list):
                raise DataError(endpoint, f"field 'release_dates' must be a list, got {type(rows).__name__}",
                                field="release_dates")
            for i, row in enumerate(rows):
                day = _date(row, endpoint, f"release_dates[{i}].date")
                if row.get("release_id", release_id) != release_id:   # a wrong answer must not be labelled
                    raise DataError(endpoint, f"field 'release_dates[{i}].release_id' is {row.get('release_id')!r}, "
                                    f"asked for {release_id}", field=f"release_dates[{i}].release_id")
                if start <= day and (end is None or day <= end):
                    out.add(day)
            count = body.get("count")
            params["offset"] += len(rows)
            # page on with offset until offset + rows >= count (NOTES-2 1.7); stop on a short/empty page
            if not isinstance(count, int) or not rows or params["offset"] >= count:
                return sorted(out)

    def release_name(self, release_id: int) -> str:
        """The name FRED gives ``release_id`` (``fred/release``): a startup check that the ids are right."""
        endpoint = "fred/release"
        body = self._get(endpoint, {"release_id": release_id, "file_type": "json"})
        releases = body.get("releases")
        if not isinstance(releases, list) or not releases or not isinstance(releases[0], dict):
            raise DataError(endpoint, "field 'releases' must be a non-empty list", field="releases")
        name = releases[0].get("name")
        if not isinstance(name, str) or not name:
            raise DataError(endpoint, f"field 'releases[0].name' must be a string, got {name!r}", field="name")
        return name

    # ------------------------------------------------------------------ transport
    def _get(self, endpoint: str, params: dict) -> dict:
        if not self._api_key:
            raise AuthError(endpoint, "no FRED api key (set FRED_API_KEY); nothing sent")
        self._pace()
        secrets = (self._api_key,)
        resp = get_with_retries(self.session, f"{self.base_url}/{endpoint.removeprefix('fred/')}",
                                endpoint=endpoint, params={**params, "api_key": self._api_key},
                                max_retries=self.max_retries, backoff_s=self.backoff_s, sleep=self._sleep,
                                secrets=secrets)
        if resp.status_code in (423, 429):   # the 429 body is undocumented: match on the status only
            wait = retry_after_s(resp) or self.default_retry_after_s
            raise RateLimited(endpoint, f"HTTP {resp.status_code} (FRED throttled this key)",
                              until=self._clock() + timedelta(seconds=wait))
        if resp.status_code != 200:
            message = _error_message(resp, secrets)
            if resp.status_code == 400 and "api_key" in message:
                raise AuthError(endpoint, f"HTTP 400: {message}")
            raise RequestError(endpoint, f"HTTP {resp.status_code}: {message}")
        body = json_body(resp, endpoint, secrets)   # an XML 200 (file_type lost) lands here as a DataError
        if not isinstance(body, dict):
            raise DataError(endpoint, f"expected a JSON object, got {type(body).__name__}", field="body")
        if "error_code" in body:   # never seen with 200, but the shape is documented: do not read it as data
            message = redact(body.get("error_message"), secrets)
            raise RequestError(endpoint, f"error {body.get('error_code')}: {message}")
        return body

    def _pace(self) -> None:
        """Keep ``min_gap_s`` between requests (FRED's ~2 req/s burst limit answers 429 to micro-bursts)."""
        now = self._monotonic()
        if self._last_sent is not None and now - self._last_sent < self.min_gap_s:
            self._sleep(self.min_gap_s - (now - self._last_sent))
            now = self._monotonic()
        self._last_sent = now


class FredReleaseFeed(PollingFeed):
    """Live ``macro_release`` feed: CPI and NFP release times from FRED (see the module docstring).

    Payload: ``source`` ("fred"), ``release_id``, ``release_name``, ``release_date`` (ISO date as FRED
    lists it), ``time_rule`` (how the time of day was set)."""

    name = "fred_releases"
    kinds = ("macro_release",)

    def __init__(self, client: FredClient, *, releases: tuple[ReleaseSpec, ...] = (CPI, NFP),
                 start: date = date(2015, 1, 1), poll_interval_s: float = 6 * 3600.0,
                 verify_names: bool = True, clock: Callable[[], datetime] = utc_now, **kwargs):
        super().__init__(poll_interval_s=poll_interval_s, clock=clock, secrets=(client._api_key,), **kwargs)
        self.client, self.releases, self.start = client, releases, start
        self._names_verified = not verify_names

    def _poll(self, poll_time: datetime) -> list[Event]:
        if not self._names_verified:
            for spec in self.releases:
                name = self.client.release_name(spec.release_id)
                if name != spec.name:
                    raise DataError("fred/release", f"release {spec.release_id} is {name!r}, expected "
                                    f"{spec.name!r} for {spec.subject}; refusing to label it", field="name")
            self._names_verified = True
        events = []
        for spec in self.releases:   # all releases fetched before any is merged: a failure keeps the old set
            days = headline_dates(self.client.release_dates(spec.release_id, self.start), spec.headline, spec.subject)
            for day in days:
                events.append(Event(
                    kind="macro_release", subject=spec.subject, happened_at=release_time_utc(day, spec.local_time),
                    known_at=poll_time, source="fred",
                    payload={"source": "fred", "release_id": spec.release_id, "release_name": spec.name,
                             "release_date": day.isoformat(),
                             "time_rule": f"{spec.local_time:%H:%M} America/New_York (BLS), not from FRED"}))
        return events

    def _merge(self, new: list[Event], poll_time: datetime) -> None:
        fresh = {self._key(e) for e in new}
        for key, old in list(self._events.items()):
            if old.happened_at > poll_time and key not in fresh:
                log.warning("FRED no longer lists %s on %s: moved or cancelled, dropped",
                            old.subject, old.payload.get("release_date"))
                del self._events[key]
        super()._merge(new, poll_time)


def _date(row: object, endpoint: str, field: str) -> date:
    raw = row.get("date") if isinstance(row, dict) else None
    try:
        return date.fromisoformat(raw)
    except (TypeError, ValueError):
        raise DataError(endpoint, f"field '{field}' must be a YYYY-MM-DD date, got {raw!r}", field=field) from None


def _error_message(resp: requests.Response, secrets: tuple) -> str:
    """FRED's ``error_message`` (JSON) or ``message`` attribute (XML); the content type is not trusted."""
    try:
        body = resp.json()
        if isinstance(body, dict) and "error_message" in body:
            return redact(body["error_message"], secrets)
    except ValueError:
        pass
    return redact(resp.text[:200], secrets)
