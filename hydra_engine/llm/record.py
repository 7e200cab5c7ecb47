"""Every analyst call and every outcome it produced, in SQLite (SQLModel, the store's style), and the
replay source built from them.

Why SQLite and not JSONL: the analyst's caps must survive a restart and are questions about time
ranges ("calls in the last hour", "spend this calendar month"), and a replay asks "every outcome made
in this span". Those are indexed queries on a database and full scans of a growing log file. It is also
one more pair of tables beside the store's (the same ``storage.url`` can be used), written in one
transaction per call, so a crash never leaves a call without its outcomes.

Only this module's two tables are created (``llm_calls``, ``llm_verdicts``); the store's tables are
left to the store. Times are stored as fixed-width UTC strings (``2024-03-01T10:00:00.000000Z``), so
text order is time order.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Iterable, Optional

from sqlalchemy import event, func
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, Session, SQLModel, create_engine, select

from ..domain import require_utc
from .book import VerdictBook
from .redact import redact
from .schema import Action, Confidence, NoVerdict, NoVerdictCause, SymbolVerdict, TimedOutcome


def stamp(moment: datetime) -> str:
    return require_utc(moment, "timestamp").astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_stamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


class LlmCallRow(SQLModel, table=True):
    __tablename__ = "llm_calls"
    call_id: str = Field(primary_key=True)
    requested_at: str = Field(index=True)
    made_at: str = Field(index=True)
    model: str
    prompt_hash: str                       # sha256 of the canonical request (model, prompts, tool, limits)
    symbols_json: str                      # the symbols asked about
    headlines_json: str                    # the headlines sent: id, symbol, title, source, published_at
    called: bool                           # False: refused before any network call (cap, no key, no news)
    http_status: Optional[int] = None
    stop_reason: Optional[str] = None
    response_text: str = ""                # the raw body as received (or the error body)
    tool_input_json: str = ""              # the forced tool call's input, as received
    cause: Optional[str] = None            # the whole call's failure, if it failed as a whole
    detail: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cost_basis: str = "none"               # usage | worst_case (a billed answer we could not read) | none
    retries_taken: int = 0


class LlmVerdictRow(SQLModel, table=True):
    __tablename__ = "llm_verdicts"
    id: Optional[int] = Field(default=None, primary_key=True)
    call_id: str = Field(index=True)
    symbol: str = Field(index=True)
    made_at: str = Field(index=True)
    action: Optional[str] = None
    confidence: Optional[str] = None
    reason: Optional[str] = None
    cause: Optional[str] = None
    detail: str = ""


@dataclass
class CallRecord:
    """What the analyst knows about one scan, recorded as one ``llm_calls`` row."""

    call_id: str
    requested_at: datetime
    made_at: datetime
    model: str
    prompt_hash: str
    symbols: list[str]
    headlines: list[dict]
    called: bool
    http_status: int | None = None
    stop_reason: str | None = None
    response_text: str = ""
    tool_input: object = None
    cause: NoVerdictCause | None = None
    detail: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cost_basis: str = "none"
    retries_taken: int = 0
    outcomes: list[TimedOutcome] = field(default_factory=list)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class VerdictRecorder:
    """The analyst's ledger and the replay's source. ``secrets``: strings that must never be written
    (the API key); every text column is redacted with them again here, whatever the caller did."""

    def __init__(self, url: str, root: Path | None = None, *, secrets: Iterable[str] = ()):
        if url in ("sqlite://", "sqlite:///:memory:"):
            # one shared connection, or every session would see its own empty in-memory database
            self.engine = create_engine("sqlite://", poolclass=StaticPool,
                                        connect_args={"check_same_thread": False})
        else:
            if url.startswith("sqlite:///"):
                path = Path(url.removeprefix("sqlite:///"))
                if not path.is_absolute() and root is not None:
                    path = root / path
                path.parent.mkdir(parents=True, exist_ok=True)
                url = f"sqlite:///{path}"
            self.engine = create_engine(url)
            if url.startswith("sqlite"):
                event.listen(self.engine, "connect", _sqlite_pragmas)
        self.url = url
        self._secrets = [s for s in secrets if s]
        for table in (LlmCallRow.__table__, LlmVerdictRow.__table__):
            table.create(self.engine, checkfirst=True)

    def add_secret(self, secret: str | None) -> None:
        if secret:
            self._secrets.append(secret)

    def _r(self, text: str) -> str:
        return redact(text, self._secrets) if text else text

    # -- writing ----------------------------------------------------------------------------------

    def record(self, call: CallRecord) -> None:
        row = LlmCallRow(
            call_id=call.call_id, requested_at=stamp(call.requested_at), made_at=stamp(call.made_at),
            model=call.model, prompt_hash=call.prompt_hash, symbols_json=json.dumps(call.symbols),
            headlines_json=self._r(json.dumps(call.headlines, sort_keys=True, default=str)),
            called=call.called, http_status=call.http_status, stop_reason=call.stop_reason,
            response_text=self._r(call.response_text),
            tool_input_json=self._r(json.dumps(call.tool_input, sort_keys=True, default=str))
            if call.tool_input is not None else "",
            cause=call.cause.value if call.cause else None, detail=self._r(call.detail),
            input_tokens=call.input_tokens, output_tokens=call.output_tokens, cost_usd=call.cost_usd,
            cost_basis=call.cost_basis, retries_taken=call.retries_taken)
        with Session(self.engine) as s:
            s.add(row)
            for o in call.outcomes:
                s.add(self._verdict_row(call.call_id, o))
            s.commit()

    def _verdict_row(self, call_id: str, o: TimedOutcome) -> LlmVerdictRow:
        base = dict(call_id=call_id, symbol=o.symbol, made_at=stamp(o.made_at))
        if isinstance(o.outcome, SymbolVerdict):
            v = o.outcome
            return LlmVerdictRow(**base, action=v.action.value, confidence=v.confidence.value,
                                 reason=self._r(v.reason))
        return LlmVerdictRow(**base, cause=o.outcome.cause.value, detail=self._r(o.outcome.detail))

    # -- the caps' questions ----------------------------------------------------------------------

    def calls_between(self, start: datetime, end: datetime) -> int:
        """Calls that reached the network, requested in [start, end]."""
        with Session(self.engine) as s:
            q = select(func.count()).select_from(LlmCallRow).where(
                LlmCallRow.called == True,  # noqa: E712 -- SQL comparison, not Python truthiness
                LlmCallRow.requested_at >= stamp(start), LlmCallRow.requested_at <= stamp(end))
            return int(s.exec(q).one())

    def spend_between(self, start: datetime, end: datetime) -> float:
        with Session(self.engine) as s:
            q = select(func.coalesce(func.sum(LlmCallRow.cost_usd), 0.0)).where(
                LlmCallRow.requested_at >= stamp(start), LlmCallRow.requested_at <= stamp(end))
            return float(s.exec(q).one())

    def cause_between(self, cause: NoVerdictCause, start: datetime, end: datetime) -> bool:
        with Session(self.engine) as s:
            q = select(LlmCallRow.call_id).where(
                LlmCallRow.cause == cause.value,
                LlmCallRow.requested_at >= stamp(start), LlmCallRow.requested_at <= stamp(end)).limit(1)
            return s.exec(q).first() is not None

    # -- reading back -----------------------------------------------------------------------------

    def calls(self) -> list[LlmCallRow]:
        with Session(self.engine) as s:
            return list(s.exec(select(LlmCallRow).order_by(LlmCallRow.requested_at, LlmCallRow.call_id)))

    def outcomes(self, start: datetime | None = None, end: datetime | None = None) -> list[TimedOutcome]:
        """Every outcome made in [start, end], in a fixed order (made_at, call, symbol, row id)."""
        with Session(self.engine) as s:
            q = select(LlmVerdictRow)
            if start is not None:
                q = q.where(LlmVerdictRow.made_at >= stamp(start))
            if end is not None:
                q = q.where(LlmVerdictRow.made_at <= stamp(end))
            q = q.order_by(LlmVerdictRow.made_at, LlmVerdictRow.call_id, LlmVerdictRow.symbol, LlmVerdictRow.id)
            return [_outcome(r) for r in s.exec(q)]


def _outcome(r: LlmVerdictRow) -> TimedOutcome:
    if r.action is not None:
        out: SymbolVerdict | NoVerdict = SymbolVerdict(symbol=r.symbol, action=Action(r.action),
                                                       confidence=Confidence(r.confidence), reason=r.reason)
    else:
        out = NoVerdict(cause=NoVerdictCause(r.cause), detail=r.detail)
    return TimedOutcome(symbol=r.symbol, made_at=parse_stamp(r.made_at), outcome=out, call_id=r.call_id)


class RecordedVerdicts(VerdictBook):
    """The replay source for a span: the recorded outcomes that can matter in [start, end] (those made
    up to ``lookback`` before the start too, so a verdict in force when the span opens is seen). The
    same rows always give the same book, and a lookup at ``t`` returns the newest outcome made at or
    before ``t``, never after. No network: this reads the database only."""

    def __init__(self, outcomes: Iterable[TimedOutcome], start: datetime, end: datetime):
        super().__init__(outcomes, keep=None)
        self.start, self.end = require_utc(start, "start"), require_utc(end, "end")

    @classmethod
    def load(cls, recorder: VerdictRecorder, start: datetime, end: datetime,
             lookback: timedelta) -> "RecordedVerdicts":
        return cls(recorder.outcomes(start - lookback, end), start, end)

    @property
    def empty(self) -> bool:
        return len(self) == 0
