"""Dated events: things that happen at a known time (a CPI release, a CME margin notice, an AI launch,
a news headline) as opposed to bars and point series.

An :class:`Event` carries two times: ``happened_at`` (when it took or takes effect: the 08:30 release,
the margin change's effective close) and ``known_at`` (when a trader could first have known it: the
calendar's publication, the advisory's date, the headline's stamp). A scheduled release is known long
before it happens; a margin notice is known a day before it takes effect; a headline is known when it is
published. Nothing may see an event before ``known_at`` -- that is the one look-ahead rule of the channel,
enforced by :func:`visible` for every feed.

Feeds implement :class:`EventFeed`: replay feeds read files in the data folder, live feeds poll their
source. A plugin declares ``DataNeed("events", "<kind>")`` and the composition root builds the feeds
that serve those kinds (see ``hydra_engine/data/event_feeds.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable, Mapping, Protocol, Sequence, runtime_checkable

from .domain import require_utc


@dataclass(frozen=True, slots=True)
class Event:
    """One dated event. ``kind`` names the family (``macro_release``, ``cme_margin``, ``ai_launch``,
    ``news``); ``subject`` what it is about (``CPI``, ``SI``, ``claude-3-opus``, ``BTC/USD``);
    ``payload`` the family's own fields (documented by each feed)."""

    kind: str
    subject: str
    happened_at: datetime
    known_at: datetime
    payload: Mapping[str, object] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        require_utc(self.happened_at, "Event.happened_at")
        require_utc(self.known_at, "Event.known_at")
        if not self.kind or not self.subject:
            raise ValueError("an event needs a kind and a subject")


def visible(events: Iterable[Event], now: datetime) -> list[Event]:
    """The events known at ``now`` (``known_at <= now``), in ``happened_at`` order."""
    return sorted((e for e in events if e.known_at <= now), key=lambda e: (e.happened_at, e.kind, e.subject))


@runtime_checkable
class EventFeed(Protocol):
    """A source of dated events of the ``kinds`` it names.

    ``events(now)`` returns every event of those kinds known at ``now`` (``known_at <= now``), past and
    scheduled-future alike: a calendar release known a month ahead is visible from then on. A live feed
    may refresh from its source inside this call and must never raise for a source failure: it keeps
    what it had and reports the problem through ``health``. The result may be a list or a tuple: a replay
    feed returns the same tuple while nothing new became known, so a cycle costs no copy."""

    name: str
    kinds: tuple[str, ...]

    def events(self, now: datetime) -> Sequence[Event]: ...

    def health(self, now: datetime) -> tuple[bool, str]: ...
