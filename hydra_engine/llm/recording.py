"""``hydra llm record``: run the news analyst over a span of the shipped headlines, as the paper loop
would have run it, and record every call and verdict for backtests to replay.

* The scans fall on the paper loop's grid: every ``llm.scan_interval_minutes`` from ``--start`` (UTC
  midnight), each with the headlines known at that moment (the event channel's point-in-time rule), so
  a backtest over the span reads what a paper session at those moments could have read.
* A verdict is dated at the scan's moment **plus the call's real latency** (as live: the gate cannot
  see an answer before it arrived).
* Spend is bounded twice: the analyst's own caps (per rolling hour and per calendar month of the
  *scan's* clock) and this run's ``--max-usd`` (default ``llm.monthly_spend_cap_usd``): a scan whose
  worst case would take the run past it is not made, and the run stops there, saying where to resume.
* A span already partly recorded resumes after its last recorded scan: the same moment is never
  recorded twice (two verdicts at one instant would make the replay depend on their order).

Caveat (stated in the README and the review): a model asked in 2026 about 2024 headlines may know what
happened next. Recorded verdicts over history measure the plumbing and the gate, not an out-of-sample
edge; only verdicts recorded live (paper) are free of that leak.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

from ..data.event_feeds import build_event_feeds
from .record import VerdictRecorder, parse_stamp
from .schema import LlmSettings, SymbolVerdict
from .wiring import NEWS_NEED, watched_symbols


class _ScanClock:
    """The scan's moment plus the wall-clock time elapsed since the scan began."""

    def __init__(self) -> None:
        self.at: datetime | None = None
        self._t0 = 0.0

    def start(self, at: datetime) -> None:
        self.at, self._t0 = at, time.monotonic()

    def __call__(self) -> datetime:
        return self.at + timedelta(seconds=time.monotonic() - self._t0)


def scan_times(start: datetime, end: datetime, every: timedelta) -> list[datetime]:
    out, t = [], start
    while t < end:
        out.append(t)
        t += every
    return out


@dataclass
class RecordPlan:
    scans: list[datetime]
    with_news: int                 # scans that would call the API (a watched symbol has a headline)
    worst_case_usd: float          # the sum of those calls' worst cases
    resumed_after: datetime | None = None
    symbols: list[str] = field(default_factory=list)


def record_settings(settings) -> LlmSettings:
    """The configured ``[llm]`` settings, enabled (recording is the point), symbols resolved."""
    return settings.llm.model_copy(update={"enabled": True, "symbols": watched_symbols(settings)})


def plan(settings, start: datetime, end: datetime, data_dir: Path, recorder: VerdictRecorder) -> tuple[RecordPlan, object]:
    """The scans a record run would make, and the news feed it reads (no network, no key)."""
    from .analyst import NewsAnalyst, build_request, headlines_from_events
    s = record_settings(settings)
    feed = build_event_feeds([NEWS_NEED], data_dir)[0]
    done = [c for c in recorder.calls() if start <= parse_stamp(c.requested_at) < end]
    resumed = max((parse_stamp(c.requested_at) for c in done), default=None)
    first = start if resumed is None else resumed + timedelta(minutes=s.scan_interval_minutes)
    # the grid stays anchored at --start, so a resumed run lands on the same moments as one unbroken run
    every = timedelta(minutes=s.scan_interval_minutes)
    scans = [t for t in scan_times(start, end, every) if t >= first]
    pricer = NewsAnalyst(s, None, recorder, symbols=s.symbols)   # no client: only its cost bound is used
    with_news, worst = 0, 0.0
    for t in scans:
        hl = headlines_from_events(feed.events(t), t, s, s.symbols)
        if hl:
            with_news += 1
            worst += pricer.worst_case_cost(build_request(s, hl))
    return RecordPlan(scans, with_news, worst, resumed, list(s.symbols)), feed


def record_span(settings, start: datetime, end: datetime, data_dir: Path, client, recorder: VerdictRecorder,
                *, max_usd: float | None = None, say: Callable[[str], None] = print) -> dict:
    """Scan [start, end) with ``client`` (the SDK client; tests pass a MockTransport one) and record."""
    from .analyst import NewsAnalyst, build_request, headlines_from_events
    s = record_settings(settings)
    budget = s.monthly_spend_cap_usd if max_usd is None else max_usd
    the_plan, feed = plan(settings, start, end, data_dir, recorder)
    clock = _ScanClock()
    analyst = NewsAnalyst(s, client, recorder, clock=clock, symbols=s.symbols)
    spent, called, verdicts, stopped = 0.0, 0, 0, None
    for t in the_plan.scans:
        hl = headlines_from_events(feed.events(t), t, s, s.symbols)
        if hl and spent + analyst.worst_case_cost(build_request(s, hl)) > budget:
            stopped = t
            break
        clock.start(t)
        results = analyst.scan(t, hl)
        if hl:   # this scan's call row is the one requested at t (a resumed run starts after the last)
            spent += recorder.spend_between(t, t)
            called += recorder.calls_between(t, t)
        verdicts += sum(isinstance(r, SymbolVerdict) for r in results.values())
    out = {"scans": len(the_plan.scans) if stopped is None else the_plan.scans.index(stopped), "calls": called,
           "verdicts": verdicts, "spent_usd": round(spent, 4), "budget_usd": budget,
           "resumed_after": the_plan.resumed_after, "stopped_at": stopped, "symbols": the_plan.symbols}
    if stopped is not None:
        say(f"stopped before the scan of {stopped:%Y-%m-%d %H:%M}Z: its worst case would take this run past "
            f"--max-usd {budget:g} (spent ${spent:.4f}); run again to resume from there")
    return out
