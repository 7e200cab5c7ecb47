"""Dated events (issue #15, item 5): replay feeds over the real event files, the look-ahead rule, the
registry that builds feeds from the plugins' data_needs, and the events channel in snapshots."""
from __future__ import annotations

import filecmp
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from hydra_engine.data.event_feeds import (AI_LAUNCHES_FILE, CME_MARGINS_FILE, EVENT_FEEDS, MACRO_CALENDAR_FILE,
                                           EventDataError, EventFeedFactory, EventKindError, EventMerger,
                                           ReplayEventFeed, ai_launches_feed, build_event_feeds, cme_margins_feed,
                                           event_feeds_for,
                                           macro_calendar_feed)
from hydra_engine.data.feeds import MarketDataWithFeeds
from hydra_engine.data.replay import DataFolderError, ReplayMarketData
from hydra_engine.events import Event, EventFeed, visible
from hydra_engine.ports import MarketSnapshot
from hydra_engine.strategy import DataNeed

from .conftest import SHARED_DATA, SHIPPED_DATA

ALL_FILES = (MACRO_CALENDAR_FILE, CME_MARGINS_FILE, AI_LAUNCHES_FILE)


@pytest.fixture(scope="module")
def feeds() -> dict[str, ReplayEventFeed]:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared market data not found at {SHARED_DATA} (set HYDRA_SHARED_DATA)")
    feeds = {f.name: f for f in (macro_calendar_feed(SHARED_DATA), cme_margins_feed(SHARED_DATA),
                                 ai_launches_feed(SHARED_DATA))}
    return {**feeds, "all": ReplayEventFeed.combine(list(feeds.values()))}


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --------------------------------------------------------------------------- the look-ahead rule
@settings(max_examples=300, deadline=None)
@given(now=st.datetimes(min_value=datetime(2008, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)))
def test_an_event_is_never_visible_before_it_is_known(feeds, now):
    # the feeds are shared between examples: calls come in random time order, forwards and backwards,
    # which exercises both the incremental and the rebuilt cache; "all" is the merged feed replay uses
    for feed in feeds.values():
        served = feed.events(now)
        assert all(e.known_at <= now for e in served)
        # ... and every known one is served, in the order ``visible`` gives
        assert list(served) == visible(feed.all_events, now)


def test_each_feed_implements_the_protocol_and_loads_every_row(feeds):
    assert {n: len(f) for n, f in feeds.items()} == {"macro_calendar": 500, "cme_margins": 67, "ai_launches": 249,
                                                      "all": 816}
    for feed in feeds.values():
        assert isinstance(feed, EventFeed)
        assert all(e.kind in feed.kinds for e in feed.all_events)


def test_the_served_tuple_is_reused_while_nothing_new_is_known(feeds):
    feed = feeds["macro_calendar"]
    a = feed.events(utc(2022, 11, 1, 10))
    assert feed.events(utc(2022, 11, 1, 11)) is a            # nothing became known in between
    b = feed.events(utc(2022, 11, 3, 13, 30))                 # the 2022-11-10 CPI became known
    assert b is not a and len(b) == len(a) + 1
    assert feed.events(utc(2010, 1, 1)) == ()                 # the clock may go back (a new replay)


def test_serving_costs_microseconds(feeds):
    """events(now) runs every cycle of a multi-year hourly replay: a bisect and a cached tuple."""
    feed = feeds["macro_calendar"]
    t0 = utc(2015, 1, 1)
    hours = [t0 + timedelta(hours=h) for h in range(20_000)]   # 2.3 years of hourly cycles
    start = time.perf_counter()
    for now in hours:
        feed.events(now)
    per_call = (time.perf_counter() - start) / len(hours)
    assert per_call < 50e-6, f"{per_call * 1e6:.1f} µs per call"   # ~1 µs here; generous for shared CPUs


# --------------------------------------------------------------------------- the three feeds
def test_the_2022_11_10_cpi_release(feeds):
    feed = feeds["macro_calendar"]
    cpi = [e for e in feed.all_events if e.subject == "CPI" and e.happened_at.date().isoformat() == "2022-11-10"]
    assert len(cpi) == 1
    event = cpi[0]
    assert event.kind == "macro_release" and event.happened_at == utc(2022, 11, 10, 13, 30)
    assert event.known_at == event.happened_at - timedelta(days=7)
    assert event.payload["datetime_et"] == "2022-11-10 08:30" and event.payload["known_rule"] == "scheduled_7d"
    assert event.payload["source_url"].startswith("https://www.bls.gov/")
    assert event not in feed.events(event.known_at - timedelta(seconds=1))
    assert event in feed.events(event.known_at)
    assert event in feed.events(event.happened_at + timedelta(days=30))   # past releases stay visible


def test_unscheduled_and_rescheduled_releases_are_not_known_ahead(feeds):
    by_time = {(e.subject, e.happened_at): e for e in feeds["macro_calendar"].all_events}
    for at in (utc(2020, 3, 3, 15), utc(2020, 3, 15, 21)):     # the emergency FOMC cuts
        e = by_time["FOMC", at]
        assert e.known_at == e.happened_at and e.payload["known_rule"] == "unscheduled"
    nfp = by_time["NFP", utc(2013, 10, 22, 12, 30)]            # moved by the October 2013 shutdown
    assert nfp.payload["known_rule"] == "rescheduled" and nfp.known_at > utc(2013, 10, 17)
    assert {e.subject for e in by_time.values()} == {"CPI", "NFP", "FOMC"}


def test_the_2011_silver_margin_hikes(feeds):
    feed = feeds["cme_margins"]
    hikes = [e for e in feed.all_events if e.subject == "SI" and utc(2011, 4, 1) <= e.happened_at < utc(2011, 6, 1)]
    assert [e.happened_at.date().isoformat() for e in hikes] == [
        "2011-04-26", "2011-04-29", "2011-05-03", "2011-05-05", "2011-05-09"]
    assert all(e.payload["direction"] == "hike" and e.payload["pct_change"] > 0 for e in hikes)
    first = hikes[0]
    # effective after the close: 17:00 New York (EDT) is 21:00 UTC
    assert first.happened_at == utc(2011, 4, 26, 21)
    assert first.payload["initial_usd"] == 12825 and first.payload["prev_initial_usd"] == 11745
    # the source is the Reuters factbox of 2011-09-24, after the change: known when it took effect
    assert first.known_at == first.happened_at
    assert all(e.known_at <= e.happened_at for e in hikes)


def test_cme_known_at_follows_the_source_date(feeds):
    by_key = {(e.subject, e.payload["effective_date"]): e for e in feeds["cme_margins"].all_events}
    kitco = by_key["GC", "2012-11-20"]   # Kitco 2012-11-16 (Friday): known from the end of that day, New York
    assert kitco.known_at == utc(2012, 11, 17, 5) and kitco.known_at < kitco.happened_at
    approx = by_key["SI", "2025-12-12"]  # "approx" effective date: the article's date is the first evidence
    assert approx.known_at == utc(2025, 12, 14, 5) > approx.happened_at
    computed = by_key["SI", "2012-11-20"]   # no reported pct: computed from the levels
    assert computed.payload["pct_change_reported"] is None
    assert computed.payload["pct_change_maintenance"] == -12.0 and computed.payload["direction"] == "cut"
    assert by_key["SI", "2026-02-06"].payload["margin_pct_notional"] == 18.0
    assert by_key["ALL", "2026-01-13"].payload["direction"] == "methodology"


def test_ai_launches_are_known_at_the_end_of_their_publication_day(feeds):
    gpt4 = next(e for e in feeds["ai_launches"].all_events if e.subject == "GPT-4")
    assert gpt4.kind == "ai_launch" and gpt4.payload["organization"] == "OpenAI"
    assert gpt4.happened_at == utc(2023, 3, 15)
    assert gpt4.known_at == utc(2023, 3, 16, 7)   # midnight Los Angeles (PDT)
    assert gpt4.payload["frontier"] is True


def test_the_macro_calendar_reports_where_it_ends(feeds):
    feed = feeds["macro_calendar"]
    assert feed.health(utc(2024, 6, 1))[0]
    ok, why = feed.health(utc(2025, 11, 1))
    assert not ok and "us_cpi_nfp_fomc_2010_2025.csv ends" in why


def test_the_shipped_files_are_copies_of_the_shared_ones():
    if not SHARED_DATA.is_dir():
        pytest.skip("shared data not found")
    for rel in ALL_FILES:
        assert filecmp.cmp(SHIPPED_DATA / rel, SHARED_DATA / rel, shallow=False), rel
    assert (SHIPPED_DATA / "events" / "PROVENANCE.md").is_file()


# --------------------------------------------------------------------------- malformed files
def _copy(tmp_path: Path, rel: str) -> Path:
    dst = tmp_path / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SHIPPED_DATA / rel, dst)
    dst.chmod(0o644)
    return dst


def _break(path: Path, line: int, old: str, new: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert old in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    path.write_text("".join(lines), encoding="utf-8")


@pytest.mark.parametrize("rel,factory,line,old,new,field", [
    (CME_MARGINS_FILE, cme_margins_feed, 17, "12825", "12825x", "spec_initial_usd"),
    (CME_MARGINS_FILE, cme_margins_feed, 5, "2009-12-15", "2009-12-XX", "effective_date"),
    (CME_MARGINS_FILE, cme_margins_feed, 3, "SI,", "XAU,", "metal"),
    (MACRO_CALENDAR_FILE, macro_calendar_feed, 2, "2010-01-08T13:30:00Z", "2010-01-08 13:30", "datetime_utc"),
    (MACRO_CALENDAR_FILE, macro_calendar_feed, 2, "2010-01-08 08:30", "2010-01-08 09:30", "datetime_et"),
    (MACRO_CALENDAR_FILE, macro_calendar_feed, 2, ",NFP,", ",PPI,", "event"),
    (AI_LAUNCHES_FILE, ai_launches_feed, 2, "2022-01-07", "Jan 2022", "Publication date"),
])
def test_a_malformed_row_names_the_file_line_and_field(tmp_path, rel, factory, line, old, new, field):
    path = _copy(tmp_path, rel)
    _break(path, line, old, new)
    with pytest.raises(EventDataError) as err:
        factory(tmp_path)
    message = str(err.value)
    assert str(path) in message and f"line {line}," in message and repr(field) in message, message
    assert isinstance(err.value, DataFolderError)   # the CLI reports it like any data-folder error


def test_a_row_with_an_extra_field_names_the_file_and_line(tmp_path):
    path = _copy(tmp_path, CME_MARGINS_FILE)
    _break(path, 17, "12825", "12,825")
    with pytest.raises(EventDataError, match=r"compiled\.csv, line 17: 13 fields expected, the row has 14"):
        cme_margins_feed(tmp_path)


def test_a_missing_file_or_column_is_a_clear_error(tmp_path):
    with pytest.raises(EventDataError, match=r"event file missing: .*cme_gc_si_margin_changes_compiled\.csv"):
        cme_margins_feed(tmp_path)
    path = _copy(tmp_path, MACRO_CALENDAR_FILE)
    _break(path, 1, "status,", "state,")
    with pytest.raises(EventDataError, match=r"us_cpi_nfp_fomc_2010_2025\.csv, line 1: missing column\(s\) \['status'\]"):
        macro_calendar_feed(tmp_path)


# --------------------------------------------------------------------------- building feeds from data_needs
def test_build_event_feeds_builds_only_what_the_needs_name():
    needs = [DataNeed("bars", "SPY"), DataNeed("events", "cme_margin"), DataNeed("funding_rate", "BTC/USD"),
             DataNeed("events", "cme_margin")]
    built = build_event_feeds(needs, SHIPPED_DATA)
    assert [f.name for f in built] == ["cme_margins"]
    assert build_event_feeds([DataNeed("bars", "SPY")], Path("/nonexistent")) == []   # nothing read
    every = build_event_feeds([DataNeed("events", k) for k in ("ai_launch", "macro_release", "cme_margin")], SHIPPED_DATA)
    assert [f.name for f in every] == ["ai_launches", "macro_calendar", "cme_margins"]


def test_an_unknown_event_kind_is_refused_with_the_known_ones():
    with pytest.raises(EventKindError) as err:
        build_event_feeds([DataNeed("events", "earthquake")], SHIPPED_DATA)
    assert "'earthquake'" in str(err.value)
    assert all(k in str(err.value) for k in ("ai_launch", "cme_margin", "macro_release"))


def test_event_feeds_for_reads_the_plugins_data_needs():
    class Plugin:
        def __init__(self, name, *needs):
            self.name, self.data_needs = name, needs

    plugins = [Plugin("metals", DataNeed("bars", "GLD"), DataNeed("events", "cme_margin")),
               Plugin("macro", DataNeed("events", "macro_release"), DataNeed("events", "cme_margin")),
               Plugin("trend", DataNeed("bars", "SPY"))]
    assert [f.name for f in event_feeds_for(plugins, SHIPPED_DATA)] == ["cme_margins", "macro_calendar"]
    with pytest.raises(EventKindError, match=r"'weather'.*plugins per event kind: .*'weather': \['storm'\]"):
        event_feeds_for([*plugins, Plugin("storm", DataNeed("events", "weather"))], SHIPPED_DATA)


def test_live_needs_a_live_builder():
    """A kind without a live client is refused in a live session, not run without events (macro_release and
    cme_margin have live builders since issue #18; ai_launch has none yet)."""
    with pytest.raises(EventKindError, match=r"'ai_launch' has no live feed yet"):
        build_event_feeds([DataNeed("events", "ai_launch")], SHIPPED_DATA, live=True)


def test_live_macro_feed_without_fred_key_is_the_shipped_calendar_plus_the_fomc_schedule(monkeypatch, caplog):
    from datetime import datetime, timezone
    monkeypatch.delenv("FRED_API_KEY", raising=False)
    (feed,) = build_event_feeds([DataNeed("events", "macro_release")], SHIPPED_DATA, live=True)
    assert "FRED_API_KEY not set" in caplog.text and "2025-07-30" in caplog.text   # the calendar's end, warned
    later = [e for e in feed.events(datetime(2026, 12, 31, tzinfo=timezone.utc)) if e.happened_at.year == 2026]
    assert later and all(e.subject == "FOMC" for e in later)   # from the user-extendable schedule file


def test_a_factory_serving_several_kinds_is_built_once():
    class Feed:
        name, kinds = "news", ("headline", "filing")

        def events(self, now):
            return ()

        def health(self, now):
            return True, ""

    made = []
    factory = EventFeedFactory(("headline", "filing"), live=lambda d: made.append(Feed()) or made[-1])
    registry = {**EVENT_FEEDS, "headline": factory, "filing": factory}
    built = build_event_feeds([DataNeed("events", "headline"), DataNeed("events", "filing")], SHIPPED_DATA,
                              live=True, registry=registry)
    assert len(built) == 1 and len(made) == 1


# --------------------------------------------------------------------------- events in snapshots
def test_replay_snapshots_carry_the_known_events():
    feeds = build_event_feeds([DataNeed("events", "macro_release"), DataNeed("events", "cme_margin")], SHIPPED_DATA)
    market = ReplayMarketData(SHIPPED_DATA, ["BTC/USD"], event_feeds=feeds)
    now = utc(2024, 3, 10, 12)
    snap = market.snapshot(now)
    assert snap.events and all(e.known_at <= now for e in snap.events)
    assert [e.happened_at for e in snap.events] == sorted(e.happened_at for e in snap.events)
    cpi = snap.events_of("macro_release", "CPI")
    assert cpi[-1].happened_at == utc(2024, 3, 12, 12, 30)    # known a week ahead: the coming release
    assert snap.events_of("cme_margin", "GC")[-1].payload["effective_date"] == "2020-04-14"
    assert snap.events_of("ai_launch") == ()
    assert market.snapshot(now + timedelta(hours=1)).events is snap.events   # nothing new: same tuple
    assert not snap.feed_problems


def test_replay_without_feeds_has_no_events_and_no_event_work(monkeypatch):
    market = ReplayMarketData(SHIPPED_DATA, ["BTC/USD"])
    assert market._events is None   # the snapshot's only cost is this falsy check

    def boom(*a, **k):
        raise AssertionError("no event work without feeds")
    monkeypatch.setattr(EventMerger, "__call__", boom)
    snap = market.snapshot(utc(2024, 3, 10, 12))
    assert snap.events == () and snap.events_of("macro_release") == ()


def test_a_snapshot_without_events_is_unchanged():
    snap = MarketSnapshot(utc(2024, 1, 1))
    assert snap.events == () and snap.events_of("cme_margin", "SI") == ()


class _Base:
    def snapshot(self, now):
        return MarketSnapshot(now)

    def next_bar_open(self, symbol, after, now):
        return None


class _LiveFeed:
    def __init__(self, name, events, fail=False):
        self.name, self.kinds, self._events, self.fail = name, ("news",), events, fail

    def events(self, now):
        if self.fail:
            raise ConnectionError("source down")
        return list(self._events)   # a live client: a fresh list, and (here) a bug serving the future

    def health(self, now):
        return (not self.fail), ("ok" if not self.fail else "source down")


def test_live_event_feeds_fill_snapshots_and_never_raise():
    now = utc(2024, 5, 1, 12)
    past = Event("news", "BTC/USD", now - timedelta(hours=2), now - timedelta(hours=1))
    future = Event("news", "ETH/USD", now + timedelta(hours=1), now + timedelta(minutes=30))
    good, bad = _LiveFeed("headlines", [past, future]), _LiveFeed("filings", [past])
    market = MarketDataWithFeeds(_Base(), {}, event_feeds=[good, bad])
    market.snapshot(now)      # both fine: the bad feed's events are remembered
    bad.fail = True
    snap = market.snapshot(now + timedelta(minutes=5))
    assert future not in snap.events          # known_at in the future: filtered whatever the feed says
    assert snap.events == (past, past)        # the failing feed keeps its last good events
    assert snap.feed_problems == {"filings": "ConnectionError: source down"}


def test_live_wrapper_without_event_feeds_is_unchanged():
    snap = MarketDataWithFeeds(_Base(), {}).snapshot(utc(2024, 5, 1))
    assert snap.events == () and snap.feed_problems == {}
