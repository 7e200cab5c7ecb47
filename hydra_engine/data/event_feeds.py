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

import csv
import math
import re
from bisect import bisect_right, insort
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence
from zoneinfo import ZoneInfo

from ..domain import UTC
from ..events import Event, EventFeed
from .replay import DataFolderError

NEW_YORK = ZoneInfo("America/New_York")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")


class EventDataError(DataFolderError):
    """An event file is missing or a row is malformed; the message names the file, line and field."""


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
class _Rows:
    """A CSV file's rows as dicts with the line each starts on, and errors that name file, line, field."""

    def __init__(self, path: Path, required: Sequence[str]):
        self.path = path
        if not path.is_file():
            raise EventDataError(f"event file missing: {path}")
        self.required = required

    def __iter__(self):
        with self.path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in self.required if c not in (reader.fieldnames or [])]
            if missing:
                raise EventDataError(f"{self.path}, line 1: missing column(s) {missing}; header is {reader.fieldnames}")
            start = reader.line_num + 1
            for row in reader:   # a quoted field may span lines: report the line the record starts on
                if None in row or any(v is None for v in row.values()):   # csv's markers for too many/few
                    count = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or ())
                    raise EventDataError(f"{self.path}, line {start}: {len(reader.fieldnames)} fields expected, "
                                         f"the row has {count} (an unquoted comma?)")
                yield start, row
                start = reader.line_num + 1

    def error(self, line: int, field: str, why: str, value: object) -> EventDataError:
        return EventDataError(f"{self.path}, line {line}, field {field!r}: {why} (value {value!r})")

    def date(self, line: int, row: Mapping[str, str], field: str) -> date:
        raw = row[field].strip()
        try:
            if len(raw) != 10:   # fromisoformat also takes 20221110, which no file here writes
                raise ValueError(raw)
            return date.fromisoformat(raw)
        except ValueError:
            raise self.error(line, field, "expected a date YYYY-MM-DD", raw) from None

    def number(self, line: int, row: Mapping[str, str], field: str) -> float | None:
        raw = row[field].strip()
        if not raw:
            return None
        try:
            value = float(raw)
        except ValueError:
            raise self.error(line, field, "expected a number or nothing", raw) from None
        if not math.isfinite(value):
            raise self.error(line, field, "expected a finite number", raw)
        return value

    def text(self, line: int, row: Mapping[str, str], field: str) -> str:
        raw = row[field].strip()
        if not raw:
            raise self.error(line, field, "must not be empty", raw)
        return raw


def _end_of_day(day: date, zone: ZoneInfo) -> datetime:
    """The first instant after ``day`` in ``zone``, as UTC (DST-aware)."""
    return datetime.combine(day + timedelta(days=1), time(0), zone).astimezone(UTC)


# ---- (a) US macro releases
MACRO_CALENDAR_FILE = "events/macro_calendar/us_cpi_nfp_fomc_2010_2025.csv"
MACRO_LEAD = timedelta(days=7)   # BLS and the Fed publish the year's dates long before; 7 days is conservative
_MACRO_SUBJECTS = {"CPI": "CPI", "NFP": "NFP", "FOMC_DECISION": "FOMC"}
_MACRO_STATUSES = {"confirmed_ff_and_rleydev", "date_confirmed_time_differs_ff_used",
                   "ff_only_rleydev_missing_or_wrong_date", "rleydev_only_unverified"}
# not on any published schedule: known only when they happened (PROVENANCE: 2020 has 9 FOMC statements)
UNSCHEDULED_MACRO = {datetime(2020, 3, 3, 15, 0, tzinfo=UTC), datetime(2020, 3, 15, 21, 0, tzinfo=UTC)}
# moved by the October 2013 shutdown (it ended 2013-10-17; BLS then posted new dates): a 7-day lead would
# date them inside the shutdown, when nobody knew them. Known from the end of 2013-10-18, New York.
RESCHEDULED_MACRO = {
    datetime(2013, 10, 22, 12, 30, tzinfo=UTC): _end_of_day(date(2013, 10, 18), NEW_YORK),   # September NFP
    datetime(2013, 10, 30, 12, 30, tzinfo=UTC): _end_of_day(date(2013, 10, 18), NEW_YORK),   # September CPI
}


def read_macro_calendar(path: Path) -> list[Event]:
    """``macro_release`` events: subject ``CPI``, ``NFP`` or ``FOMC`` (the file's ``FOMC_DECISION``);
    ``happened_at`` = ``datetime_utc`` (checked against ``datetime_et``, New York wall clock); payload:
    ``event`` (the file's name), ``status`` (how the time was cross-checked), ``datetime_et``, ``known_rule``
    (``scheduled_7d``, ``unscheduled``, ``rescheduled``), ``source_url`` (BLS/Fed page, may be empty),
    ``source_ff``."""
    rows = _Rows(path, ("datetime_utc", "datetime_et", "event", "status", "source_ff", "rleydev_source_url"))
    events: list[Event] = []
    seen: dict[tuple[str, datetime], int] = {}
    for line, row in rows:
        raw = row["datetime_utc"].strip()
        try:
            happened = datetime.strptime(raw, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise rows.error(line, "datetime_utc", "expected YYYY-MM-DDTHH:MM:SSZ (UTC)", raw) from None
        et = row["datetime_et"].strip()
        try:
            wall = datetime.strptime(et, "%Y-%m-%d %H:%M").replace(tzinfo=NEW_YORK)
        except ValueError:
            raise rows.error(line, "datetime_et", "expected YYYY-MM-DD HH:MM (New York)", et) from None
        if wall.astimezone(UTC) != happened:
            raise rows.error(line, "datetime_et", f"is not datetime_utc {raw} in New York time", et)
        name = row["event"].strip()
        subject = _MACRO_SUBJECTS.get(name)
        if subject is None:
            raise rows.error(line, "event", f"expected one of {sorted(_MACRO_SUBJECTS)}", name)
        status = row["status"].strip()
        if status not in _MACRO_STATUSES:
            raise rows.error(line, "status", f"expected one of {sorted(_MACRO_STATUSES)}", status)
        if (subject, happened) in seen:
            raise rows.error(line, "datetime_utc", f"{subject} at this time is already on line {seen[subject, happened]}", raw)
        seen[subject, happened] = line
        if happened in UNSCHEDULED_MACRO:
            known, rule = happened, "unscheduled"
        elif happened in RESCHEDULED_MACRO:
            known, rule = RESCHEDULED_MACRO[happened], "rescheduled"
        else:
            known, rule = happened - MACRO_LEAD, "scheduled_7d"
        events.append(Event("macro_release", subject, happened, known, {
            "event": name, "status": status, "datetime_et": et, "known_rule": rule,
            "source_url": row["rleydev_source_url"].strip(), "source_ff": row["source_ff"].strip()},
            source=str(path)))
    return events


# ---- (b) CME gold and silver margin changes
CME_MARGINS_FILE = "events/cme_margins/cme_gc_si_margin_changes_compiled.csv"
CME_CLOSE = time(17, 0)   # COMEX metals on Globex stop at 17:00 New York; "after the close of business"
_CME_SUBJECTS = {"GC", "SI", "ALL"}   # ALL: the 2026-01-13 switch to % of notional for every metal
_PCT_NOTIONAL = re.compile(r"pct_notional (\d+(?:\.\d+)?)->(\d+(?:\.\d+)?)")


def _pct(new: float | None, old: float | None) -> float | None:
    return None if new is None or not old else round((new / old - 1) * 100, 2)


def _direction(pct: float | None) -> str:
    if pct is None:
        return "unknown"
    return "hike" if pct > 0 else "cut" if pct < 0 else "unchanged"


def read_cme_margins(path: Path) -> list[Event]:
    """``cme_margin`` events: subject ``GC`` or ``SI`` (``ALL`` for the 2026-01-13 methodology row);
    ``happened_at`` = ``effective_date`` at 17:00 New York (the change applies from the next session).

    ``known_at``: the end of ``source_date`` (New York) when that is a full date on or before the
    effective date, capped at ``happened_at``; otherwise (a later compilation such as the 2011 Reuters
    factbox, a month-only or missing date) ``happened_at``: CME announces a change before it takes effect,
    and the feed does not guess how long before. A row whose ``effective_note`` says ``approx`` has no
    reliable effective date: it is known from the end of its full ``source_date``, even after happened_at.

    Payload: ``contract``, ``effective_date``, ``effective_note``, ``basis``, ``initial_usd``,
    ``maintenance_usd``, ``prev_initial_usd``, ``prev_maintenance_usd`` (None where the page gave none),
    ``pct_change_reported``, ``pct_change_initial`` / ``pct_change_maintenance`` (computed from the
    levels where both are there), ``margin_pct_notional`` / ``prev_margin_pct_notional`` (from 2026, the
    ``pct_notional A->B`` basis), ``pct_change`` (reported, else computed) with ``pct_change_basis``,
    ``direction`` (``hike``, ``cut``, ``unchanged``, ``mixed``, ``unknown``, ``methodology``),
    ``source_url``, ``source_date``, ``source_type``."""
    rows = _Rows(path, ("metal", "contract", "effective_date", "effective_note", "spec_initial_usd",
                        "spec_maintenance_usd", "prev_spec_initial_usd", "prev_spec_maintenance_usd",
                        "pct_change_reported", "basis", "source_url", "source_date", "source_type"))
    events: list[Event] = []
    for line, row in rows:
        metal = row["metal"].strip()
        if metal not in _CME_SUBJECTS:
            raise rows.error(line, "metal", f"expected one of {sorted(_CME_SUBJECTS)}", metal)
        effective = rows.date(line, row, "effective_date")
        happened = datetime.combine(effective, CME_CLOSE, NEW_YORK).astimezone(UTC)
        note = row["effective_note"].strip()
        source_url = rows.text(line, row, "source_url")
        raw_source_date = row["source_date"].strip()
        source_day = None
        if len(raw_source_date) == 10:
            source_day = rows.date(line, row, "source_date")
        elif raw_source_date and not re.fullmatch(r"\d{4}-\d{2}", raw_source_date):
            raise rows.error(line, "source_date", "expected YYYY-MM-DD, YYYY-MM or nothing", raw_source_date)
        if "approx" in note.lower():   # the effective date is a guess of the page: only its date is evidence
            if source_day is None:
                raise rows.error(line, "source_date", "an approximate effective date needs a full source date",
                                 raw_source_date)
            known = _end_of_day(source_day, NEW_YORK)
        elif source_day is not None and source_day <= effective:
            known = min(_end_of_day(source_day, NEW_YORK), happened)
        else:
            known = happened
        initial, maintenance = rows.number(line, row, "spec_initial_usd"), rows.number(line, row, "spec_maintenance_usd")
        prev_initial = rows.number(line, row, "prev_spec_initial_usd")
        prev_maintenance = rows.number(line, row, "prev_spec_maintenance_usd")
        reported = rows.number(line, row, "pct_change_reported")
        basis = row["basis"].strip()
        payload: dict[str, object] = {
            "contract": row["contract"].strip(), "effective_date": effective.isoformat(), "effective_note": note,
            "basis": basis, "initial_usd": initial, "maintenance_usd": maintenance,
            "prev_initial_usd": prev_initial, "prev_maintenance_usd": prev_maintenance,
            "pct_change_reported": reported, "pct_change_initial": _pct(initial, prev_initial),
            "pct_change_maintenance": _pct(maintenance, prev_maintenance),
            "margin_pct_notional": None, "prev_margin_pct_notional": None,
            "source_url": source_url, "source_date": raw_source_date, "source_type": row["source_type"].strip()}
        notional = _PCT_NOTIONAL.fullmatch(basis)
        if basis == "switch_to_pct_of_notional":
            pct, pct_basis, direction = None, "none", "methodology"
        elif notional:
            before, after = float(notional.group(1)), float(notional.group(2))
            payload["prev_margin_pct_notional"], payload["margin_pct_notional"] = before, after
            pct, pct_basis = _pct(after, before), "computed_pct_notional"
            direction = _direction(pct)
        elif basis == "usd_per_contract":
            if reported is not None:
                pct, pct_basis, direction = reported, "reported", _direction(reported)
            else:
                computed = [p for p in (payload["pct_change_maintenance"], payload["pct_change_initial"]) if p is not None]
                pct = computed[0] if computed else None
                pct_basis = ("computed_maintenance" if payload["pct_change_maintenance"] is not None
                             else "computed_initial" if computed else "none")
                directions = {_direction(p) for p in computed}
                direction = directions.pop() if len(directions) == 1 else "mixed" if directions else "unknown"
        else:
            raise rows.error(line, "basis", "expected usd_per_contract, switch_to_pct_of_notional or "
                                            "'pct_notional A->B'", basis)
        if metal == "ALL" and direction != "methodology":
            raise rows.error(line, "metal", "ALL is only for the methodology row (basis switch_to_pct_of_notional)", metal)
        payload.update(pct_change=pct, pct_change_basis=pct_basis, direction=direction)
        events.append(Event("cme_margin", metal, happened, known, payload, source=source_url))
    return events


# ---- (c) AI model launches
AI_LAUNCHES_FILE = "events/ai_launches/epoch_notable_models_2022_2025_subset.csv"


def read_ai_launches(path: Path) -> list[Event]:
    """``ai_launch`` events from Epoch AI's "Notable AI Models" (rows published 2022-01-01 on): subject =
    the model's name; ``happened_at`` = the publication date, 00:00 UTC (the file has no time of day);
    ``known_at`` = the end of that date in US Pacific time, the latest zone a launch is dated in (a
    launch dated D anywhere from Asia to California is public by then). Payload: ``organization``,
    ``publication_date``, ``domain`` (tuple), ``frontier`` (bool), ``accessibility``, ``link``.
    Caveat (PROVENANCE): the publication date is not the market's reaction day (DeepSeek-R1: 2025-01-20,
    the sell-off 2025-01-27)."""
    rows = _Rows(path, ("Model", "Organization", "Publication date", "Domain", "Frontier model",
                        "Model accessibility", "Link"))
    events: list[Event] = []
    for line, row in rows:
        model = rows.text(line, row, "Model")
        published = rows.date(line, row, "Publication date")
        frontier = row["Frontier model"].strip()
        if frontier not in ("", "True", "False"):
            raise rows.error(line, "Frontier model", "expected True, False or nothing", frontier)
        happened = datetime.combine(published, time(0), UTC)
        events.append(Event("ai_launch", model, happened, _end_of_day(published, LOS_ANGELES), {
            "organization": row["Organization"].strip(), "publication_date": published.isoformat(),
            "domain": tuple(d.strip() for d in row["Domain"].split(",") if d.strip()),
            "frontier": frontier == "True", "accessibility": row["Model accessibility"].strip(),
            "link": row["Link"].strip()}, source=str(path)))
    return events


# --------------------------------------------------------------------------- the registry
def macro_calendar_feed(data_dir: Path) -> ReplayEventFeed:
    path = Path(data_dir) / MACRO_CALENDAR_FILE
    # releases come at least monthly: 40 days past the last one, the calendar file has ended
    return ReplayEventFeed("macro_calendar", ("macro_release",), read_macro_calendar(path), path=path,
                           stale_after=timedelta(days=40))


def cme_margins_feed(data_dir: Path) -> ReplayEventFeed:
    path = Path(data_dir) / CME_MARGINS_FILE
    # no cadence (and known multi-year gaps): an end of file cannot be told from a quiet spell
    return ReplayEventFeed("cme_margins", ("cme_margin",), read_cme_margins(path), path=path)


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


register_event_feed(EventFeedFactory(("macro_release",), replay=macro_calendar_feed))
register_event_feed(EventFeedFactory(("cme_margin",), replay=cme_margins_feed))
register_event_feed(EventFeedFactory(("ai_launch",), replay=ai_launches_feed))


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
                    registry: Mapping[str, EventFeedFactory] | None = None) -> list[EventFeed]:
    """What the composition root calls: the feeds for every ``DataNeed("events", kind)`` of the enabled
    plugins (objects with ``name`` and ``data_needs``). A refused kind names the plugins that need it."""
    strategies = list(strategies)
    try:
        return build_event_feeds([n for s in strategies for n in s.data_needs], data_dir, live=live,
                                 registry=registry)
    except EventKindError as exc:
        wanted = {k: [s.name for s in strategies if any(n.kind == "events" and n.symbol == k for n in s.data_needs)]
                  for k in event_kinds_needed(n for s in strategies for n in s.data_needs)}
        raise EventKindError(f"{exc}; plugins per event kind: {wanted}") from None
