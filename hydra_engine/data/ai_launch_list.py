"""The curated AI model-launch list (strategy 4): a plain CSV, its validator, its reader and its builder.

File: ``data/events/ai_launches/model_launches_curated.csv`` (shipped with the project; a data folder that
has its own copy at the same path wins). One row per **model launch** (not SDK housekeeping, not research
papers), columns:

=====================  ========================================================================================
``launch_id``          unique slug (``claude-3-opus``); the event's subject
``model``              the model's public name
``organization``       who launched it
``announced_date``     the date the launch was public (YYYY-MM-DD; the source's date)
``announced_at_utc``   optional ISO time with offset (an SDK tag's time) when known; empty otherwise
``first_us_session``   the first US regular session that could react (YYYY-MM-DD): the first session whose
                       16:00 New York close comes after ``known_at``; where the provenance documents a later
                       market reaction (DeepSeek-R1: 2025-01-27) that session, with the reason in ``note``.
                       A label for event studies: the plugin never reads it (it would be hindsight)
``source``             the file (or URL) the row comes from
``source_ref``         the row in that file (its model name, or the changelog line)
``note``               free text (may be empty)
=====================  ========================================================================================

``known_at`` (when a trader could first know) = ``announced_at_utc`` when given, else the end of
``announced_date`` in US Pacific time (the rule of the ``ai_launch`` feed). Events are of kind
``ai_model_launch``; ``happened_at`` = ``announced_at_utc`` or the date at 00:00 UTC.

:func:`validate_launch_rows` returns every problem of a list of rows (empty list = valid), each naming the
line and the field; :func:`read_launch_list` refuses a file with any; :func:`append_launch` validates a
new row against the file before writing it (what ``hydra events ai-launch add`` calls).
"""
from __future__ import annotations

import csv
import re
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..config import PROJECT_ROOT
from ..domain import UTC
from ..events import Event
from .event_files import LOS_ANGELES, NEW_YORK, EventDataError

CURATED_LAUNCHES_FILE = "events/ai_launches/model_launches_curated.csv"
COLUMNS = ("launch_id", "model", "organization", "announced_date", "announced_at_utc", "first_us_session",
           "source", "source_ref", "note")
KIND = "ai_model_launch"
_SLUG = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,63}$")
SESSION_CLOSE = time(16, 0)


def known_at(row: Mapping[str, str]) -> datetime:
    """When the launch was public: the given time, else the end of its date in Los Angeles."""
    if (row.get("announced_at_utc") or "").strip():
        return datetime.fromisoformat(row["announced_at_utc"].strip()).astimezone(UTC)
    day = date.fromisoformat(row["announced_date"].strip())
    return (datetime.combine(day + timedelta(days=1), time(0), LOS_ANGELES) - timedelta(seconds=1)).astimezone(UTC)


def first_session_after(at: datetime, sessions: Sequence[date]) -> date | None:
    """The first session in ``sessions`` (sorted dates) whose 16:00 New York close is after ``at``."""
    for d in sessions:
        if datetime.combine(d, SESSION_CLOSE, NEW_YORK) > at:
            return d
    return None


def validate_launch_rows(rows: Sequence[Mapping[str, str]], *, first_line: int = 2) -> list[str]:
    """Every problem in ``rows`` (dicts keyed by :data:`COLUMNS`), as "line N, field F: why (value)"."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    for k, row in enumerate(rows):
        line = first_line + k

        def bad(field: str, why: str) -> None:
            problems.append(f"line {line}, field {field!r}: {why} (value {row.get(field)!r})")

        missing = [c for c in COLUMNS if c not in row or row[c] is None]
        if missing:
            problems.append(f"line {line}: missing column(s) {missing}")
            continue
        lid = row["launch_id"].strip()
        if not _SLUG.match(lid):
            bad("launch_id", "expected a lower-case slug (letters, digits, '.', '-')")
        elif lid in seen:
            bad("launch_id", f"duplicate of line {seen[lid]}")
        seen.setdefault(lid, line)
        for field in ("model", "organization", "source", "source_ref"):
            if not row[field].strip():
                bad(field, "must not be empty")
        days = {}
        for field in ("announced_date", "first_us_session"):
            raw = row[field].strip()
            try:
                if len(raw) != 10:
                    raise ValueError
                days[field] = date.fromisoformat(raw)
            except ValueError:
                bad(field, "expected a date YYYY-MM-DD")
        at = None
        if row["announced_at_utc"].strip():
            try:
                at = datetime.fromisoformat(row["announced_at_utc"].strip())
                if at.tzinfo is None:
                    bad("announced_at_utc", "a time needs its UTC offset")
                    at = None
                elif "announced_date" in days and abs((at.astimezone(UTC).date() - days["announced_date"]).days) > 1:
                    bad("announced_at_utc", f"more than a day from announced_date {days['announced_date']}")
            except ValueError:
                bad("announced_at_utc", "expected an ISO time with offset, or nothing")
        if len(days) == 2:
            session = days["first_us_session"]
            if session.weekday() >= 5:
                bad("first_us_session", "is a weekend day, not a US session")
            public = at.astimezone(UTC) if at else known_at(row)
            if datetime.combine(session, SESSION_CLOSE, NEW_YORK) <= public:
                bad("first_us_session", f"closes before the launch was public ({public:%Y-%m-%d %H:%M}Z)")
    return problems


def read_launch_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise EventDataError(f"AI launch list missing: {path}")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise EventDataError(f"{path}, line 1: header must be {','.join(COLUMNS)}; it is {reader.fieldnames}")
        return [dict(r) for r in reader]


def launch_event(row: Mapping[str, str], source: str) -> Event:
    at = row["announced_at_utc"].strip()
    happened = (datetime.fromisoformat(at).astimezone(UTC) if at
                else datetime.combine(date.fromisoformat(row["announced_date"].strip()), time(0), UTC))
    return Event(KIND, row["launch_id"].strip(), happened, known_at(row), {
        "model": row["model"].strip(), "organization": row["organization"].strip(),
        "announced_date": row["announced_date"].strip(), "first_us_session": row["first_us_session"].strip(),
        "source": row["source"].strip(), "source_ref": row["source_ref"].strip(), "note": row["note"].strip()},
        source=source)


def read_launch_list(path: Path) -> list[Event]:
    """The list as ``ai_model_launch`` events; any problem is an :class:`EventDataError` naming them all."""
    rows = read_launch_rows(path)
    problems = validate_launch_rows(rows)
    if problems:
        raise EventDataError(f"{path}: {len(problems)} problem(s): " + "; ".join(problems[:10]))
    return [launch_event(r, str(path)) for r in rows]


def launch_list_path(data_dir: Path | str) -> Path:
    """The data folder's copy of the list when it has one, else the project's shipped list."""
    own = Path(data_dir) / CURATED_LAUNCHES_FILE
    return own if own.is_file() else PROJECT_ROOT / "data" / CURATED_LAUNCHES_FILE


def append_launch(path: Path, row: Mapping[str, str]) -> list[str]:
    """Validate ``row`` together with the file's rows and append it; returns the problems (nothing written
    when there are any)."""
    rows = read_launch_rows(path) if path.is_file() else []
    new = {c: str(row.get(c, "") or "") for c in COLUMNS}
    problems = validate_launch_rows([*rows, new])
    if problems:
        return problems
    write_launch_rows(path, [*rows, new])
    return []


def write_launch_rows(path: Path, rows: Iterable[Mapping[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: (r["announced_date"], r["launch_id"]))
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows({c: r.get(c, "") for c in COLUMNS} for r in rows)


# --------------------------------------------------------------------------- building the shipped list
EPOCH_FILE = "events/ai_launches/epoch_notable_models_2022_2025_subset.csv"
SDK_CHANGELOG_FILE = "events/ai_launches/sdk_changelog_features.csv"
# The curation: (launch_id, the Epoch "Model" name or None, the SDK changelog line's text fragment or None,
# model, organization). Rule: public model/product launches of the labs whose products compete with
# application software (OpenAI, Anthropic, Google, Meta, Mistral, xAI, DeepSeek), 2022-11 on; research
# papers and SDK housekeeping are left out. Where the SDK changelog has the launch, its tag time is used.
CURATION: tuple[tuple[str, str | None, str | None, str, str], ...] = (
    ("chatgpt", "GPT-3.5 Turbo", None, "ChatGPT (GPT-3.5 Turbo)", "OpenAI"),
    ("llama-65b", "LLaMA-65B", None, "LLaMA-65B", "Meta AI"),
    ("claude-1", "Claude", None, "Claude", "Anthropic"),
    ("gpt-4", "GPT-4", None, "GPT-4", "OpenAI"),
    ("palm-2", "PaLM 2", None, "PaLM 2", "Google"),
    ("claude-2", "Claude 2", None, "Claude 2", "Anthropic"),
    ("llama-2", "Llama 2-70B", None, "Llama 2", "Meta AI"),
    ("gpt-4v", "GPT-4V", None, "GPT-4V", "OpenAI"),
    ("grok-1", "Grok-1", None, "Grok-1", "xAI"),
    ("gpt-4-turbo", "GPT-4 Turbo", None, "GPT-4 Turbo", "OpenAI"),
    ("claude-2.1", "Claude 2.1", None, "Claude 2.1", "Anthropic"),
    ("gemini-1.0", "Gemini 1.0 Ultra", None, "Gemini 1.0", "Google DeepMind"),
    ("mixtral-8x7b", "Mixtral 8x7B", None, "Mixtral 8x7B", "Mistral AI"),
    ("gemini-1.5-pro", "Gemini 1.5 Pro", None, "Gemini 1.5 Pro", "Google DeepMind"),
    ("mistral-large", "Mistral Large", None, "Mistral Large", "Mistral AI"),
    ("claude-3", "Claude 3 Opus", None, "Claude 3 (Opus, Sonnet)", "Anthropic"),
    ("llama-3", "Llama 3-70B", None, "Llama 3", "Meta AI"),
    ("gpt-4o", "GPT-4o", "add gpt-4o model", "GPT-4o", "OpenAI"),
    ("deepseek-coder-v2", "DeepSeek-Coder-V2 236B", None, "DeepSeek-Coder-V2", "DeepSeek"),
    ("claude-3.5-sonnet", "Claude 3.5 Sonnet", "claude-3-5-sonnet-20240620", "Claude 3.5 Sonnet", "Anthropic"),
    ("gpt-4o-mini", "GPT-4o mini", "gpt-4o-mini", "GPT-4o mini", "OpenAI"),
    ("llama-3.1-405b", "Llama 3.1-405B", None, "Llama 3.1 405B", "Meta AI"),
    ("mistral-large-2", "Mistral Large 2", None, "Mistral Large 2", "Mistral AI"),
    ("grok-2", "Grok-2", None, "Grok-2", "xAI"),
    ("o1-preview", "o1-preview", "add o1 models", "o1-preview", "OpenAI"),
    ("claude-3.5-computer-use", None, "computer-use-2024-10-22", "Claude 3.5 Sonnet (new), computer use", "Anthropic"),
    ("o1", "o1", None, "o1", "OpenAI"),
    ("llama-3.3", "Llama 3.3", None, "Llama 3.3", "Meta AI"),
    ("deepseek-v3", "DeepSeek-V3", None, "DeepSeek-V3", "DeepSeek"),
    ("deepseek-r1", "DeepSeek-R1", None, "DeepSeek-R1", "DeepSeek"),
    ("o3-mini", None, "add o3-mini", "o3-mini", "OpenAI"),
    ("grok-3", "Grok-3", None, "Grok-3", "xAI"),
    ("claude-3.7-sonnet", None, "add claude-3.7", "Claude 3.7 Sonnet", "Anthropic"),
    ("gpt-4.5", None, "add gpt-4.5-preview", "GPT-4.5", "OpenAI"),
)
# Documented reactions later than the first session (events/ai_launches/PROVENANCE.md, caveats for S4)
REACTION_OVERRIDES = {"deepseek-r1": (date(2025, 1, 27), "PROVENANCE: the US equity sell-off came on Monday "
                                                          "2025-01-27, a week after publication")}


def build_curated_rows(shared_dir: Path, sessions: Sequence[date]) -> list[dict[str, str]]:
    """The shipped list from the shared files (``sessions``: the US session dates, sorted)."""
    epoch = {r["Model"]: r for r in csv.DictReader((shared_dir / EPOCH_FILE).open(encoding="utf-8"))}
    changelog = list(csv.DictReader((shared_dir / SDK_CHANGELOG_FILE).open(encoding="utf-8")))
    rows = []
    for lid, epoch_name, sdk_fragment, model, org in CURATION:
        if sdk_fragment is not None:
            hit = next(r for r in changelog if sdk_fragment in r["feature"])
            row = {"announced_date": hit["changelog_date"], "announced_at_utc": hit["tag_created"],
                   "source": SDK_CHANGELOG_FILE,
                   "source_ref": f"{hit['repo']} {hit['tag']}: {hit['feature']}"}
        else:
            hit = epoch[epoch_name]
            row = {"announced_date": hit["Publication date"], "announced_at_utc": "", "source": EPOCH_FILE,
                   "source_ref": f"Model={epoch_name}"}
        row.update(launch_id=lid, model=model, organization=org, note="")
        first = first_session_after(known_at(row), sessions)
        if lid in REACTION_OVERRIDES:
            first, why = REACTION_OVERRIDES[lid]
            row["note"] = why
        row["first_us_session"] = first.isoformat() if first else ""
        rows.append(row)
    return rows
