"""Macro-event scalper (strategy bible, strategy 2; issue #18).

Edge: CPI, the Employment Situation (NFP) and FOMC decisions are scheduled volatility. Two halves:

* **Pre-event.** From ``pre_event_hours`` before a release until its first 15-minute candle has closed,
  new entries by any strategy on this plugin's assets are restricted through the entry gate
  (:class:`MacroEventWindowRule`, provided by :meth:`MacroEventScalper.gate_rules`): volatility is coming.
  With ``shrink_before_release = true`` the same rule also closes what is held on those assets (any
  strategy's position) from the window's start until the release: it BLOCKs the held symbol when the gate's
  ``flatten`` asks (``can_block``), and the engine exits it. Off by default: closing other strategies'
  positions is a cross-strategy decision an operator opts into, and an equity exit decided before an 08:30
  release fills only at the 09:30 open (no pre-market market orders), i.e. after the release.
* **Post-event.** Once the first 15-minute candle from the release has closed, trade in its direction when
  its move (|close - open|) is at least ``move_threshold`` times the symbol's typical 15-minute range at
  that time of day (median high-low of the same candle over the last ``range_lookback_days`` sessions);
  stop beyond the candle's opposite extreme, target ``reward_risk`` : 1, out ``exit_before_close_minutes``
  before the 16:00 close (or before the next release's window). An 08:30 release falls before the 09:30
  open: the entry is an extended-hours DAY limit order (``TradeProposal.extended_hours``).

Events override the regime: the plugin trades in every regime. Releases arrive only through the events
channel (``DataNeed("events", "macro_release")``); the 15-minute candles through ``MarketSnapshot.intraday``
(``DataNeed("intraday", symbol)``). A symbol without intraday candles is stood down, with the reason
recorded (``report_notes``): no daily-bar imitation of a 15-minute rule.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from datetime import datetime, time, timedelta
from typing import Iterable, Mapping
from zoneinfo import ZoneInfo

import numpy as np
from pydantic import Field, field_validator

from hydra_engine.domain import UTC, Regime, Side, Signal, TradeProposal
from hydra_engine.gate import GateState, GateVerdict
from hydra_engine.ports import MarketSnapshot
from hydra_engine.strategy import (CombinedSignal, DataNeed, ExitRequest, Strategy, StrategyContext,
                                   StrategyParams)

NEW_YORK = ZoneInfo("America/New_York")
CANDLE = timedelta(minutes=15)
DEFAULT_SYMBOLS = ("SPY", "TLT", "GLD", "SLV")
CRYPTO = ("BTC/USD", "ETH/USD")
MAX_NOTES = 200


class MacroEventParams(StrategyParams):
    symbols: tuple[str, ...] = Field(DEFAULT_SYMBOLS, description="traded on releases; BTC/USD may be added")
    event_types: tuple[str, ...] = Field(("CPI", "NFP", "FOMC"))
    pre_event_hours: float = Field(2.0, ge=1.0, le=4.0, description="entries restricted this long before a release")
    move_threshold: float = Field(1.5, gt=0, description="candle move / typical same-slot 15-min range to trade")
    range_lookback_days: int = Field(20, ge=5, le=30, description="sessions in the typical-range median")
    min_range_samples: int = Field(10, ge=3)
    reward_risk: float = Field(2.0, gt=0)
    stop_buffer_bps: float = Field(2.0, ge=0, description="stop this far beyond the candle's opposite extreme")
    limit_offset_bps: float = Field(10.0, ge=0, description="extended-hours limit: this far through the candle close")
    exit_before_close_minutes: int = Field(15, ge=0, le=120)
    shrink_before_release: bool = Field(False, description="close positions held on the event's assets (any "
                                        "strategy) from pre_event_hours before a release until the release")
    min_notional_usd: float = Field(500.0, ge=0)
    max_notional_usd: float = Field(5000.0, gt=0)

    @field_validator("event_types")
    @classmethod
    def _known_types(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [t for t in v if t not in ("CPI", "NFP", "FOMC")]
        if bad:
            raise ValueError(f"unknown event type(s) {bad}; expected CPI, NFP, FOMC")
        return v


def _ny(t: datetime) -> datetime:
    return t.astimezone(NEW_YORK)


def _session_end(release: datetime) -> datetime:
    return datetime.combine(_ny(release).date(), time(16, 0), NEW_YORK).astimezone(UTC)


def _candle_start(release: datetime) -> datetime:
    """The 15-minute candle holding the release (08:30 -> 08:30; a 14:16 FOMC stamp -> 14:15)."""
    s = int(release.timestamp())
    return datetime.fromtimestamp(s - s % 900, UTC)


class _Releases:
    """The known releases of the plugin's types as sorted epoch seconds, rebuilt only when the snapshot's
    events tuple changes (a replay feed hands the same tuple while nothing new is known)."""

    def __init__(self, types: tuple[str, ...]):
        self.types = set(types)
        self._events = None
        self.times: list[float] = []
        self.by_time: list = []

    def update(self, events: tuple) -> None:
        if events is self._events:
            return
        self._events = events
        mine = sorted((e for e in events if e.kind == "macro_release" and e.subject in self.types),
                      key=lambda e: e.happened_at)
        self.by_time = mine
        self.times = [e.happened_at.timestamp() for e in mine]

    def around(self, now_s: float, before_s: float, after_s: float) -> list:
        """Releases r with r - before_s <= now < r + after_s."""
        lo, hi = bisect_right(self.times, now_s - after_s), bisect_right(self.times, now_s + before_s)
        return self.by_time[lo:hi]


class MacroEventWindowRule:
    """Gate rule: no new entries on the scalper's assets from ``pre_event_hours`` before a release until its
    first 15-minute candle has closed (RESTRICT: exits go on). With ``shrink`` it is a blocking rule
    (``can_block``): asked by the gate's ``flatten`` about a held symbol (no side) before the release itself,
    it BLOCKs, so the engine closes that position; entries still get the RESTRICT."""

    name, scope, layer = "macro_event_window", "symbol", "strategy"
    interface_version = 1

    def __init__(self, symbols: Iterable[str], types: tuple[str, ...], pre_event_hours: float,
                 shrink: bool = False):
        self.symbols = frozenset(symbols)
        self.pre_s = pre_event_hours * 3600
        self.can_block = bool(shrink)
        self._releases = _Releases(types)

    def check(self, ctx, symbol: str | None = None, side=None) -> GateVerdict | None:
        if symbol not in self.symbols:
            return None
        self._releases.update(ctx.market.events)
        hits = self._releases.around(ctx.now.timestamp(), self.pre_s, CANDLE.total_seconds())
        if not hits:
            return None
        e = hits[0]
        if self.can_block and side is None and ctx.now < e.happened_at:   # the gate's flatten: a held symbol
            return GateVerdict(GateState.BLOCK, self.name,
                               f"{e.subject} release {_ny(e.happened_at):%Y-%m-%d %H:%M} New York: shrinking exposure "
                               f"before it (shrink_before_release): {symbol} closed")
        until = _candle_start(e.happened_at) + CANDLE
        return GateVerdict(GateState.RESTRICT, self.name,
                           f"{e.subject} release {_ny(e.happened_at):%Y-%m-%d %H:%M} New York: volatility expected; "
                           f"entries on {symbol} restricted until {_ny(until):%H:%M}")


class MacroEventScalper(Strategy):
    name = "macro_events"
    interface_version = 1
    regimes = frozenset(Regime)          # events override the regime
    assets = DEFAULT_SYMBOLS + CRYPTO    # the configurable universe; ``params.symbols`` picks from it
    data_needs = (DataNeed("events", "macro_release"), *(DataNeed("intraday", s) for s in DEFAULT_SYMBOLS),
                  *(DataNeed("bars", s) for s in DEFAULT_SYMBOLS))
    Params = MacroEventParams
    # the plugin contract test's span (start, end, cut): the default span holds no release; this one holds
    # the FOMC of 2024-01-31 and the NFP of 2024-02-02 before the cut, the CPI of 2024-02-13 after it
    contract_span = ("2024-01-25", "2024-02-16", "2024-02-06T00:00:00Z")

    def __init__(self, params: Mapping | None = None) -> None:
        super().__init__(params)
        bad = [s for s in self.params.symbols if s not in self.assets]
        if bad:
            raise ValueError(f"macro_events.symbols {bad} are not among its assets {list(self.assets)}")
        # instance-level needs follow the configured symbols (BTC/USD when added)
        self.data_needs = (DataNeed("events", "macro_release"),
                           *(DataNeed("intraday", s) for s in self.params.symbols),
                           *(DataNeed("bars", s) for s in self.params.symbols))
        self._releases = _Releases(self.params.event_types)
        self._decided: set[tuple[str, float]] = set()       # (symbol, release epoch) already judged
        self._pending: dict[str, dict] = {}                  # this cycle's candle verdicts, for propose
        self._entries: dict[str, float] = {}                 # symbol -> release epoch of the open trade
        self.notes: list[str] = []                           # what happened at each release (report)
        self.stood_down: dict[str, str] = {}                 # symbol -> why it cannot trade

    # ------------------------------------------------------------------ wiring hooks
    def gate_rules(self) -> list:
        p = self.params
        return [MacroEventWindowRule(p.symbols, p.event_types, p.pre_event_hours, shrink=p.shrink_before_release)]

    def cycle_times(self, events: Iterable, start: datetime | None = None, end: datetime | None = None) -> list[datetime]:
        """The clock ticks the plugin needs on a replay: every 15-minute close from the release's first
        candle to the 16:00 close of that day (stop, target and session-end exits are watched on them).
        With ``shrink_before_release`` also the window's start and 15 minutes later, so held positions are
        closed before the release even on a daily-bar universe. Ticks add cycles, never data."""
        out: list[datetime] = []
        pre = timedelta(hours=self.params.pre_event_hours)
        for e in events:
            if e.kind != "macro_release" or e.subject not in self.params.event_types:
                continue
            if self.params.shrink_before_release:
                w = e.happened_at - pre
                if not ((start and e.happened_at < start) or (end and w > end)):
                    out += [w, w + CANDLE]
            t, stop = _candle_start(e.happened_at) + CANDLE, _session_end(e.happened_at)
            if (start and stop < start) or (end and t > end):
                continue
            while t <= stop:
                out.append(t)
                t += CANDLE
        return out

    def report_notes(self) -> list[str]:
        stood = [f"{s}: stood down ({why})" for s, why in sorted(self.stood_down.items())]
        return stood + self.notes[-MAX_NOTES:]

    def _note(self, text: str) -> None:
        self.notes.append(text)
        if len(self.notes) > 2 * MAX_NOTES:
            del self.notes[:MAX_NOTES]

    # ------------------------------------------------------------------ signals
    def _live(self, market: MarketSnapshot) -> list:
        """Releases whose trade window (first candle closed .. session end) holds now."""
        self._releases.update(market.events)
        now_s = market.now.timestamp()
        return [e for e in self._releases.around(now_s, 0, 12 * 3600)
                if _candle_start(e.happened_at) + CANDLE <= market.now <= _session_end(e.happened_at)]

    def wants_cycle(self, market: MarketSnapshot) -> bool:
        return bool(self._live(market))

    # ------------------------------------------------------------------ event-horizon replay
    horizon_reads_data = True   # the replay driver passes its data source: the releases not known yet

    def horizon_next_wake(self, market: MarketSnapshot, data=None) -> datetime | None:
        """Event-horizon replay (hydra_engine/horizon.py): the earliest time ``wants_cycle`` could be True.

        ``_live`` holds a release of the plugin's types once it is known (``known_at``) and its first
        15-minute candle has closed, until the 16:00 New York close of its day: each release of the replay's
        event files is the window ``[max(known_at, candle close), session end]``; the promise is the start of
        the first window after now (1 s early), none while a window holds now (``horizon_plugins.event_wake``).
        None without a replay source, or for a subclass that changes the predicate."""
        cls = type(self)
        if (cls.wants_cycle, cls._live) != (MacroEventScalper.wants_cycle, MacroEventScalper._live):
            return None
        from hydra_engine.horizon_plugins import event_wake
        types = set(self.params.event_types)

        def window(e):
            if e.subject not in types:
                return None
            return max(e.known_at, _candle_start(e.happened_at) + CANDLE), _session_end(e.happened_at)
        return event_wake(self, market, data, "macro_release", window)

    def generate_signals(self, ctx: StrategyContext) -> list[Signal]:
        self._pending = {}
        out: list[Signal] = []
        for e in self._live(ctx.market):
            for symbol in self.params.symbols:
                key = (symbol, e.happened_at.timestamp())
                if key in self._decided:
                    continue
                self._decided.add(key)
                verdict = self._judge(ctx.market, symbol, e)
                if isinstance(verdict, str):
                    self._note(f"{_ny(e.happened_at):%Y-%m-%d %H:%M} {e.subject} {symbol}: {verdict}")
                    continue
                self._pending[symbol] = verdict
                out.append(Signal(symbol=symbol, score=verdict["direction"] * min(1.0, verdict["ratio"] / (2 * self.params.move_threshold)),
                                  confidence=min(0.9, 0.4 + 0.1 * verdict["ratio"]), source="macro_candle",
                                  created_at=verdict["closed_at"], half_life=timedelta(minutes=30),
                                  thesis=verdict["thesis"]))
        return out

    def _judge(self, market: MarketSnapshot, symbol: str, e) -> dict | str:
        """The first candle's verdict for ``symbol``: a dict to trade on, or a string saying why not."""
        p = self.params
        bars = market.intraday.get(symbol) if market.intraday else None
        if bars is None or not len(bars):
            why = (market.intraday_missing or {}).get(symbol) or f"no intraday bars for {symbol} in this market data"
            self.stood_down[symbol] = why
            return f"stood down: {why}"
        if symbol in (market.intraday_missing or {}):
            self.stood_down[symbol] = market.intraday_missing[symbol]
            return f"stood down: {market.intraday_missing[symbol]}"
        start = _candle_start(e.happened_at)
        start_s = int(start.timestamp())
        k = int(np.searchsorted(bars.ts, start_s))
        if k >= len(bars) or int(bars.ts[k]) != start_s:
            return f"no {symbol} candle at {_ny(start):%H:%M} (data gap): no trade"
        o, h, l, c = (float(x[k]) for x in (bars.open, bars.high, bars.low, bars.close))
        # the same 15-minute slot on earlier sessions: candles opening exactly n days before (n = 1..)
        slot = start_s - np.arange(1, 3 * p.range_lookback_days) * 86_400
        idx = np.searchsorted(bars.ts[:k], slot)
        ok = (idx < k)
        idx = idx[ok]
        same = idx[bars.ts[idx] == slot[ok]][: p.range_lookback_days]
        if len(same) < p.min_range_samples:
            return (f"only {len(same)} earlier {_ny(start):%H:%M} candles (< {p.min_range_samples}): typical range "
                    "unknown, no trade")
        typical = float(np.median(bars.high[same] - bars.low[same]))
        move = c - o
        if typical <= 0 or not math.isfinite(move):
            return "typical range is zero: no trade"
        ratio = abs(move) / typical
        if ratio < p.move_threshold or move == 0:
            return (f"candle {o:.2f} -> {c:.2f} ({move:+.2f}) is {ratio:.2f}x the typical {typical:.2f} range "
                    f"(< {p.move_threshold}): no trade")
        direction = 1 if move > 0 else -1
        return {"direction": direction, "ratio": ratio, "open": o, "high": h, "low": l, "close": c,
                "release": e, "closed_at": start + CANDLE,
                "thesis": (f"{e.subject} {_ny(e.happened_at):%Y-%m-%d %H:%M} NY: first 15-min candle {o:.2f} -> {c:.2f} "
                           f"({move:+.2f}, {ratio:.1f}x the typical {typical:.2f} range at that time): "
                           f"{'long' if direction > 0 else 'short'}")}

    # ------------------------------------------------------------------ proposals and exits
    def propose(self, ctx: StrategyContext, combined: Mapping[str, CombinedSignal]) -> list[TradeProposal | ExitRequest]:
        p = self.params
        out: list[TradeProposal | ExitRequest] = []
        now = ctx.now
        for symbol, held in ctx.held.items():   # out by the session's end, or before the next release
            if not held or symbol not in self._entries:
                continue
            release = datetime.fromtimestamp(self._entries[symbol], UTC)
            end = _session_end(release) - timedelta(minutes=p.exit_before_close_minutes)
            nxt = self._releases.around(now.timestamp(), p.pre_event_hours * 3600, 0)
            nxt = [e for e in nxt if e.happened_at.timestamp() > self._entries[symbol]]
            if now >= end:
                out.append(ExitRequest(self.name, symbol, f"session end: out by {_ny(end):%H:%M} New York"))
            elif nxt:
                out.append(ExitRequest(self.name, symbol, f"next release {nxt[0].subject} at "
                                                          f"{_ny(nxt[0].happened_at):%H:%M}: out before it"))
        for symbol, v in self._pending.items():
            view = combined.get(symbol)
            if view is None or ctx.held.get(symbol) or view.score * v["direction"] <= 0:
                continue
            entry = v["close"]
            buffer = entry * p.stop_buffer_bps / 10_000
            if v["direction"] > 0:
                side, stop = Side.BUY, v["low"] - buffer
            else:
                side, stop = Side.SELL, v["high"] + buffer
            risk = abs(entry - stop)
            if not (risk > 0 and stop > 0):
                continue
            target = entry + v["direction"] * p.reward_risk * risk
            if target <= 0:
                continue
            release = v["release"]
            premarket = _ny(v["closed_at"]).time() < time(9, 30) and symbol not in CRYPTO
            limit = entry * (1 + v["direction"] * p.limit_offset_bps / 10_000) if premarket else None
            self._entries[symbol] = release.happened_at.timestamp()
            out.append(TradeProposal(
                strategy=self.name, symbol=symbol, side=side, entry_price=entry, stop_price=stop, target_price=target,
                confidence=view.confidence, expected_holding=_session_end(release.happened_at) - now,
                thesis=v["thesis"] + ("; pre-market: extended-hours limit" if premarket else ""),
                max_notional_usd=p.max_notional_usd, min_notional_usd=p.min_notional_usd,
                extended_hours=premarket, limit_price=limit))
            self._note(f"{_ny(release.happened_at):%Y-%m-%d %H:%M} {release.subject} {symbol}: proposed "
                       f"{side.value} at {entry:.2f}, stop {stop:.2f}, target {target:.2f}"
                       + (" (extended-hours limit)" if premarket else ""))
        return out
