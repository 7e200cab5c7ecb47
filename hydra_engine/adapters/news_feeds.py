"""The ``news`` event kind's feeds, as the event registry builds them (``data/event_feeds.py``).

* **replay** (:func:`news_replay_feed`): every known headline file in ``<data folder>/news/`` -- the
  compact copy shipped in ``data/news/`` (the offline half-year), or all of ``../shared/data/news/`` when
  the data folder is the shared one -- read once by :class:`~.news.NewsReplayFeed` (its known-at rules)
  and served by a :class:`~hydra_engine.data.event_feeds.ReplayEventFeed`, so a cycle costs one bisect.
* **live** (:func:`news_live_feed`): CryptoCompare (``CRYPTOCOMPARE_API_KEY`` optional: the free tier
  answers without one) and CryptoPanic (``CRYPTOPANIC_AUTH_TOKEN``; left out, and said so in ``health``,
  without one), sharing one :class:`~.news.NewsDeduper`, so a story both carry reaches the analyst once.

Either way the event channel's point-in-time rule holds: ``events(now)`` holds only what was published
(known) at ``now``.
"""
from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Mapping, Sequence

from ..events import Event
from .news import CryptoCompareClient, CryptoPanicClient, NewsDeduper, NewsFeed, NewsReplayFeed

log = logging.getLogger(__name__)

NEWS_DIR = "news"
CRYPTOCOMPARE_KEY = "CRYPTOCOMPARE_API_KEY"
CRYPTOPANIC_TOKEN = "CRYPTOPANIC_AUTH_TOKEN"
_READABLE = ("crypto_headlines_", "cryptocompare_format_", "cryptocurrencynews_com_bitcoin", "cryptonews_kaggle",
             "googlenews_crypto")


def news_files(data_dir: Path) -> list[Path]:
    """The headline files under ``<data_dir>/news`` that the replay reader knows, in name order."""
    folder = Path(data_dir) / NEWS_DIR
    return sorted(p for p in folder.glob("*") if p.is_file() and p.name.startswith(_READABLE)
                  and p.name.endswith((".csv", ".csv.gz")))


def news_replay_feed(data_dir: Path):
    from ..data.event_feeds import ReplayEventFeed
    from ..data.event_files import EventDataError
    paths = news_files(data_dir)
    if not paths:
        raise EventDataError(f"{Path(data_dir) / NEWS_DIR}: no headline file (crypto_headlines_*.csv[.gz], ...) "
                             "for the news event kind")
    reader = NewsReplayFeed(paths)
    events = reader._load()
    log.info("news replay: %d events from %s (rows skipped %s, duplicates dropped %d)", len(events),
             [p.name for p in paths], reader.skipped, reader.deduper.dropped)
    return ReplayEventFeed("news_replay", ("news",), events, path=paths[0].parent)


class NewsFeeds:
    """Several live news feeds as the one feed the registry's contract asks for: their events merged
    (each feed's own look-ahead filter applies), healthy when at least one is; a failing one never raises."""

    kinds = ("news",)

    def __init__(self, feeds: Sequence[NewsFeed], notes: Sequence[str] = ()):
        self.feeds = list(feeds)
        self.notes = list(notes)
        self.name = "+".join(f.name for f in self.feeds) or "news"

    def events(self, now: datetime) -> list[Event]:
        out: list[Event] = []
        for feed in self.feeds:
            out += feed.events(now)
        return sorted(out, key=lambda e: (e.happened_at, e.kind, e.subject))

    def health(self, now: datetime) -> tuple[bool, str]:
        states = [feed.health(now) for feed in self.feeds]
        return any(ok for ok, _ in states), "; ".join([*(why for _, why in states), *self.notes])


def news_live_feed(data_dir: Path | None = None, environ: Mapping[str, str] | None = None,
                   sessions: Mapping[str, object] | None = None) -> NewsFeeds:
    """CryptoCompare always; CryptoPanic when its token is set. ``sessions``: tests only (provider -> a
    ``requests``-like session)."""
    env = os.environ if environ is None else environ
    sessions = sessions or {}
    deduper = NewsDeduper()
    key = env.get(CRYPTOCOMPARE_KEY, "").strip() or None
    feeds = [NewsFeed(CryptoCompareClient(sessions.get("cryptocompare"), key), deduper=deduper)]
    notes = []
    token = env.get(CRYPTOPANIC_TOKEN, "").strip()
    if token:
        feeds.append(NewsFeed(CryptoPanicClient(sessions.get("cryptopanic"), token), deduper=deduper))
    else:
        notes.append(f"CryptoPanic off: {CRYPTOPANIC_TOKEN} is not set")
    return NewsFeeds(feeds, notes)
