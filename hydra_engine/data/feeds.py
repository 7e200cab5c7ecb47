"""Market data with side feeds: a base source (Alpaca bars and quotes) plus point-series feeds
(Binance funding and open interest) and event feeds (dated events, ``data/event_feeds.py``) merged into
one snapshot.

A feed that fails or goes stale never raises into the cycle: its series simply stop advancing and
the snapshot names the problem, so the strategies that depend on it stand down (their freshness
checks find no recent data) while the others go on.
"""
from __future__ import annotations

from datetime import datetime
from typing import Protocol, Sequence

from ..events import EventFeed
from ..ports import MarketData, MarketSnapshot, PointSeries
from .event_feeds import EventMerger


class PointFeed(Protocol):
    def refresh(self, now: datetime) -> bool: ...

    def series(self, now: datetime) -> dict[tuple[str, str], PointSeries]: ...

    def health(self, now: datetime | None = None) -> tuple[bool, str]: ...


class MarketDataWithFeeds:
    """``event_feeds``: the feeds ``build_event_feeds(needs, data_dir, live=True)`` returned. Their events
    known at ``now`` go into ``snapshot.events`` (after the base's own, if any); a feed that raises or
    says it is unhealthy is named in ``snapshot.feed_problems`` and its last good events are kept."""

    def __init__(self, base: MarketData, feeds: dict[str, PointFeed], event_feeds: Sequence[EventFeed] = ()):
        self.base = base
        self.feeds = feeds
        self.event_feeds = tuple(event_feeds)
        self._events = EventMerger(self.event_feeds) if self.event_feeds else None

    def snapshot(self, now: datetime) -> MarketSnapshot:
        snap = self.base.snapshot(now)
        for name, feed in self.feeds.items():
            try:
                feed.refresh(now)
                snap.series.update(feed.series(now))
                ok, why = feed.health(now)
            except Exception as exc:  # a feed bug must not take the trading loop down
                ok, why = False, f"{type(exc).__name__}: {exc}"
            if not ok:
                snap.feed_problems[name] = why
        if self._events is not None:
            events = self._events(now, snap.feed_problems, check_health=True)
            if snap.events:   # the base had its own (a replay base with feeds): one happened_at order
                events = tuple(sorted((*snap.events, *events), key=lambda e: (e.happened_at, e.kind, e.subject)))
            snap.events = events
        return snap

    def next_bar_open(self, symbol, after, now):
        return self.base.next_bar_open(symbol, after, now)
