"""``MarketSnapshot.events_of`` keeps its answers per events tuple (issue #24); they equal the replaced full
scan (``_events_of_reference``, verbatim below) on the real event feeds of /work/shared/data (every kind
and several subjects, daily 2020-2024 at a different hour each day) and when tuples alternate, repeat with
equal contents, are lists, or are empty."""
from __future__ import annotations

from datetime import timedelta

import pandas as pd

from hydra_engine.data.event_feeds import EVENT_FEEDS, EventMerger, build_event_feeds
from hydra_engine.events import Event
from hydra_engine.ports import MarketSnapshot
from hydra_engine.strategy import DataNeed


def _events_of_reference(self, kind, subject=None):
    """The known events of ``kind`` (and ``subject``, when given), in ``happened_at`` order; this
    includes scheduled ones still to happen (a CPI release known a week ahead)."""
    if not self.events:
        return ()
    return tuple(e for e in self.events if e.kind == kind and (subject is None or e.subject == subject))


def _queries(events) -> list[tuple[str, str | None]]:
    kinds = sorted(EVENT_FEEDS) + ["no_such_kind"]
    subjects = sorted({e.subject for e in events})[:3] + ["no_such_subject"]
    return [(k, None) for k in kinds] + [(k, s) for k in ("macro_release", "cme_margin", "news") for s in subjects]


def test_events_of_equals_the_full_scan_on_the_real_feeds(shared_data):
    feeds = build_event_feeds([DataNeed("events", k) for k, f in EVENT_FEEDS.items() if f.replay is not None],
                              shared_data)
    merger = EventMerger(feeds)
    start = pd.Timestamp("2020-01-01T00:00Z").to_pydatetime()
    checked = shared = 0
    previous = None
    for d in range(0, 1827):
        now = start + timedelta(days=d, hours=d % 24)
        events = merger(now)
        shared += events is previous
        previous = events
        snap, again = MarketSnapshot(now=now, events=events), MarketSnapshot(now=now, events=events)
        for kind, subject in _queries(events):   # ``again``: the same tuple, answered from the memo
            want = _events_of_reference(snap, kind, subject)
            assert snap.events_of(kind, subject) == want and again.events_of(kind, subject) == want, (now, kind)
            checked += bool(want)
    assert checked > 5_000 and shared > 100 and len(previous) > 3000


def _ev(kind, subject, day):
    t = pd.Timestamp("2024-01-01T00:00Z").to_pydatetime() + timedelta(days=day)
    return Event(kind=kind, subject=subject, happened_at=t, known_at=t)


def test_events_of_with_alternating_equal_list_and_empty_events():
    a = (_ev("macro_release", "CPI", 1), _ev("news", "BTC/USD", 2), _ev("macro_release", "NFP", 3))
    b = (_ev("macro_release", "FOMC", 4),)
    a_copy = tuple(list(a))
    for events in (a, b, a, (), a_copy, list(a), b, list(b), a, [], b):
        snap = MarketSnapshot(now=a[0].known_at, events=events)
        for kind, subject in [("macro_release", None), ("macro_release", "CPI"), ("news", None),
                              ("news", "ETH/USD"), ("cme_margin", None)]:
            assert snap.events_of(kind, subject) == _events_of_reference(snap, kind, subject)
            assert type(snap.events_of(kind, subject)) is tuple
    assert MarketSnapshot(now=a[0].known_at, events=a).events_of("macro_release") == (a[0], a[2])
    assert MarketSnapshot(now=a[0].known_at, events=b).events_of("macro_release") == b
