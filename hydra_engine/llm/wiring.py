"""How the composition root wires the LLM news gate (issue #22) into a session: one function per mode.

- **Replay** (backtest, sim; :func:`replay_llm`): the gate reads the verdicts recorded for the span
  (``LlmNewsGate.for_replay``). No client is built, no key read, no news feed: nothing here can reach the
  network. With nothing recorded the gate allows every entry and says "no verdicts recorded for this
  span" (the first cycle's notes, the session metadata and every ``llm_news`` check).
- **Paper** (:func:`paper_llm`): the live gate, the analyst (key from ``ANTHROPIC_API_KEY``, environment
  or ``.env``) and its :class:`~.analyst.AnalystRunner`. The runner is polled once a cycle, right after
  OBSERVE, with the snapshot's ``news`` events; the scan runs on the runner's thread and publishes into
  the gate's book whenever it finishes, so the cycle never waits for the API.

In both modes :class:`VerdictTrace` writes every outcome into the cycle report (``llm_verdicts``) of the
first cycle at or after the moment it became known, so the journal holds the verdicts the gate saw and
``review`` can measure them from the log alone.
"""
from __future__ import annotations

import hashlib
import json
import os
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Mapping

from ..strategy import DataNeed
from .book import VerdictBook
from .gate_rule import NO_RECORDS, LlmNewsGate
from .record import VerdictRecorder
from .schema import SymbolVerdict, TimedOutcome

NEWS_NEED = DataNeed("events", "news")
KEY_VARIABLE = "ANTHROPIC_API_KEY"    # the same name as analyst.KEY_VARIABLE (not imported: no SDK import here)


def verdicts_recorder(settings) -> VerdictRecorder:
    """The verdict database named by ``llm.verdicts_url`` (a relative sqlite path: under the project)."""
    return VerdictRecorder(settings.llm.verdicts_url, root=settings.resolve_path("."))


def safe_url(url: str) -> str:
    """``url`` with any password masked, for logs and metadata."""
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 -- an unparsable URL is shown by its scheme only
        return url.split(":", 1)[0] + ":..."


def watched_symbols(settings) -> list[str]:
    return list(settings.llm.symbols or settings.universe.symbols)


def key_environ(env_file: str | Path = ".env") -> dict[str, str]:
    """``ANTHROPIC_API_KEY`` from the environment, else from ``.env`` (as the Alpaca keys are read)."""
    from dotenv import dotenv_values
    value = os.environ.get(KEY_VARIABLE, "").strip()
    if not value and Path(env_file).is_file():
        value = (dotenv_values(env_file).get(KEY_VARIABLE) or "").strip()
    return {KEY_VARIABLE: value} if value else {}


def outcome_json(o: TimedOutcome) -> dict:
    # made_at is UTC (TimedOutcome checks it): the record's fixed-width stamp without stamp()'s re-checks
    made = o.made_at.isoformat(timespec="microseconds").replace("+00:00", "Z")
    base = {"symbol": o.symbol, "made_at": made, "call_id": o.call_id}
    if isinstance(o.outcome, SymbolVerdict):
        return {**base, "action": o.outcome.action.value, "confidence": o.outcome.confidence.value,
                "reason": o.outcome.reason}
    return {**base, "cause": o.outcome.cause.value, "detail": o.outcome.detail}


def fingerprint(outcomes: list[TimedOutcome]) -> str:
    """sha256 of the outcomes a replay reads: two runs with the same fingerprint read the same verdicts."""
    rows = [outcome_json(o) for o in outcomes]
    return hashlib.sha256(json.dumps(rows, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class VerdictNotes(list):
    """The outcomes a cycle reports, turned into JSON only when the report is formatted
    (``cycle_report.format_report``): a cycle whose report nobody reads pays nothing for them."""

    def jsonable(self) -> list[dict]:
        return [outcome_json(o) for o in self]


class VerdictTrace:
    """A cycle hook (``Engine.cycle_hooks``): puts the outcomes that became known since the last cycle
    (``made_at <= now``, each once) into ``report["llm_verdicts"]``; with a runner, first asks it to
    start a scan when one is due. Replay (``fixed``: the book never changes): one bisect a cycle over
    every outcome's time; live: a bisect per watched symbol."""

    name = "llm_news"

    def __init__(self, book: VerdictBook, runner=None, *, fixed: bool = False):
        self.book = book
        self.runner = runner
        # symbol -> (the history tuple last seen, how many of it were reported, the last reported outcome)
        self._seen: dict[str, tuple[tuple, int, TimedOutcome | None]] = {}
        self._fixed: list[TimedOutcome] | None = None
        if fixed:
            self._fixed = sorted((o for s in book.symbols() for o in book.history(s)),
                                 key=lambda o: (o.made_at, o.symbol))
            self._fixed_s = [o.made_at.timestamp() for o in self._fixed]
            # formatted once here, as the rows are read: a cycle then reports a slice of them
            self._fixed_json = [outcome_json(o) for o in self._fixed]
            self._done = 0

    def __call__(self, now: datetime, market, report: dict) -> None:
        if self._fixed is not None:
            end = bisect_right(self._fixed_s, now.timestamp())
            if end > self._done:
                report["llm_verdicts"] = self._fixed_json[self._done:end]
                self._done = end
            return
        if self.runner is not None:
            self.runner.poll(now, market.events_of("news"))
        new: list[TimedOutcome] = []
        for symbol in self.book.symbols():
            history = self.book.history(symbol)
            start = self._start(symbol, history)
            end = bisect_right(history, now, lo=start, key=lambda o: o.made_at)
            if end > start:
                new += history[start:end]
                self._seen[symbol] = (history, end, history[end - 1])
        if new:
            report["llm_verdicts"] = VerdictNotes(sorted(new, key=lambda o: (o.made_at, o.symbol)))

    def _start(self, symbol: str, history: tuple) -> int:
        seen, reported, last = self._seen.get(symbol, ((), 0, None))
        if seen is history or last is None:
            return reported if seen is history else 0
        # the book replaced the tuple (a live scan added to it, or old entries were dropped): the outcomes
        # after the last reported one are new -- it is found by identity; if it was dropped, all are newer
        for i in range(len(history) - 1, -1, -1):
            if history[i] is last:
                return i + 1
        return 0


@dataclass
class LlmWiring:
    """What a session adds for the LLM gate: nothing when ``llm.enabled`` is false."""

    gate_rules: list = field(default_factory=list)
    hooks: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    event_needs: list = field(default_factory=list)
    runner: object = None
    gate: LlmNewsGate | None = None

    def attach(self, engine) -> None:
        engine.cycle_hooks.extend(self.hooks)
        engine.startup_notes.extend(self.notes)

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()


def replay_llm(settings, start: datetime, end: datetime) -> LlmWiring:
    """The replay gate over [start, end] from the recorded verdicts; never a client."""
    if not settings.llm.enabled:
        return LlmWiring()
    recorder = verdicts_recorder(settings)
    gate = LlmNewsGate.for_replay(settings.llm, recorder, start, end)
    outcomes = [o for s in gate.book.symbols() for o in gate.book.history(s)]
    verdicts = sum(o.is_verdict for o in outcomes)
    meta = {"llm": {"mode": "replay", "verdicts_url": safe_url(recorder.url), "outcomes": len(outcomes),
                    "verdicts": verdicts, "verdicts_sha256": fingerprint(sorted(
                        outcomes, key=lambda o: (o.made_at, o.call_id, o.symbol)))}}
    if gate.no_records:
        meta["llm"]["note"] = NO_RECORDS
        notes = [f"llm_news: {NO_RECORDS} ({start:%Y-%m-%d %H:%M}Z .. {end:%Y-%m-%d %H:%M}Z in "
                 f"{safe_url(recorder.url)}): the gate allows every entry; record verdicts with "
                 "`hydra llm record --start --end` or a paper session"]
    else:
        notes = [f"llm_news: replaying {len(outcomes)} recorded outcome(s), {verdicts} verdict(s), for this span "
                 f"(sha256 {meta['llm']['verdicts_sha256'][:12]})"]
    return LlmWiring([gate], [VerdictTrace(gate.book, fixed=True)], meta, notes, gate=gate)


def paper_llm(settings, *, environ: Mapping[str, str] | None = None, now: datetime | None = None,
              transport=None) -> LlmWiring:
    """The live gate, the analyst and its runner; ``transport``: tests only (an httpx2 mock)."""
    if not settings.llm.enabled:
        return LlmWiring()
    from .analyst import AnalystRunner, NewsAnalyst, client_from_env
    recorder = verdicts_recorder(settings)
    gate = LlmNewsGate.live(settings.llm)
    if now is not None:   # a restart: the verdicts still within their age count at once
        gate.book.add(recorder.outcomes(now - timedelta(minutes=settings.llm.verdict_max_age_minutes), now))
    env = key_environ() if environ is None else environ
    client = client_from_env(settings.llm, environ=env, transport=transport)
    analyst = NewsAnalyst(settings.llm, client, recorder, book=gate.book, symbols=settings.universe.symbols)
    runner = AnalystRunner(analyst)
    notes = [f"llm_news: a scan every {settings.llm.scan_interval_minutes} min of {analyst.symbols}, verdicts "
             f"recorded in {safe_url(recorder.url)}"]
    if client is None:
        notes.append(f"llm_news: {KEY_VARIABLE} is not set: every scan records 'no_key' and the gate applies "
                     f"llm.no_verdict_means = {settings.llm.no_verdict_means!r}")
    meta = {"llm": {"mode": "live", "verdicts_url": safe_url(recorder.url), "key_set": client is not None}}
    return LlmWiring([gate], [VerdictTrace(gate.book, runner)], meta, notes, [NEWS_NEED], runner, gate)
