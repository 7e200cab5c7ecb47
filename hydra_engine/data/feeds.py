"""Market data with side feeds: a base source (Alpaca bars and quotes) plus point-series feeds
(Binance funding and open interest) merged into one snapshot.

A feed that fails or goes stale never raises into the cycle: its series simply stop advancing and
the snapshot names the problem, so the strategies that depend on it stand down (their freshness
checks find no recent data) while the others go on.
"""
from __future__ import annotations

from datetime import datetime
from typing import Protocol

from ..ports import MarketData, MarketSnapshot, PointSeries


class PointFeed(Protocol):
    def refresh(self, now: datetime) -> bool: ...

    def series(self, now: datetime) -> dict[tuple[str, str], PointSeries]: ...

    def health(self, now: datetime | None = None) -> tuple[bool, str]: ...


class MarketDataWithFeeds:
    def __init__(self, base: MarketData, feeds: dict[str, PointFeed]):
        self.base = base
        self.feeds = feeds

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
        return snap

    def next_bar_open(self, symbol, after, now):
        return self.base.next_bar_open(symbol, after, now)
