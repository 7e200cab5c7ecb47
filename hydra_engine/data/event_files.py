"""The event files in the data folder, read and validated: the US macro calendar, the CME gold/silver
margin changes and the AI launch list. Each reader returns :class:`~hydra_engine.events.Event`s with the
``known_at`` rule documented in ``event_feeds`` (and README "Dated events"); a bad row is an
:class:`EventDataError` naming the file, the line and the field."""
from __future__ import annotations

import csv
import math
import re
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Mapping, Sequence
from zoneinfo import ZoneInfo

from ..domain import UTC
from ..events import Event
from .replay import DataFolderError

NEW_YORK = ZoneInfo("America/New_York")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")


class EventDataError(DataFolderError):
    """An event file is missing or a row is malformed; the message names the file, line and field."""


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
