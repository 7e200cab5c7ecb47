"""FRED release-calendar client and feed against the contract examples (shared/contracts/fred/examples),
replayed with ``responses``: parsing, 08:30 New York -> UTC across DST, one headline date per month,
400/429 typed errors with back-off, and the api key never leaking into logs or exceptions."""
from __future__ import annotations

import json
import logging
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
import responses
from responses import matchers

from hydra_engine.adapters.fred import (CPI, NFP, FredClient, FredReleaseFeed, ReleaseSpec, api_key_from_env,
                                        headline_dates, release_time_utc)
from hydra_engine.adapters.http import AuthError, DataError, RateLimited

UTC = timezone.utc
EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "contracts" / "fred" / "examples"
DATES_URL = "https://api.stlouisfed.org/fred/release/dates"
RELEASE_URL = "https://api.stlouisfed.org/fred/release"
KEY = "abcdefghijklmnopqrstuvwxyz012345"   # 32 lower-case alphanumerics, the documented shape
T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
R82 = ReleaseSpec("CPI", 82, "release 82 of the official example", headline="last")


def example(name: str):
    path = EXAMPLES / name
    if not path.is_file():
        pytest.skip(f"contract example {path} not found (shared/contracts is absent)")
    return json.loads(path.read_text())


class Clock:
    def __init__(self, t: datetime = T0):
        self.t, self.mono, self.sleeps = t, 1000.0, []

    def __call__(self) -> datetime:
        return self.t

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.mono += s
        self.t += timedelta(seconds=s)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def rsps():
    with responses.RequestsMock() as mock:
        yield mock


def client(clock, key=KEY):
    return FredClient(requests.Session(), key, clock=clock, monotonic=clock.monotonic, sleep=clock.sleep)


def feed(clock, releases=(R82,), key=KEY, **kw):
    kw.setdefault("verify_names", False)
    return FredReleaseFeed(client(clock, key), releases=releases, start=date(1990, 1, 1), clock=clock, **kw)


def dates_query(release_id, start="1990-01-01", offset=0):
    return matchers.query_param_matcher({
        "release_id": str(release_id), "api_key": KEY, "file_type": "json", "realtime_start": start,
        "realtime_end": "9999-12-31", "include_release_dates_with_no_data": "true", "sort_order": "asc",
        "limit": "10000", "offset": str(offset)})


def body_with(dates, release_id=10):
    return {**example("release_dates.82.official_values.json"), "count": len(dates),
            "release_dates": [{"release_id": release_id, "date": d} for d in dates]}


# --------------------------------------------------------------------------- happy path
def test_official_example_becomes_macro_release_events(clock, rsps):
    rsps.get(DATES_URL, json=example("release_dates.82.official_values.json"), match=[dates_query(82)])
    f = feed(clock)
    events = f.events(T0)
    assert len(events) == 17
    assert events[0].happened_at == datetime(1997, 2, 10, 13, 30, tzinfo=UTC)    # EST: 08:30 = 13:30 UTC
    assert events[-1].happened_at == datetime(2013, 4, 10, 12, 30, tzinfo=UTC)   # EDT: 08:30 = 12:30 UTC
    e = events[-1]
    assert (e.kind, e.subject, e.source, e.known_at) == ("macro_release", "CPI", "fred", T0)
    assert e.payload["source"] == "fred" and e.payload["release_id"] == 82
    assert e.payload["release_date"] == "2013-04-10"
    assert f.health(T0) == (True, "fred_releases: ok, last poll 2024-06-01T12:00:00+00:00, 17 events")


def test_start_filters_client_side(clock, rsps):
    rsps.get(DATES_URL, json=example("release_dates.82.official_values.json"))
    days = client(clock).release_dates(82, date(2009, 1, 1), date(2012, 12, 31))
    assert days == [date(2009, 3, 3), date(2010, 2, 11), date(2011, 2, 23), date(2012, 10, 24)]


def test_pages_with_offset_until_count(clock, rsps):
    page1 = {**example("release_dates.82.official_values.json"), "count": 18}
    page2 = {**page1, "offset": 17, "release_dates": [{"release_id": 82, "date": "2014-02-10"}]}
    rsps.get(DATES_URL, json=page1, match=[dates_query(82)])
    rsps.get(DATES_URL, json=page2, match=[dates_query(82, offset=17)])
    days = client(clock).release_dates(82, date(1990, 1, 1))
    assert len(days) == 18 and days[-1] == date(2014, 2, 10)


def test_requests_are_paced_one_per_second(clock, rsps):
    rsps.get(DATES_URL, json=body_with(["2024-03-12"], 10), match=[dates_query(10)])
    rsps.get(DATES_URL, json=body_with(["2024-03-08"], 50), match=[dates_query(50)])
    events = feed(clock, releases=(CPI, NFP)).events(T0 + timedelta(hours=1))
    assert [e.subject for e in events] == ["NFP", "CPI"]
    assert clock.sleeps == [1.0]   # the second request waited for the burst limit


# --------------------------------------------------------------------------- DST and revisions
@pytest.mark.parametrize("day, utc_hour", [
    (date(2024, 3, 8), 13),    # NFP, Friday before DST starts (Mar 10): EST
    (date(2024, 3, 12), 12),   # CPI, after DST starts: EDT
    (date(2024, 11, 1), 12),   # NFP, before DST ends (Nov 3): EDT
    (date(2024, 11, 13), 13),  # CPI, after DST ends: EST
])
def test_release_time_is_0830_new_york_in_utc(day, utc_hour):
    assert release_time_utc(day) == datetime(day.year, day.month, day.day, utc_hour, 30, tzinfo=UTC)


def test_revision_dates_normalised_to_one_headline_per_month(clock, rsps, caplog):
    # CPI: 2024-02-09 carried the seasonal-factor revisions, 2024-02-13 the January CPI (headline = last)
    rsps.get(DATES_URL, json=body_with(["2024-01-11", "2024-02-09", "2024-02-13", "2024-03-12"], 10),
             match=[dates_query(10)])
    # NFP: a revision later in the month than the first-Friday headline (headline = first)
    rsps.get(DATES_URL, json=body_with(["2024-03-08", "2024-03-22", "2024-11-01"], 50), match=[dates_query(50)])
    with caplog.at_level(logging.INFO, logger="hydra_engine.adapters.fred"):
        events = feed(clock, releases=(CPI, NFP)).events(T0)
    cpi = [e.payload["release_date"] for e in events if e.subject == "CPI"]
    nfp = [e.payload["release_date"] for e in events if e.subject == "NFP"]
    assert cpi == ["2024-01-11", "2024-02-13", "2024-03-12"]
    assert nfp == ["2024-03-08", "2024-11-01"]
    assert "CPI 2024-02: headline 2024-02-13, revision date(s) dropped: 2024-02-09" in caplog.text
    assert "NFP 2024-03: headline 2024-03-08, revision date(s) dropped: 2024-03-22" in caplog.text
    nov = next(e for e in events if e.payload["release_date"] == "2024-11-01")
    assert nov.happened_at == datetime(2024, 11, 1, 12, 30, tzinfo=UTC)


def test_headline_rule_unit():
    days = [date(2024, 2, 13), date(2024, 2, 9), date(2024, 2, 9)]
    assert headline_dates(days, "last") == [date(2024, 2, 13)]
    assert headline_dates(days, "first") == [date(2024, 2, 9)]


def test_known_at_is_first_poll_and_vanished_future_date_is_dropped(clock, rsps, caplog):
    rsps.get(DATES_URL, json=body_with(["2024-05-15", "2024-06-12"], 10))
    f = feed(clock, releases=(CPI,), poll_interval_s=3600)
    first = f.events(T0)
    assert [e.known_at for e in first] == [T0, T0]   # past and scheduled alike: known from our poll
    assert f.events(T0 - timedelta(seconds=1)) == []   # nothing before we learnt it
    rsps.replace(responses.GET, DATES_URL, json=body_with(["2024-05-15", "2024-06-13"], 10))  # moved a day
    clock.t = t2 = T0 + timedelta(hours=2)
    with caplog.at_level(logging.WARNING):
        later = f.events(t2)
    assert [e.payload["release_date"] for e in later] == ["2024-05-15", "2024-06-13"]
    assert later[0].known_at == T0 and later[1].known_at == t2   # first sighting kept, the new date is new
    assert "no longer lists CPI on 2024-06-12" in caplog.text


# --------------------------------------------------------------------------- errors
def test_400_bad_key_is_auth_error_without_the_key(clock, rsps, caplog):
    rsps.get(DATES_URL, status=400, json=example("error.400.api_key_not_registered.json"))
    with pytest.raises(AuthError, match="api_key is not registered") as info:
        client(clock).release_dates(10, date(2024, 1, 1))
    assert KEY not in str(info.value) and info.value.endpoint == "fred/release/dates"
    with caplog.at_level(logging.DEBUG):
        f = feed(clock)
        assert f.events(T0) == []
        ok, message = f.health(T0)
    assert not ok and "AuthError" in message and KEY not in message
    assert all(KEY not in r.getMessage() for r in caplog.records)


def test_connection_error_text_is_redacted(clock, rsps, caplog):
    url = f"{DATES_URL}?release_id=10&api_key={KEY}&file_type=json"
    rsps.get(DATES_URL, body=requests.ConnectionError(f"Max retries exceeded with url: {url}"))
    with caplog.at_level(logging.DEBUG):
        f = feed(clock)
        f.events(T0)
    ok, message = f.health(T0)
    assert not ok and "Unavailable" in message and "api_key=REDACTED" in message and KEY not in message
    assert clock.sleeps == [1.0, 2.0]   # bounded retries with back-off
    assert all(KEY not in r.getMessage() for r in caplog.records)


def test_429_backs_off_then_recovers(clock, rsps):
    rsps.get(DATES_URL, status=429, body="")
    f = feed(clock, backoff_s=60)
    with pytest.raises(RateLimited):
        client(clock).release_dates(82, date(1990, 1, 1))
    assert f.events(T0) == []
    ok, message = f.health(T0)
    assert not ok and "RateLimited" in message and "HTTP 429" in message
    sent = len(rsps.calls)
    clock.t = T0 + timedelta(seconds=59)
    f.events(clock.t)
    assert len(rsps.calls) == sent   # still waiting: nothing sent
    rsps.replace(responses.GET, DATES_URL, json=example("release_dates.82.official_values.json"))
    clock.t = T0 + timedelta(seconds=61)   # client default Retry-After (60 s) and feed back-off both over
    assert len(f.events(clock.t)) == 17 and f.health(clock.t)[0]


def test_429_retry_after_header_is_obeyed(clock, rsps):
    rsps.get(DATES_URL, status=429, body="", headers={"Retry-After": "600"})
    f = feed(clock, backoff_s=60)
    f.events(T0)
    assert "no request before 2024-06-01T12:10:00+00:00" in f.health(T0)[1]
    clock.t = T0 + timedelta(seconds=300)
    f.events(clock.t)
    assert len(rsps.calls) == 1


def test_xml_body_with_200_is_a_data_error(clock, rsps):
    rsps.get(DATES_URL, body=(EXAMPLES / "error.400.api_key_not_set.xml").read_text() if EXAMPLES.is_dir()
             else pytest.skip("contract examples absent"))
    with pytest.raises(DataError, match="not JSON") as info:
        client(clock).release_dates(10, date(2024, 1, 1))
    assert info.value.field == "body"


def test_wrong_release_in_body_is_refused(clock, rsps):
    rsps.get(DATES_URL, json=example("release_dates.82.official_values.json"))
    with pytest.raises(DataError, match=r"release_dates\[0\].release_id' is 82, asked for 10"):
        client(clock).release_dates(10, date(1990, 1, 1))


def test_release_name_check_refuses_a_wrong_id(clock, rsps):
    rsps.get(RELEASE_URL, json=example("release.53.docs.json"))   # GDP, not CPI
    f = feed(clock, releases=(CPI,), verify_names=True)
    assert f.events(T0) == []
    ok, message = f.health(T0)
    assert not ok and "release 10 is 'Gross Domestic Product'" in message


def test_missing_key_sends_nothing(clock, rsps):
    f = feed(clock, key=None)
    assert f.events(T0) == [] and len(rsps.calls) == 0
    assert "no FRED api key" in f.health(T0)[1]
    assert api_key_from_env({"FRED_API_KEY": "  "}) is None
    assert api_key_from_env({"FRED_API_KEY": KEY}) == KEY
    assert KEY not in repr(client(clock))
