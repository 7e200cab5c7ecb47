"""The LLM news gate: an entry-gate rule (``hydra_engine.gate.GateRule``, scope "symbol") applying the
model specification's table to the newest verdict per symbol.

| verdict | long entry (buy) | short entry (sell) |
|---------|------------------|--------------------|
| bullish | allow            | RESTRICT           |
| bearish | RESTRICT         | allow              |
| hold    | RESTRICT         | RESTRICT           |
| exit    | RESTRICT; BLOCK when ``llm.exit_requests_enabled`` | the same |

A verdict older than ``llm.verdict_max_age_minutes`` counts as none. With none, ``llm.no_verdict_means``
decides: ``allow`` (the specification's default) or ``hold`` (no new entries on that symbol). A failed
scan does not erase a verdict still within its age: the newest *valid* verdict applies, and the failure
is named in the trace only when there is none.

Exit verdicts become exits only when ``llm.exit_requests_enabled``: the rule is then ``can_block`` and
answers BLOCK for a symbol whose current verdict is ``exit``, and the engine's one flatten path
(``EntryGate.flatten``, asked about every held symbol each cycle) closes the position with exit reason
``gate:llm_news``. No second exit channel exists for the LLM. Otherwise (the default) an exit verdict
only refuses entries, like hold. :meth:`LlmNewsGate.exit_requests` lists the same symbols, for reports.

``check`` reads the verdict book (a dict lookup and a bisect over a few entries), never the network: the
analyst fills the book on its own thread (live), or the book is the recorded verdicts (replay).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ..domain import Side
from ..gate import GateState, GateVerdict
from .book import Lookup, VerdictBook
from .record import RecordedVerdicts, VerdictRecorder
from .schema import Action, LlmSettings, NoVerdict, SymbolVerdict, TimedOutcome

NO_RECORDS = "no verdicts recorded for this span"


@dataclass(frozen=True, slots=True)
class ExitRequest:
    symbol: str
    reason: str
    made_at: datetime


def _direction(side: object) -> str | None:
    """'long' for a buy entry, 'short' for a sell entry, None when the side is not given."""
    value = side.value if isinstance(side, Side) else side
    if value in ("buy", "long"):
        return "long"
    if value in ("sell", "short"):
        return "short"
    return None


class LlmNewsGate:
    name = "llm_news"
    scope = "symbol"

    def __init__(self, settings: LlmSettings, book: VerdictBook, *, replay: bool = False):
        self.settings = settings
        self.book = book
        self._max_age = timedelta(minutes=settings.verdict_max_age_minutes)
        self._watched = frozenset(settings.symbols)
        # a replay with nothing recorded cannot apply the rule at all: it says so on every check and
        # allows, whatever no_verdict_means says (hold would turn a missing record into a backtest
        # without trades, which is a finding about the record, not about the strategy)
        self.no_records = replay and len(book) == 0
        # asked by EntryGate.flatten about every held symbol only when exit verdicts may close positions
        self.can_block = settings.exit_requests_enabled

    @classmethod
    def live(cls, settings: LlmSettings) -> "LlmNewsGate":
        # live history is kept for a little longer than a verdict can count, then dropped
        return cls(settings, VerdictBook(keep=timedelta(minutes=2 * settings.verdict_max_age_minutes)))

    @classmethod
    def for_replay(cls, settings: LlmSettings, recorder: VerdictRecorder, start: datetime,
                   end: datetime) -> "LlmNewsGate":
        """The gate for a backtest or replay of [start, end]: the recorded verdicts, no analyst, no client."""
        book = RecordedVerdicts.load(recorder, start, end, timedelta(minutes=settings.verdict_max_age_minutes))
        return cls(settings, book, replay=True)

    # -- the rule --

    def check(self, ctx, symbol: str | None = None, side=None) -> GateVerdict | None:
        if symbol is None or (self._watched and symbol not in self._watched):
            return None                       # not a symbol the analyst watches: nothing to say
        if self.no_records:
            return GateVerdict(GateState.ALLOW, self.name, NO_RECORDS)
        now = ctx.now
        found = self.book.lookup(symbol, now)
        current = self._current(found, now)
        if current is None:
            return self._none(found, now)
        v: SymbolVerdict = current.outcome      # type: ignore[assignment]
        said = f"LLM {v.action.value} ({v.confidence.value}, {current.made_at:%Y-%m-%d %H:%M}Z): {v.reason}"
        direction = _direction(side)
        if v.action is Action.EXIT:
            if self.settings.exit_requests_enabled:
                return GateVerdict(GateState.BLOCK, self.name, f"{said} -- blocks entries; exit requested (closes the position)")
            return GateVerdict(GateState.RESTRICT, self.name, f"{said} -- blocks entries")
        if v.action is Action.HOLD:
            return GateVerdict(GateState.RESTRICT, self.name, f"{said} -- blocks entries")
        if v.action is Action.BEARISH and direction == "long":
            return GateVerdict(GateState.RESTRICT, self.name, f"{said} -- blocks longs")
        if v.action is Action.BULLISH and direction == "short":
            return GateVerdict(GateState.RESTRICT, self.name, f"{said} -- blocks shorts")
        return GateVerdict(GateState.ALLOW, self.name, said)

    def _current(self, found: Lookup, now: datetime) -> TimedOutcome | None:
        if found.verdict is None or now - found.verdict.made_at > self._max_age:
            return None
        return found.verdict

    def _none(self, found: Lookup, now: datetime) -> GateVerdict:
        if found.last is not None and isinstance(found.last.outcome, NoVerdict) and (
                found.verdict is None or found.last.made_at >= found.verdict.made_at):
            why = f"no LLM verdict ({found.last.outcome.describe()}, {found.last.made_at:%Y-%m-%d %H:%M}Z)"
        elif found.verdict is not None:
            age = (now - found.verdict.made_at).total_seconds() / 60
            why = (f"no LLM verdict (the last, {found.verdict.outcome.action.value} at "
                   f"{found.verdict.made_at:%Y-%m-%d %H:%M}Z, is {age:.0f} min old; "
                   f"llm.verdict_max_age_minutes {self.settings.verdict_max_age_minutes})")
        else:
            why = "no LLM verdict yet"
        if self.settings.no_verdict_means == "hold":
            return GateVerdict(GateState.RESTRICT, self.name, f"{why} -- no new entries (llm.no_verdict_means=hold)")
        return GateVerdict(GateState.ALLOW, self.name, f"{why} -- allowed (llm.no_verdict_means=allow)")

    # -- exits --

    def exit_requests(self, now: datetime) -> list[ExitRequest]:
        """The watched symbols whose current verdict is ``exit``, when ``llm.exit_requests_enabled``;
        otherwise none. The engine closes them through ``EntryGate.flatten`` (``check`` answers BLOCK for
        them); this list is the same answer for reports and tests."""
        if not self.settings.exit_requests_enabled or self.no_records:
            return []
        out = []
        for symbol in sorted(self._watched or self.book.symbols()):
            current = self._current(self.book.lookup(symbol, now), now)
            if current is not None and current.outcome.action is Action.EXIT:
                out.append(ExitRequest(symbol, f"LLM exit ({current.outcome.confidence.value}): "
                                               f"{current.outcome.reason}", current.made_at))
        return out
