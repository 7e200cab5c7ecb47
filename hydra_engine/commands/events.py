"""``hydra events list|add-margin|ai-launch add``: the dated events the plugins see, the operator's CME margin
notices and the curated AI model-launch list.

``list`` prints the events of the data folder's feeds (``--kind macro_release|cme_margin|ai_launch``,
``--since``/``--until`` dates). ``add-margin`` appends one COMEX margin notice to
``events/cme_margins/operator_margin_notices.csv`` in the data folder (read with the shipped history by the
``cme_margin`` feed, offline and on paper) after validating it with the same reader: a malformed notice is
refused with the field it got wrong, and nothing is written. ``ai-launch add`` appends one model launch to
the data folder's curated list (``events/ai_launches/model_launches_curated.csv``; a folder without its own
copy gets one, the shipped list plus the new row) after :func:`validate_launch_rows` accepted it together
with the rows already there: a bad field (a slug, a date, a first session before the launch was public, a
duplicate id) is refused with the line and field named, and nothing is written.
"""
from __future__ import annotations

import csv
import re
import shutil
import sys
import tempfile
from datetime import date, datetime
from pathlib import Path

from . import config_option

EXIT_OK, EXIT_USAGE, EXIT_INVALID = 0, 2, 3
COLUMNS = ("metal", "contract", "effective_date", "effective_note", "spec_initial_usd", "spec_maintenance_usd",
           "prev_spec_initial_usd", "prev_spec_maintenance_usd", "pct_change_reported", "basis", "source_url",
           "source_date", "source_type")
CONTRACTS = {"GC": "COMEX 100 oz gold", "SI": "COMEX 5000 oz silver"}


def register(subparsers) -> None:
    p = subparsers.add_parser("events", help="list dated events; add a CME margin notice",
                              description="List the events the plugins see (macro releases, CME margin changes, "
                              "AI launches), or add an operator CME margin notice (validated).",
                              parents=[config_option()])
    sub = p.add_subparsers(dest="events_cmd", required=True)
    ls = sub.add_parser("list", help="print events of the data folder's feeds", parents=[config_option()])
    ls.add_argument("--kind", choices=("macro_release", "cme_margin", "ai_launch"), default=None)
    ls.add_argument("--since", type=date.fromisoformat, default=None, help="YYYY-MM-DD (happened on/after)")
    ls.add_argument("--until", type=date.fromisoformat, default=None, help="YYYY-MM-DD (happened before)")
    ls.add_argument("--data", default=None, help="data folder (default: data.replay_dir)")
    ls.set_defaults(func=handle_list)
    add = sub.add_parser("add-margin", help="append a COMEX gold/silver margin notice (validated)",
                         parents=[config_option()])
    add.add_argument("--metal", required=True, help="GC (gold) or SI (silver)")
    add.add_argument("--effective", required=True, help="effective after the close of YYYY-MM-DD")
    add.add_argument("--initial", default="", help="new initial margin, USD per contract")
    add.add_argument("--maintenance", default="", help="new maintenance margin, USD per contract")
    add.add_argument("--prev-initial", default="", help="previous initial margin, USD per contract")
    add.add_argument("--prev-maintenance", default="", help="previous maintenance margin, USD per contract")
    add.add_argument("--pct-change", default="", help="reported %% change (e.g. 12.5 or -10)")
    add.add_argument("--source", required=True, help="URL of the CME advisory or news report")
    add.add_argument("--source-date", default="", help="YYYY-MM-DD the notice was published (default: today)")
    add.add_argument("--data", default=None, help="data folder (default: data.replay_dir)")
    add.set_defaults(func=handle_add)
    ai = sub.add_parser("ai-launch", help="the curated AI model-launch list (strategy 4)", parents=[config_option()])
    ai_sub = ai.add_subparsers(dest="ai_cmd", required=True)
    la = ai_sub.add_parser("add", help="append a model launch to the curated list (validated)",
                           parents=[config_option()])
    la.add_argument("--id", required=True, help="launch_id: a lower-case slug (e.g. claude-4-opus)")
    la.add_argument("--model", required=True, help="the model's public name")
    la.add_argument("--organization", required=True, help="who launched it (OpenAI, Anthropic...)")
    la.add_argument("--announced", required=True, help="YYYY-MM-DD the launch was public")
    la.add_argument("--announced-at", default="", help="ISO time with UTC offset when known (an SDK tag's time)")
    la.add_argument("--first-session", default="", help="YYYY-MM-DD first US session that could react (default: "
                    "from the data folder's SPY sessions; required beyond them)")
    la.add_argument("--source", required=True, help="where the launch is documented (URL or file)")
    la.add_argument("--source-ref", required=True, help="the line/entry in that source")
    la.add_argument("--note", default="", help="free text")
    la.add_argument("--data", default=None, help="data folder (default: data.replay_dir)")
    la.set_defaults(func=handle_ai_launch_add)


def _folder(args) -> Path:
    if args.data:
        return Path(args.data)
    from ..config import load_settings
    settings = load_settings(getattr(args, "config", None))
    return settings.resolve_path(settings.data.replay_dir)


def handle_list(args) -> int:
    from ..data.event_feeds import EVENT_FEEDS, EventDataError
    folder = _folder(args)
    kinds = [args.kind] if args.kind else ["macro_release", "cme_margin", "ai_launch"]
    rows = 0
    for kind in kinds:
        try:
            feed = EVENT_FEEDS[kind].replay(folder)
        except EventDataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INVALID
        for e in feed.all_events:
            if e.kind != kind or (args.since and e.happened_at.date() < args.since) or (
                    args.until and e.happened_at.date() >= args.until):
                continue
            extra = ""
            if kind == "cme_margin":
                extra = f"{e.payload.get('direction')} {e.payload.get('pct_change')}%  {e.payload.get('source_url')}"
            elif kind == "macro_release":
                extra = str(e.payload.get("datetime_et", ""))
            print(f"{e.happened_at:%Y-%m-%d %H:%M}Z  known {e.known_at:%Y-%m-%d %H:%M}Z  {kind:<13} {e.subject:<8} {extra}")
            rows += 1
    print(f"{rows} events", file=sys.stderr)
    return EXIT_OK


def notice_row(args, today: date | None = None) -> dict:
    """The CSV row of an ``add-margin`` notice, checked field by field (ValueError names the field)."""
    metal = args.metal.strip().upper()
    if metal not in CONTRACTS:
        raise ValueError(f"field 'metal': expected GC or SI, got {args.metal!r}")
    try:
        effective = date.fromisoformat(args.effective.strip())
    except ValueError:
        raise ValueError(f"field 'effective': expected YYYY-MM-DD, got {args.effective!r}") from None
    numbers = {}
    for field, raw in (("initial", args.initial), ("maintenance", args.maintenance),
                       ("prev-initial", args.prev_initial), ("prev-maintenance", args.prev_maintenance),
                       ("pct-change", args.pct_change)):
        raw = (raw or "").strip()
        if not raw:
            continue
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"field '{field}': expected a number, got {raw!r}") from None
        if field == "pct-change" and not -90 <= value <= 500:
            raise ValueError(f"field 'pct-change': {value} is outside -90..500 %")
        if field != "pct-change" and not 0 < value < 1_000_000:
            raise ValueError(f"field '{field}': expected a positive USD amount per contract, got {raw!r}")
        numbers[field] = raw
    if not ({"initial", "maintenance"} & numbers.keys() or "pct-change" in numbers):
        raise ValueError("field 'initial'/'maintenance'/'pct-change': give the new margin or the % change")
    if "pct-change" not in numbers and not ({"prev-initial", "prev-maintenance"} & numbers.keys()):
        raise ValueError("field 'pct-change': without the previous margin, the % change is needed to tell a hike "
                         "from a cut")
    source = args.source.strip()
    if not source.startswith(("http://", "https://")):
        raise ValueError(f"field 'source': expected the notice's URL, got {args.source!r}")
    source_date = (args.source_date or "").strip() or (today or date.today()).isoformat()
    try:
        published = date.fromisoformat(source_date)
    except ValueError:
        raise ValueError(f"field 'source-date': expected YYYY-MM-DD, got {source_date!r}") from None
    if published > effective:
        raise ValueError(f"field 'source-date': {published} is after the effective date {effective}; CME announces "
                         "before a change takes effect")
    return {"metal": metal, "contract": CONTRACTS[metal], "effective_date": effective.isoformat(),
            "effective_note": "close of business", "spec_initial_usd": numbers.get("initial", ""),
            "spec_maintenance_usd": numbers.get("maintenance", ""),
            "prev_spec_initial_usd": numbers.get("prev-initial", ""),
            "prev_spec_maintenance_usd": numbers.get("prev-maintenance", ""),
            "pct_change_reported": numbers.get("pct-change", ""), "basis": "usd_per_contract",
            "source_url": source, "source_date": source_date, "source_type": "operator notice (hydra events add-margin)"}


def handle_add(args) -> int:
    from ..data.event_feeds import OPERATOR_MARGINS_FILE
    from ..data.event_files import EventDataError, read_cme_margins
    try:
        row = notice_row(args)
    except ValueError as exc:
        print(f"error: notice refused: {exc}", file=sys.stderr)
        return EXIT_INVALID
    with tempfile.TemporaryDirectory() as tmp:   # the feed's own reader must accept it too
        probe = Path(tmp) / "notice.csv"
        with probe.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS)
            w.writeheader()
            w.writerow(row)
        try:
            (event,) = read_cme_margins(probe)
        except EventDataError as exc:
            print(f"error: notice refused: {exc}", file=sys.stderr)
            return EXIT_INVALID
    path = _folder(args) / OPERATOR_MARGINS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file()
    with path.open("a", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerow(row)
    print(f"added: {event.subject} margin {event.payload['direction']} {event.payload['pct_change']}% effective "
          f"{event.happened_at:%Y-%m-%d %H:%M}Z (known {event.known_at:%Y-%m-%d %H:%M}Z) -> {path}")
    return EXIT_OK


# --------------------------------------------------------------------------- ai-launch add
_LAUNCH_FIELDS = {"launch_id": "id", "model": "model", "organization": "organization",
                  "announced_date": "announced", "announced_at_utc": "announced-at",
                  "first_us_session": "first-session", "source": "source", "source_ref": "source-ref", "note": "note"}


def _sessions(folder: Path) -> list[date]:
    """The US session dates of the data folder's SPY daily bars (empty when it has none)."""
    from ..data.replay import ReplayMarketData
    try:
        spy = ReplayMarketData(folder, ["SPY"]).history("SPY")
    except Exception:   # no equity data in this folder: the operator gives the session
        return []
    if spy is None or not len(spy):
        return []
    from ..data.event_files import NEW_YORK
    return sorted({datetime.fromtimestamp(int(t) + 6 * 3600, NEW_YORK).date() for t in spy.ts.tolist()})


def launch_row(args, folder: Path) -> dict:
    """The CSV row of an ``ai-launch add``; the first session derived from the folder's sessions when not
    given (ValueError names the field when it cannot be)."""
    from ..data.ai_launch_list import COLUMNS as LAUNCH_COLUMNS, first_session_after, known_at
    row = {c: "" for c in LAUNCH_COLUMNS}
    row.update(launch_id=args.id.strip(), model=args.model.strip(), organization=args.organization.strip(),
               announced_date=args.announced.strip(), announced_at_utc=(args.announced_at or "").strip(),
               first_us_session=(args.first_session or "").strip(), source=args.source.strip(),
               source_ref=args.source_ref.strip(), note=(args.note or "").strip())
    if not row["first_us_session"]:
        try:
            public = known_at(row)
        except ValueError:
            raise ValueError(f"field 'announced': expected YYYY-MM-DD, got {args.announced!r}"
                             if not row["announced_at_utc"] else
                             f"field 'announced-at': expected an ISO time with offset, got {args.announced_at!r}") from None
        sessions = _sessions(folder)
        first = first_session_after(public, sessions)
        if first is None:
            last = sessions[-1].isoformat() if sessions else "none"
            raise ValueError(f"field 'first-session': required: the data folder's sessions (last {last}) do not "
                             f"reach the launch ({public:%Y-%m-%d %H:%M}Z)")
        row["first_us_session"] = first.isoformat()
    return row


def handle_ai_launch_add(args) -> int:
    from ..data.ai_launch_list import CURATED_LAUNCHES_FILE, append_launch, launch_list_path
    from ..data.event_files import EventDataError
    folder = _folder(args)
    try:
        row = launch_row(args, folder)
    except ValueError as exc:
        print(f"error: launch refused: {exc}", file=sys.stderr)
        return EXIT_INVALID
    path = folder / CURATED_LAUNCHES_FILE
    source = launch_list_path(folder)
    with tempfile.TemporaryDirectory() as tmp:   # validated against the rows already there; written only if clean
        probe = Path(tmp) / "list.csv"
        if source.is_file():
            shutil.copyfile(source, probe)
        try:
            problems = append_launch(probe, row)
        except EventDataError as exc:
            print(f"error: launch refused: {exc}", file=sys.stderr)
            return EXIT_INVALID
        if problems:
            for p in problems:   # name the command-line option beside the CSV column
                m = re.search(r"field '(\w+)'", p)
                hint = f" (--{_LAUNCH_FIELDS[m.group(1)]})" if m and m.group(1) in _LAUNCH_FIELDS else ""
                print(f"error: launch refused: {p}{hint}", file=sys.stderr)
            return EXIT_INVALID
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(probe, path)
    print(f"added: {row['launch_id']} ({row['model']}, {row['organization']}) announced {row['announced_date']}, "
          f"first US session {row['first_us_session']} -> {path}")
    return EXIT_OK
