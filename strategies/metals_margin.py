"""Precious-metals margin and ratio trader (strategy bible, strategy 3; issue #18).

Three rules on GLD, SLV and GDX (daily bars), in HIGH_VOL, CRASH, RECOVERY and MEAN_REVERTING:

(a) **CME margin changes** (``cme_margin`` events: GC gold, SI silver). A hike forces leveraged longs to
    post cash or sell; the seed puts the liquidation 24-48 h after the change takes effect. From the
    effective close for ``window_hours`` (48 h) the plugin holds a short bias on the metal's ETF and the
    miners (GC -> GLD, GDX; SI -> SLV, GDX): a short where the venue allows it, and through its gate rule
    (:class:`MarginHikeLongBlock`) no new longs on those symbols by any strategy; confidence grows with the
    size of the hike. A cut is the reverse, weaker (half the score and confidence) and only from
    ``cut_min_pct``.
(b) **Gold/silver ratio.** Gold ounces per GLD share over silver ounces per SLV share (each trust's
    ounces per share fall with its fee; see :func:`ounces_per_share`), as a z-score over ``ratio_window``
    daily closes. Beyond +-``z_entry`` (1.5 sigma): mean reversion, long the cheap leg and short the rich
    leg; out when |z| < ``z_exit``.
(c) **Physical premium recovery** ("when physical premium recovers, flip long"). Needs a Shanghai gold
    premium series no source we have carries: a user may supply ``metals/shanghai_premium/shanghai_premium.csv``
    (point series ``shanghai_premium`` on GLD; columns ``known_at``, ``premium_usd_oz``). Within
    ``premium_lookback_days`` after a gold hike, a premium that has risen ``premium_recovery_usd`` above
    its low since the hike and is positive turns the bias on GLD long. **Inactive without that file**
    (the plugin's notes say so).

Events reach the plugin only through the events channel (``DataNeed("events", "cme_margin")``).
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right

import math
from datetime import date, datetime, timedelta
from typing import Mapping

import numpy as np
from pydantic import Field

from hydra_engine.domain import UTC, Regime, Side, Signal, TradeProposal
from hydra_engine.gate import GateState, GateVerdict
from hydra_engine.ports import MarketSnapshot
from hydra_engine.strategy import (CombinedSignal, DataNeed, ExitRequest, Strategy, StrategyContext,
                                   StrategyParams)

SYMBOLS = ("GLD", "SLV", "GDX")
FORGET_AFTER = timedelta(days=7)   # a recorded trade not held this long after its window: forgotten
TARGETS = {"GC": ("GLD", "GDX"), "SI": ("SLV", "GDX")}

# Ounces of metal per share: GLD started at 0.1 oz (2004-11-18), SLV at 10 oz (2006-04-28) and split 10:1
# on 2008-07-24; each trust sells metal to pay its fee (GLD 0.40 %/yr, SLV 0.50 %/yr), so the ounces per
# share fall by that much a year. Good to a fraction of a percent: the z-score of the ratio over weeks is
# insensitive to it, but a multi-year ratio level is not.
_TRUSTS = {"GLD": (date(2004, 11, 18), 0.1, 0.0040, None),
           "SLV": (date(2006, 4, 28), 10.0, 0.0050, (date(2008, 7, 24), 10.0))}


def ounces_per_share(symbol: str, day: date) -> float:
    start, oz, fee, split = _TRUSTS[symbol]
    years = max(0.0, (day - start).days / 365.25)
    if split is not None and day >= split[0]:
        oz /= split[1]
    return oz * (1 - fee) ** years


class MetalsMarginParams(StrategyParams):
    window_hours: float = Field(48.0, gt=0, le=168, description="bias after a margin change takes effect")
    hike_min_pct: float = Field(5.0, ge=0, description="smaller hikes are ignored")
    cut_min_pct: float = Field(10.0, ge=0, description="smaller cuts are ignored")
    ratio_window: int = Field(60, ge=20, le=500, description="daily closes in the ratio's z-score")
    z_entry: float = Field(1.5, gt=0)
    z_exit: float = Field(0.5, ge=0)
    margin_stop_pct: float = Field(3.0, gt=0, lt=50)
    ratio_stop_pct: float = Field(4.0, gt=0, lt=50)
    reward_risk: float = Field(2.0, gt=0)
    ratio_max_holding_days: float = Field(20.0, gt=0)
    entry_score: float = Field(0.2, ge=0, le=1)
    premium_lookback_days: float = Field(10.0, gt=0)
    premium_recovery_usd: float = Field(5.0, gt=0)
    min_notional_usd: float = Field(500.0, ge=0)
    max_notional_usd: float = Field(3000.0, gt=0)


class _MarginIndex:
    """The known GC/SI hikes and cuts of the last events tuple seen, by effective time (epoch seconds), rebuilt
    only when the snapshot's events tuple changes (a replay hands the same tuple while nothing new is known;
    the tuple is held, so its identity cannot be reused). Saves a scan of every event on every cycle."""

    def __init__(self) -> None:
        self._state: tuple = (None, [], [])      # (events tuple, margin events, their epoch seconds): one swap

    def around(self, events: tuple, now: datetime, window: timedelta) -> list:
        state = self._state
        if events is not state[0]:
            mine = sorted((e for e in events if e.kind == "cme_margin" and e.subject in TARGETS
                           and e.payload.get("direction") in ("hike", "cut")), key=lambda e: e.happened_at)
            state = self._state = (events, mine, [e.happened_at.timestamp() for e in mine])
        _, margin, times = state
        now_s = now.timestamp()   # effective <= now <= effective + window
        return margin[bisect_left(times, now_s - window.total_seconds()):bisect_right(times, now_s)]


_INDEX = _MarginIndex()


def _margin_events(market: MarketSnapshot, now: datetime, window: timedelta) -> list:
    """Known GC/SI hikes and cuts whose window [effective, effective + window] holds now."""
    if not market.events:
        return []
    return _INDEX.around(market.events, now, window)


class MarginHikeLongBlock:
    """Gate rule: no new longs on a metal's ETF and the miners while a margin hike's window is open
    (the "blocked longs" where a venue allows no short)."""

    name, scope, layer = "metals_margin_hike", "symbol", "strategy"
    interface_version = 1

    def __init__(self, window_hours: float, hike_min_pct: float):
        self.window, self.hike_min_pct = timedelta(hours=window_hours), hike_min_pct

    def check(self, ctx, symbol: str | None = None, side=None) -> GateVerdict | None:
        if symbol not in SYMBOLS or side is not Side.BUY or not ctx.market.events:
            return None
        for e in _margin_events(ctx.market, ctx.now, self.window):
            pct = e.payload.get("pct_change")
            if (e.payload.get("direction") == "hike" and symbol in TARGETS[e.subject]
                    and pct is not None and pct >= self.hike_min_pct):
                return GateVerdict(GateState.RESTRICT, self.name,
                                   f"CME {e.subject} margin +{pct:.1f}% effective {e.happened_at:%Y-%m-%d %H:%M}Z: "
                                   f"no new longs on {symbol} until {e.happened_at + self.window:%Y-%m-%d %H:%M}Z")
        return None


class MetalsMarginTrader(Strategy):
    name = "metals_margin"
    interface_version = 1
    regimes = frozenset({Regime.HIGH_VOL, Regime.CRASH, Regime.RECOVERY, Regime.MEAN_REVERTING})
    assets = SYMBOLS
    data_needs = (DataNeed("events", "cme_margin"), *(DataNeed("bars", s) for s in SYMBOLS),
                  DataNeed("shanghai_premium", "GLD"))
    Params = MetalsMarginParams
    # the plugin contract test's span (start, end, cut): the default span has no ratio beyond 1.5 sigma and no
    # margin change; April 2024 has the ratio at -2.4..-3.0 sigma on both sides of the cut
    contract_span = ("2024-04-01", "2024-04-20", "2024-04-10T00:00:00Z")

    def __init__(self, params: Mapping | None = None) -> None:
        super().__init__(params)
        self._z_key: tuple | None = None
        self._z: float | None = None
        self._z_why = "not computed yet"
        self._trades: dict[str, tuple[str, datetime]] = {}    # symbol -> (rule, until)
        self.counts = {"margin_signals": 0, "ratio_signals": 0, "premium_signals": 0}
        self._premium_seen = False

    def gate_rules(self) -> list:
        return [MarginHikeLongBlock(self.params.window_hours, self.params.hike_min_pct)]

    def report_notes(self) -> list[str]:
        notes = [f"signals: {self.counts}", f"gold/silver ratio z: {self._z_why}"]
        if not self._premium_seen:
            notes.append("physical-premium rule inactive: no shanghai_premium series "
                         "(metals/shanghai_premium/shanghai_premium.csv) in the data")
        return notes

    # ------------------------------------------------------------------ the ratio
    def ratio_z(self, market: MarketSnapshot) -> float | None:
        """z-score of today's gold/silver ratio against the last ``ratio_window`` daily ratios (None: too few)."""
        g, s = market.bars.get("GLD"), market.bars.get("SLV")
        if g is None or s is None or not len(g) or not len(s):
            self._z_why = "no GLD or SLV bars"
            return None
        key = (int(g.ts[-1]), int(s.ts[-1]), len(g), len(s))
        if key == self._z_key:
            return self._z
        self._z_key = key
        common, gi, si = np.intersect1d(g.ts, s.ts, assume_unique=True, return_indices=True)
        n = self.params.ratio_window
        if len(common) < n + 1:
            self._z, self._z_why = None, f"only {len(common)} common GLD/SLV closes (< {n + 1})"
            return None
        gi, si, common = gi[-(n + 1):], si[-(n + 1):], common[-(n + 1):]
        days = [datetime.fromtimestamp(int(t), UTC).date() for t in common]
        oz_g = np.array([ounces_per_share("GLD", d) for d in days])
        oz_s = np.array([ounces_per_share("SLV", d) for d in days])
        ratio = (g.close[gi] / oz_g) / (s.close[si] / oz_s)
        hist = ratio[:-1]
        sd = float(np.std(hist, ddof=1))
        if not (sd > 0 and np.isfinite(ratio).all()):
            self._z, self._z_why = None, "flat or invalid ratio history"
            return None
        self._z = float((ratio[-1] - hist.mean()) / sd)
        self._z_why = f"{self._z:+.2f} (ratio {ratio[-1]:.1f}, {n}-day mean {hist.mean():.1f}) at {days[-1]}"
        return self._z

    # ------------------------------------------------------------------ signals
    def wants_cycle(self, market: MarketSnapshot) -> bool:
        if market.events and _margin_events(market, market.now, timedelta(hours=self.params.window_hours)):
            return True
        z = self.ratio_z(market)
        return z is not None and abs(z) >= self.params.z_exit or bool(self._trades)

    # ------------------------------------------------------------------ event-horizon replay
    horizon_reads_data = True   # the replay driver passes its data source: future bars and margin changes

    def horizon_next_wake(self, market: MarketSnapshot, data=None) -> datetime | None:
        """Event-horizon replay (hydra_engine/horizon.py): the earliest time ``wants_cycle`` could be True.

        ``wants_cycle`` is True while a trade is recorded (``_trades``: no promise then), while a known GC/SI
        hike or cut is inside its window (each margin change of the replay's event file is the window
        ``[max(effective, known_at), effective + window_hours]``), or while the ratio's |z| >= ``z_exit``
        (no promise then). The z-score reads only the GLD and SLV bars of the snapshot, so it cannot change
        before the next GLD or SLV bar closes: the promise is the earlier of that close and the start of the
        next margin window (1 s early). The z-score is read without touching the plugin's cache (its notes
        stay exactly as a tick-by-tick run leaves them). None without a replay source."""
        cls = type(self)
        if (cls.wants_cycle, cls.ratio_z) != (MetalsMarginTrader.wants_cycle, MetalsMarginTrader.ratio_z):
            return None   # a subclass or patch changed the predicate this promise is derived from
        if self._trades or getattr(data, "_bars", None) is None:
            return None
        from hydra_engine.horizon_plugins import event_wake, next_bar_close
        window = timedelta(hours=self.params.window_hours)

        def span(e):
            if e.subject not in TARGETS or e.payload.get("direction") not in ("hike", "cut"):
                return None
            return max(e.happened_at, e.known_at), e.happened_at + window
        best = event_wake(self, market, data, "cme_margin", span)
        if best is None:
            return None
        saved = (self._z_key, self._z, self._z_why)
        try:
            z = self.ratio_z(market)
        finally:
            self._z_key, self._z, self._z_why = saved
        if z is not None and abs(z) >= self.params.z_exit:
            return None
        for symbol in ("GLD", "SLV"):
            t = next_bar_close(market, data, symbol)
            if t is not None:
                best = min(best, datetime.fromtimestamp(t, UTC))
        return best

    def generate_signals(self, ctx: StrategyContext) -> list[Signal]:
        p, out = self.params, []
        window = timedelta(hours=p.window_hours)
        hikes = []
        for e in _margin_events(ctx.market, ctx.now, window):
            pct = e.payload.get("pct_change")
            if pct is None or not math.isfinite(pct):
                continue
            hike = e.payload["direction"] == "hike"
            if (hike and pct < p.hike_min_pct) or (not hike and -pct < p.cut_min_pct):
                continue
            size = min(1.0, abs(pct) / 40)
            score, conf = (-size, min(0.9, 0.3 + abs(pct) / 50)) if hike else (0.5 * size, 0.5 * min(0.9, 0.3 + abs(pct) / 50))
            if hike:
                hikes.append(e)
            for symbol in TARGETS[e.subject]:
                out.append(Signal(symbol, score, conf, "cme_margin", max(e.happened_at, e.known_at),
                                  window, f"CME {e.subject} margin {pct:+.1f}% effective {e.happened_at:%Y-%m-%d %H:%M}Z: "
                                          f"{'forced selling expected: short bias' if hike else 'margin relief: long bias'}"))
                self.counts["margin_signals"] += 1
        z = self.ratio_z(ctx.market)
        if z is not None and abs(z) >= p.z_entry:
            strength = min(1.0, abs(z) / (2 * p.z_entry))
            conf = min(0.8, 0.3 + 0.2 * (abs(z) - p.z_entry))
            rich, cheap = ("GLD", "SLV") if z > 0 else ("SLV", "GLD")
            when = datetime.fromtimestamp(int(ctx.market.bars["GLD"].ts[-1]) + ctx.market.bars["GLD"].interval_s, UTC)
            when = min(when, ctx.now)
            thesis = f"gold/silver ratio z {z:+.2f} beyond {p.z_entry}: {cheap} cheap, {rich} rich (mean reversion)"
            out.append(Signal(cheap, strength, conf, "gs_ratio", when, timedelta(days=5), thesis))
            out.append(Signal(rich, -strength, conf, "gs_ratio", when, timedelta(days=5), thesis))
            self.counts["ratio_signals"] += 2
        prem = ctx.market.point_series("shanghai_premium", "GLD")
        if prem is not None and len(prem):
            self._premium_seen = True
            for e in hikes:
                if e.subject != "GC":
                    continue
                since = prem.values[prem.ts >= int(e.happened_at.timestamp())]
                if len(since) >= 2 and since[-1] > 0 and since[-1] - since.min() >= p.premium_recovery_usd:
                    out.append(Signal("GLD", 0.6, 0.5, "physical_premium",
                                      datetime.fromtimestamp(int(prem.ts[-1]), UTC), timedelta(days=2),
                                      f"Shanghai premium back to {since[-1]:.1f} USD/oz from {since.min():.1f} "
                                      "after the hike: flip long"))
                    self.counts["premium_signals"] += 1
        return out

    # ------------------------------------------------------------------ proposals and exits
    def propose(self, ctx: StrategyContext, combined: Mapping[str, CombinedSignal]) -> list[TradeProposal | ExitRequest]:
        p, out, now = self.params, [], ctx.now
        # a recorded trade is read only while its symbol is held; one not held a week past its own window is
        # the plan of no order still to fill (an entry waits at most for the next session open), so it is
        # forgotten and stops waking the plugin (``wants_cycle``) on every cycle for the rest of the run
        for symbol in [s for s, (_, until) in self._trades.items() if not ctx.held.get(s) and now > until + FORGET_AFTER]:
            del self._trades[symbol]
        z = self.ratio_z(ctx.market)
        for symbol, held in ctx.held.items():
            if not held or symbol not in self._trades:
                continue
            rule, until = self._trades[symbol]
            view = combined.get(symbol)
            if rule == "cme_margin" and now > until:
                out.append(ExitRequest(self.name, symbol, "margin window over"))
            elif rule == "gs_ratio" and (z is None or abs(z) < p.z_exit):
                out.append(ExitRequest(self.name, symbol, f"ratio z back inside {p.z_exit}"))
            elif view is not None and view.score * held < 0 and abs(view.score) >= p.entry_score:
                out.append(ExitRequest(self.name, symbol, f"bias turned {view.score:+.2f} against the position"))
        for symbol in SYMBOLS:
            view = combined.get(symbol)
            if view is None or ctx.held.get(symbol) or abs(view.score) < p.entry_score:
                continue
            price = ctx.market.price(symbol)
            if not (math.isfinite(price) and price > 0):
                continue
            sources = [c["source"] for c in view.contributors if c["score"] * view.score > 0]
            rule = "cme_margin" if "cme_margin" in sources else "gs_ratio" if "gs_ratio" in sources else "physical_premium"
            stop_pct = p.margin_stop_pct if rule == "cme_margin" else p.ratio_stop_pct
            sign = 1 if view.score > 0 else -1
            stop = price * (1 - sign * stop_pct / 100)
            target = price * (1 + sign * stop_pct * p.reward_risk / 100)
            holding = (timedelta(hours=p.window_hours) if rule == "cme_margin"
                       else timedelta(days=p.ratio_max_holding_days))
            self._trades[symbol] = (rule, now + holding)
            theses = "; ".join(c.get("thesis", c["source"]) for c in view.contributors)
            out.append(TradeProposal(strategy=self.name, symbol=symbol, side=Side.BUY if sign > 0 else Side.SELL,
                                     entry_price=price, stop_price=stop, target_price=target,
                                     confidence=view.confidence, expected_holding=holding, thesis=theses or rule,
                                     max_notional_usd=p.max_notional_usd, min_notional_usd=p.min_notional_usd))
        return out
