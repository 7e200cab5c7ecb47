"""Event feeds: dated events (macro releases, CME margin changes, AI launches) served into snapshots.

Replay feeds read one file each from the data folder (``events/...``, the shared-data layout), validate
every row once, and serve ``events(now)`` by bisecting the ``known_at`` times: a multi-year hourly replay
calls it every cycle, so a call costs one ``timestamp()`` and one bisect, and returns the same tuple
object until something new becomes known.

Which feeds exist is decided by the plugins' ``data_needs``: ``DataNeed("events", "<kind>")`` names a
kind, :func:`build_event_feeds` looks it up in :data:`EVENT_FEEDS` (kind -> factory) and builds only
those feeds, in replay and live alike. A later live client is one more :class:`EventFeedFactory` (its
``live`` builder), not a new branch in the composition root.

``known_at`` rules (each feed's docstring has the detail; README "Dated events" the summary):

- ``macro_release``: the calendar is published well ahead, so a release is known 7 days before it
  happens -- except the two unscheduled FOMC moves of March 2020 (known when they happened) and the two
  BLS releases the October 2013 shutdown moved (known from the end of 2013-10-18, New York).
- ``cme_margin``: the advisory/news date (end of that New York day) when it is on or before the
  effective date; otherwise the effective close itself (CME announces a change before it takes effect;
  the later page only documents it) -- unless the row marks its effective date approximate, where the
  source's date is the first proof anyone knew.
- ``ai_launch``: the end of the publication date, US Pacific (the latest time zone a launch is dated in).
"""
from __future__ import annotations

import math
from bisect import bisect_right, insort
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from ..events import Event, EventFeed
from .event_files import (AI_LAUNCHES_FILE, CME_MARGINS_FILE, MACRO_CALENDAR_FILE, EventDataError,  # noqa: F401
                          read_ai_launches, read_cme_margins, read_macro_calendar)
from .replay import DataFolderError  # noqa: F401



class EventKindError(ValueError):
    """A plugin needs an event kind no feed serves (or none serves in this mode)."""


def _order(e: Event) -> tuple:
    return (e.happened_at, e.kind, e.subject)   # the order ``events.visible`` returns


# --------------------------------------------------------------------------- the replay feed
class ReplayEventFeed:
    """Events loaded once; ``events(now)`` is the ones with ``known_at <= now``, in ``happened_at`` order.

    ``stale_after``: for a feed with a cadence (the macro calendar: a release at least monthly), how long
    after its last event the file is taken to have ended; from then on ``health`` says so, and the
    replay snapshot names the feed in ``feed_problems`` (no silent gap where a plugin expects releases)."""

    def __init__(self, name: str, kinds: tuple[str, ...], events: Iterable[Event], *, path: Path | str = "",
                 stale_after: timedelta | None = None):
        self.name = name
        self.kinds = tuple(kinds)
        self.path = Path(path) if path else None
        by_known = sorted(events, key=lambda e: (e.known_at, _order(e)))
        self._by_known = by_known
        self._known_s = [e.known_at.timestamp() for e in by_known]   # floats: bisect on a list is ~100 ns
        # each event's place in happened_at order, so that serving keeps int ranks sorted (insort, in C)
        # instead of re-sorting events with a Python key each time one becomes known
        by_order = sorted(range(len(by_known)), key=lambda k: _order(by_known[k]))
        self._rank = [0] * len(by_known)
        for rank, k in enumerate(by_order):
            self._rank[k] = rank
        self._in_order = [by_known[k] for k in by_order]
        self._served_i = 0      # how many of _by_known the cached tuple holds ...
        self._served_ranks: list[int] = []   # ... their ranks, sorted
        self._served: tuple[Event, ...] = ()
        last = max((e.happened_at for e in by_known), default=None)
        self.last_happened_at = last
        self.covered_until = last + stale_after if last is not None and stale_after is not None else None
        # the epoch second from which the feed is unhealthy (read by ReplayMarketData once per cycle)
        self.unhealthy_from_s = self.covered_until.timestamp() if self.covered_until else math.inf

    def __len__(self) -> int:
        return len(self._by_known)

    @property
    def all_events(self) -> tuple[Event, ...]:
        """Every event in the file, known or not (tests and reports only: never hand it to a cycle)."""
        return tuple(sorted(self._by_known, key=_order))

    def events(self, now: datetime) -> tuple[Event, ...]:
        i = bisect_right(self._known_s, now.timestamp())
        if i != self._served_i:   # something became known (or the clock went back): rebuild once
            if i > self._served_i:
                ranks = self._served_ranks
                for k in range(self._served_i, i):
                    insort(ranks, self._rank[k])
            else:
                ranks = self._served_ranks = sorted(self._rank[:i])
            in_order = self._in_order
            self._served = tuple([in_order[r] for r in ranks])
            self._served_i = i
        return self._served

    @classmethod
    def combine(cls, feeds: Sequence[ReplayEventFeed]) -> ReplayEventFeed:
        """One feed over the events of several: a snapshot then bisects once, whatever the feed count."""
        return cls("+".join(f.name for f in feeds), tuple(k for f in feeds for k in f.kinds),
                   (e for f in feeds for e in f._by_known))

    def health(self, now: datetime) -> tuple[bool, str]:
        where = self.path.name if self.path else self.name
        if self.covered_until is not None and now > self.covered_until:
            return False, (f"{where} ends with its event of {self.last_happened_at:%Y-%m-%d %H:%M}Z; "
                           f"no later {'/'.join(self.kinds)} event is known")
        return True, f"{len(self)} events from {where}"


# --------------------------------------------------------------------------- merging feeds into a snapshot
class EventMerger:
    """The events of several feeds as one tuple in ``happened_at`` order, for ``MarketSnapshot.events``.

    Feeds built here (``ReplayEventFeed``) guarantee ``known_at <= now`` by construction and return the
    same tuple while nothing new is known, so the merge is reused with an identity check. Any other feed
    (a live client) is filtered through the look-ahead rule again: a feed bug must not leak the future.
    A failing feed never raises into the cycle: its last good events are kept and ``problems`` names it."""

    def __init__(self, feeds: Sequence[EventFeed]):
        self.feeds = tuple(feeds)
        self._trusted = tuple(isinstance(f, ReplayEventFeed) for f in self.feeds)
        # replay feeds only (the replay case): their events never change, so one combined feed serves
        # them with one bisect a cycle; health stays per feed (``check_health``)
        self._combined = (ReplayEventFeed.combine(self.feeds) if len(self.feeds) > 1 and all(self._trusted)
                          else None)
        self._last: list[Sequence[Event]] = [() for _ in self.feeds]
        self._parts: list[Sequence[Event]] | None = None
        self._merged: tuple[Event, ...] = ()

    def __call__(self, now: datetime, problems: dict[str, str] | None = None, *,
                 check_health: bool = False) -> tuple[Event, ...]:
        if self._combined is not None:
            if check_health:
                for feed in self.feeds:
                    ok, why = feed.health(now)
                    if not ok and problems is not None:
                        problems[feed.name] = why
            return self._combined.events(now)
        parts = []
        for k, feed in enumerate(self.feeds):
            try:
                got = feed.events(now)
                if not self._trusted[k]:
                    got = tuple(e for e in got if e.known_at <= now)
                self._last[k] = got
                if check_health:
                    ok, why = feed.health(now)
                    if not ok and problems is not None:
                        problems[feed.name] = why
            except Exception as exc:   # a feed bug must not take the trading loop down
                got = tuple(e for e in self._last[k] if e.known_at <= now)
                if problems is not None:
                    problems[getattr(feed, "name", type(feed).__name__)] = f"{type(exc).__name__}: {exc}"
            parts.append(got)
        if self._parts is not None and all(a is b for a, b in zip(parts, self._parts)):
            return self._merged
        self._parts = parts
        if len(parts) == 1:
            merged = parts[0] if isinstance(parts[0], tuple) else tuple(parts[0])
        else:
            merged = tuple(sorted((e for p in parts for e in p), key=_order))
        self._merged = merged
        return merged


# --------------------------------------------------------------------------- reading and validating files
def macro_calendar_feed(data_dir: Path) -> ReplayEventFeed:
    path = Path(data_dir) / MACRO_CALENDAR_FILE
    # releases come at least monthly: 40 days past the last one, the calendar file has ended
    return ReplayEventFeed("macro_calendar", ("macro_release",), read_macro_calendar(path), path=path,
                           stale_after=timedelta(days=40))


OPERATOR_MARGINS_FILE = "events/cme_margins/operator_margin_notices.csv"   # `hydra events add-margin` writes it
FOMC_SCHEDULE_FILE = "events/macro_calendar/fomc_schedule.csv"             # user-extendable FOMC dates


def cme_margins_feed(data_dir: Path) -> ReplayEventFeed:
    """The shipped margin history plus the operator-maintained notices (same columns; optional file)."""
    path = Path(data_dir) / CME_MARGINS_FILE
    events = read_cme_margins(path)
    operator = Path(data_dir) / OPERATOR_MARGINS_FILE
    if operator.is_file():
        events += read_cme_margins(operator)
    # no cadence (and known multi-year gaps): an end of file cannot be told from a quiet spell
    return ReplayEventFeed("cme_margins", ("cme_margin",), events, path=path)


def read_fomc_schedule(path: Path) -> list[Event]:
    """``macro_release`` FOMC events from the user-extendable schedule: columns ``date`` (YYYY-MM-DD),
    ``time_et`` (HH:MM New York, the statement), ``note``; known 7 days ahead like the shipped calendar."""
    import csv
    from datetime import datetime as _dt
    from .event_files import MACRO_LEAD, NEW_YORK, EventDataError
    from ..domain import UTC
    out = []
    with Path(path).open(newline="", encoding="utf-8") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            try:
                local = _dt.strptime(f"{row['date'].strip()} {row['time_et'].strip()}", "%Y-%m-%d %H:%M")
            except (ValueError, KeyError, AttributeError):
                raise EventDataError(f"{path}, line {line}, field 'date'/'time_et': expected YYYY-MM-DD and HH:MM "
                                     f"(value {row.get('date')!r} {row.get('time_et')!r})") from None
            happened = local.replace(tzinfo=NEW_YORK).astimezone(UTC)
            out.append(Event("macro_release", "FOMC", happened, happened - MACRO_LEAD,
                             {"event": "FOMC_DECISION", "known_rule": "scheduled_7d", "note": (row.get("note") or "").strip(),
                              "datetime_et": f"{local:%Y-%m-%d %H:%M}"}, source=str(path)))
    return out


def macro_live_feed(data_dir: Path) -> EventFeed:
    """Live ``macro_release``: the shipped calendar plus the FOMC schedule file (releases after the calendar's
    end), and FRED's CPI/NFP release dates when ``FRED_API_KEY`` is set. Without the key the shipped files
    are used and their end date is warned about (the feed's health says so once it has passed)."""
    import logging
    from ..adapters.fred import FredClient, FredReleaseFeed, api_key_from_env
    shipped = macro_calendar_feed(data_dir)
    last = shipped.last_happened_at
    extra = []
    schedule = Path(data_dir) / FOMC_SCHEDULE_FILE
    if schedule.is_file():
        extra = [e for e in read_fomc_schedule(schedule) if last is None or e.happened_at > last]
    files = ReplayEventFeed("macro_calendar", ("macro_release",), [*shipped._by_known, *extra],
                            path=shipped.path, stale_after=timedelta(days=40))
    key = api_key_from_env()
    if not key:
        logging.getLogger(__name__).warning(
            "FRED_API_KEY not set: macro releases from the shipped calendar (CPI/NFP end %s) and %s; "
            "set FRED_API_KEY for later CPI/NFP dates", f"{last:%Y-%m-%d}" if last else "?", FOMC_SCHEDULE_FILE)
        return files
    fred = FredReleaseFeed(FredClient(api_key=key))
    return _UnionFeed("macro_calendar+fred", ("macro_release",), (files, fred))


class _UnionFeed:
    """Several feeds of one kind as one: events de-duplicated by (subject, happened_at), the first feed wins."""

    def __init__(self, name: str, kinds: tuple[str, ...], feeds: Sequence[EventFeed]):
        self.name, self.kinds, self.feeds = name, kinds, tuple(feeds)

    def events(self, now: datetime) -> tuple[Event, ...]:
        seen, out = set(), []
        for f in self.feeds:
            for e in f.events(now):
                key = (e.subject, e.happened_at)
                if key not in seen:
                    seen.add(key)
                    out.append(e)
        return tuple(sorted(out, key=_order))

    def health(self, now: datetime) -> tuple[bool, str]:
        states = [f.health(now) for f in self.feeds]
        return any(ok for ok, _ in states), "; ".join(why for _, why in states)


def ai_launches_feed(data_dir: Path) -> ReplayEventFeed:
    path = Path(data_dir) / AI_LAUNCHES_FILE
    return ReplayEventFeed("ai_launches", ("ai_launch",), read_ai_launches(path), path=path)


@dataclass(frozen=True)
class EventFeedFactory:
    """How to build the feed of some event kinds: ``replay`` from the data folder, ``live`` from the
    source (None: not built yet -- a live session that needs the kind is refused, not run blind).
    Both take the data folder (a live client may ignore it) and return one feed serving ``kinds``."""

    kinds: tuple[str, ...]
    replay: Callable[[Path], EventFeed] | None = None
    live: Callable[[Path], EventFeed] | None = None


EVENT_FEEDS: dict[str, EventFeedFactory] = {}


def register_event_feed(factory: EventFeedFactory) -> EventFeedFactory:
    """Make ``factory`` the source of each of its kinds (a later live client: register a factory whose
    ``live`` is set, for the same kinds)."""
    for kind in factory.kinds:
        EVENT_FEEDS[kind] = factory
    return factory


register_event_feed(EventFeedFactory(("macro_release",), replay=macro_calendar_feed, live=macro_live_feed))
# live CME margins: the same files (CME publishes no machine-readable feed); the operator adds notices with
# `hydra events add-margin`, and a paper session reads them at start
register_event_feed(EventFeedFactory(("cme_margin",), replay=cme_margins_feed, live=cme_margins_feed))
register_event_feed(EventFeedFactory(("ai_launch",), replay=ai_launches_feed))


def curated_launches_feed(data_dir: Path) -> ReplayEventFeed:
    """``ai_model_launch``: the curated model-launch list (``data/ai_launch_list.py``; the data folder's
    copy, else the project's shipped one); live, plus GitHub SDK releases (``adapters/github_launches``)."""
    from .ai_launch_list import launch_list_path, read_launch_list
    path = launch_list_path(data_dir)
    return ReplayEventFeed("ai_model_launches", ("ai_model_launch",), read_launch_list(path), path=path)


def _live_launches_feed(data_dir: Path) -> EventFeed:
    from ..adapters.github_launches import live_launch_feed
    return live_launch_feed(data_dir)


register_event_feed(EventFeedFactory(("ai_model_launch",), replay=curated_launches_feed, live=_live_launches_feed))


def _news_replay(data_dir: Path) -> EventFeed:
    from ..adapters.news_feeds import news_replay_feed   # imported when built: the adapters import requests
    return news_replay_feed(data_dir)


def _news_live(data_dir: Path) -> EventFeed:
    from ..adapters.news_feeds import news_live_feed
    return news_live_feed(data_dir)


# headlines for the LLM news analyst (issue #22): the shipped files in replay, CryptoCompare + CryptoPanic live
register_event_feed(EventFeedFactory(("news",), replay=_news_replay, live=_news_live))


def event_kinds_needed(needs: Iterable) -> list[str]:
    """The event kinds named by ``DataNeed("events", kind)`` entries, first-seen order, once each."""
    return list(dict.fromkeys(n.symbol for n in needs if n.kind == "events"))


def build_event_feeds(needs: Iterable, data_dir: str | Path, *, live: bool = False,
                      registry: Mapping[str, EventFeedFactory] | None = None) -> list[EventFeed]:
    """The feeds serving the event kinds in ``needs`` (any ``DataNeed``s; only kind ``events`` count), one
    feed per factory even when it serves several needed kinds. Nothing needed: no feed, no file read.

    Raises :class:`EventKindError` for a kind no factory serves (naming it and the known kinds) or, with
    ``live``, one whose factory has no live builder yet; :class:`EventDataError` for a missing or
    malformed file."""
    registry = EVENT_FEEDS if registry is None else registry
    kinds = event_kinds_needed(needs)
    unknown = [k for k in kinds if k not in registry]
    if unknown:
        raise EventKindError(f"no event feed serves kind(s) {unknown} named in the plugins' data_needs; "
                             f"known event kinds: {sorted(registry)}")
    feeds: list[EventFeed] = []
    built: set[int] = set()
    for kind in kinds:
        factory = registry[kind]
        if id(factory) in built:
            continue
        build = factory.live if live else factory.replay
        if build is None:
            mode = "live" if live else "replay"
            have = sorted(k for k, f in registry.items() if (f.live if live else f.replay) is not None)
            raise EventKindError(f"event kind {kind!r} has no {mode} feed yet; kinds with a {mode} feed: {have}")
        feeds.append(build(Path(data_dir)))
        built.add(id(factory))
    return feeds


def event_feeds_for(strategies: Iterable, data_dir: str | Path, *, live: bool = False,
                    registry: Mapping[str, EventFeedFactory] | None = None,
                    extra_needs: Iterable = ()) -> list[EventFeed]:
    """What the composition root calls: the feeds for every ``DataNeed("events", kind)`` of the enabled
    plugins (objects with ``name`` and ``data_needs``) and ``extra_needs`` (the engine's own: the LLM
    analyst's ``news``). A refused kind names the plugins that need it."""
    strategies = list(strategies)
    try:
        return build_event_feeds([*(n for s in strategies for n in s.data_needs), *extra_needs], data_dir,
                                 live=live, registry=registry)
    except EventKindError as exc:
        wanted = {k: [s.name for s in strategies if any(n.kind == "events" and n.symbol == k for n in s.data_needs)]
                  for k in event_kinds_needed(n for s in strategies for n in s.data_needs)}
        raise EventKindError(f"{exc}; plugins per event kind: {wanted}") from None
