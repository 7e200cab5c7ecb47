"""AI/SaaS disruption shock trader (strategy bible, strategy 4): the DeepSeek playbook.

A model launch (``ai_model_launch`` events: the curated list, live also the vendors' SDK releases) is only
a *candidate*. It becomes a **shock** when the market confirms it: in the first ``window_sessions`` US
sessions after the launch was public, IGV's log move from the last close before the launch reaches
``-shock_z`` standard deviations of its own daily volatility (measured over ``vol_lookback`` sessions
before the launch), scaled by the square root of the sessions elapsed. The session that crosses is the
confirmation session C; day 1 is the session after C (the bar of C is only known once it has closed).

* **Day 1–``short_days``**: short the structurally impaired names (``impaired``, LZ in the seed). A venue
  that cannot short one (Alpaca marks LZ not shortable) refuses it in the risk layer's capability check
  (``not_shortable``, with the reason in the decision trace); the plugin expects that: it also asks to
  close any long it holds in an impaired name and never buys one while the shock is live (blocked longs).
  Shorts are closed from day ``short_days`` + 1.
* **Day ``dip_start``–``dip_end``**: buy the quality names (``quality``) once the selling slows. The rule:
  at the newest close, IGV closed above its previous close **and** the name closed above its previous
  close, **and** the name is still below its last close before the launch (a dip, not a chase). Stop:
  ``stop_buffer_pct`` under the name's lowest low since the launch (the shock low); target
  ``reward_risk`` × the risk; time exit: every position of the shock is closed once day ``dip_end`` has
  passed.

While a launch is being watched (its window open) the plugin also emits a ``launch_watch`` signal on IGV
(the move so far in σ), so the trace shows every launch it looked at, confirmed or not. Everything is
computed from the snapshot at each cycle (no state): a bar after the cycle can never enter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Mapping

import numpy as np
from pydantic import Field

from hydra_engine.domain import Regime, Side, Signal, TradeProposal
from hydra_engine.events import Event
from hydra_engine.ports import BarSeries, MarketSnapshot
from hydra_engine.strategy import (CombinedSignal, DataNeed, ExitRequest, Strategy, StrategyContext,
                                   StrategyParams)

INDEX = "IGV"
QUALITY = ("CRM", "SHOP", "ADBE", "MSFT", "WDAY")
IMPAIRED = ("LZ",)
SYMBOLS = (INDEX, *QUALITY, *IMPAIRED)
SESSION_CLOSE_S = 16 * 3600      # a daily bar opens at midnight New York; its session closes 16 h later
LAUNCH_KIND = "ai_model_launch"


class AiDisruptionParams(StrategyParams):
    window_sessions: int = Field(5, ge=1, le=20, description="sessions after a launch in which IGV may confirm it")
    shock_z: float = Field(2.0, gt=0, description="IGV's move since the launch, in sigmas of its daily vol x sqrt(sessions)")
    vol_lookback: int = Field(60, ge=10, le=250, description="sessions of IGV returns before the launch for its volatility")
    impaired: tuple[str, ...] = Field(IMPAIRED, description="structurally impaired names: shorted on day 1-2")
    quality: tuple[str, ...] = Field(QUALITY, description="quality names: dips bought on days dip_start-dip_end")
    short_days: int = Field(2, ge=1, le=5)
    dip_start: int = Field(3, ge=1, le=20)
    dip_end: int = Field(10, ge=2, le=30)
    stop_buffer_pct: float = Field(1.0, ge=0, lt=20, description="stop this far under the shock low")
    short_stop_pct: float = Field(8.0, gt=0, lt=50, description="a short's stop above its entry")
    reward_risk: float = Field(2.0, gt=0)
    min_notional_usd: float = Field(200.0, ge=0)
    max_notional_usd: float = Field(2000.0, gt=0)
    watch_confidence: float = Field(0.2, ge=0, le=1)


@dataclass(frozen=True, slots=True)
class Shock:
    """A launch the market confirmed: C = index of the confirmation session in IGV's bars."""

    launch: Event
    first: int          # index of the launch's first session
    confirm: int        # index of the confirmation session C
    z: float            # IGV's move at C, in sigmas
    move_pct: float     # IGV's move at C, percent
    confirm_ts: int     # C's bar open time (epoch s)


def first_session_index(igv: BarSeries, known_at: datetime) -> int:
    """Index of the first session whose close (16:00 New York) is after ``known_at`` (may be len(igv))."""
    return int(np.searchsorted(igv.ts + SESSION_CLOSE_S, known_at.timestamp(), side="right"))


def watch(igv: BarSeries, launch: Event, p: AiDisruptionParams) -> tuple[int, float | None, int | None]:
    """(first session index, IGV's z so far or None, the confirming index or None) over the closed bars
    ``igv`` holds (only those: the caller's snapshot)."""
    i0 = first_session_index(igv, launch.known_at)
    if i0 < p.vol_lookback + 1 or i0 >= len(igv):
        return i0, None, None
    close = igv.close
    rets = np.diff(np.log(close[i0 - p.vol_lookback - 1:i0]))
    vol = float(np.std(rets, ddof=1))
    if not (math.isfinite(vol) and vol > 0):
        return i0, None, None
    ref = float(close[i0 - 1])
    z = None
    for j in range(i0, min(i0 + p.window_sessions, len(igv))):
        z = math.log(float(close[j]) / ref) / (vol * math.sqrt(j - i0 + 1))
        if z <= -p.shock_z:
            return i0, z, j
    return i0, z, None


def find_shock(igv: BarSeries, launch: Event, p: AiDisruptionParams,
               watched: tuple[int, float | None, int | None] | None = None) -> Shock | None:
    """The confirmed shock of ``launch`` in ``igv``, or None; ``watched``: ``watch(igv, launch, p)`` if known."""
    i0, z, c = watched if watched is not None else watch(igv, launch, p)
    if c is None:
        return None
    return Shock(launch, i0, c, z, (float(igv.close[c]) / float(igv.close[i0 - 1]) - 1) * 100, int(igv.ts[c]))


class AiDisruption(Strategy):
    name = "ai_disruption"
    interface_version = 1
    regimes = frozenset({Regime.TRENDING_DOWN, Regime.HIGH_VOL, Regime.RECOVERY})
    assets = SYMBOLS
    data_needs = (*(DataNeed("bars", s) for s in SYMBOLS), DataNeed("events", LAUNCH_KIND))
    Params = AiDisruptionParams
    # the plugin contract (tests/test_plugin_contract.py) over the Llama 3.1 405B shock (IGV confirmed it on
    # 2024-07-24; dips bought on day 10, 2024-08-06, time exit day 11). Its regimes are the bible's
    # (TRENDING_DOWN, HIGH_VOL, RECOVERY): the shipped HMM reads TRENDING_UP or MEAN_REVERTING through all
    # three 2024 shocks (README "Evidence"), the trend/volatility rule reads TRENDING_DOWN from 2024-08-02,
    # so the contract runs it under that detector, re-read every cycle
    contract_span = ("2024-03-01", "2024-08-20", "2024-08-09T00:00:00Z")
    contract_settings = {"engine": {"regime_detector": "trend_vol_rule", "regime_refresh_cycles": 1}}

    def __init__(self, params: Mapping | None = None) -> None:
        super().__init__(params)
        p = self.params
        unknown = [s for s in (*p.impaired, *p.quality) if s not in SYMBOLS]
        if unknown:
            raise ValueError(f"ai_disruption: impaired/quality names {unknown} are outside its assets {SYMBOLS}")
        # how long a launch can matter: its window, then dip_end sessions, in calendar days with slack
        self._horizon = timedelta(days=2 * (p.window_sessions + p.dip_end) + 10)
        # per-cycle work that only changes when its inputs do (the cycle's snapshot; IGV's daily bars):
        # most cycles of an hourly replay see the same IGV bars as the one before
        self._launch_memo: tuple[MarketSnapshot, tuple[Event, ...]] | None = None
        self._watch_memo: tuple[bytes, bytes, dict] | None = None

    # ------------------------------------------------------------------ what is live at this snapshot
    def _recent_launches(self, market: MarketSnapshot) -> tuple[Event, ...]:
        memo = self._launch_memo   # wants_cycle, generate_signals, propose: one scan per snapshot
        if memo is not None and memo[0] is market:
            return memo[1]
        cutoff = market.now - self._horizon
        out = tuple(e for e in market.events_of(LAUNCH_KIND) if cutoff <= e.known_at <= market.now)
        self._launch_memo = (market, out)
        return out

    def _watched(self, igv: BarSeries, launch: Event) -> tuple[int, float | None, int | None]:
        """``watch(igv, launch, params)``, kept while IGV's bars are byte for byte the ones it was computed
        on (watch reads only their times and closes, and the launch's ``known_at``)."""
        ts, close = np.ascontiguousarray(igv.ts).tobytes(), np.ascontiguousarray(igv.close).tobytes()
        memo = self._watch_memo
        if memo is None or memo[0] != ts or memo[1] != close:
            memo = self._watch_memo = (ts, close, {})
        hit = memo[2].get(launch.known_at)
        if hit is None:
            hit = memo[2][launch.known_at] = watch(igv, launch, self.params)
        return hit

    def wants_cycle(self, market: MarketSnapshot) -> bool:
        return bool(self._recent_launches(market))

    # ------------------------------------------------------------------ event-horizon replay
    horizon_reads_data = True   # the replay driver passes its data source: the launches not known yet

    def horizon_next_wake(self, market: MarketSnapshot, data=None) -> datetime | None:
        """Event-horizon replay (hydra_engine/horizon.py): the earliest time ``wants_cycle`` could be True.

        ``wants_cycle`` is True while a launch known at most ``_horizon`` ago (40 days by default) is known:
        each launch of the replay's event file is the window ``[known_at, known_at + _horizon]``; the promise
        is the next launch's ``known_at`` (1 s early), none while a window holds now. None without a replay
        source. (Launches come every few weeks from 2022 on, so it promises mostly before the first one.)"""
        cls = type(self)
        if (cls.wants_cycle, cls._recent_launches) != (AiDisruption.wants_cycle, AiDisruption._recent_launches):
            return None
        from hydra_engine.horizon_plugins import event_wake
        horizon = self._horizon
        return event_wake(self, market, data, LAUNCH_KIND, lambda e: (e.known_at, e.known_at + horizon))

    def live_shock(self, market: MarketSnapshot) -> tuple[Shock, int] | None:
        """The newest confirmed shock still inside its trading days, with today's day number."""
        igv = market.bars.get(INDEX)
        if igv is None or not len(igv):
            return None
        best = None
        for launch in self._recent_launches(market):
            shock = find_shock(igv, launch, self.params, self._watched(igv, launch))
            if shock is None:
                continue
            day = len(igv) - 1 - shock.confirm + 1     # day 1 = the session after C
            if day <= self.params.dip_end + 1 and (best is None or shock.confirm > best[0].confirm):
                best = (shock, day)
        return best

    # ------------------------------------------------------------------ signals
    def generate_signals(self, ctx: StrategyContext) -> list[Signal]:
        market, p = ctx.market, self.params
        igv = market.bars.get(INDEX)
        if igv is None or not len(igv):
            return []
        out: list[Signal] = []
        seen_at = datetime.fromtimestamp(int(igv.ts[-1]) + igv.interval_s, market.now.tzinfo)
        seen_at = min(seen_at, market.now)
        for launch in self._recent_launches(market):
            i0, z, c = self._watched(igv, launch)
            if z is None or (c is None and len(igv) - i0 > p.window_sessions):
                continue   # not watched yet, or its window closed without a shock
            if c is not None and len(igv) - 1 - c + 1 > p.dip_end + 1:
                continue
            state = f"confirmed at {datetime.fromtimestamp(int(igv.ts[c]), market.now.tzinfo):%Y-%m-%d}" if c is not None \
                else f"not confirmed ({len(igv) - i0} of {p.window_sessions} sessions)"
            out.append(Signal(symbol=INDEX, score=max(-1.0, min(1.0, z / (2 * p.shock_z))),
                              confidence=p.watch_confidence if c is None else min(0.9, 0.3 + abs(z) / 10),
                              source="launch_watch", created_at=seen_at, half_life=timedelta(days=2),
                              thesis=f"launch {launch.subject} ({launch.payload.get('model', launch.subject)}): IGV "
                                     f"{z:+.2f} sigma since, shock threshold -{p.shock_z:g}: {state}"))
        live = self.live_shock(market)
        if live is not None:
            shock, day = live
            if day <= p.short_days:
                for s in p.impaired:
                    out.append(Signal(symbol=s, score=-0.8, confidence=0.6, source="ai_shock_impaired",
                                      created_at=seen_at, half_life=timedelta(days=2),
                                      thesis=f"day {day} of the {shock.launch.subject} shock (IGV {shock.move_pct:+.1f}%, "
                                             f"{shock.z:+.2f} sigma): {s} structurally impaired, short; if the venue "
                                             "cannot short it: exits and blocked longs"))
            elif p.dip_start <= day <= p.dip_end:
                for s in p.quality:
                    slowed, why = self.selling_slowed(market, s, shock)
                    if slowed:
                        out.append(Signal(symbol=s, score=0.7, confidence=0.6, source="ai_shock_dip",
                                          created_at=seen_at, half_life=timedelta(days=3),
                                          thesis=f"day {day} of the {shock.launch.subject} shock: {why}"))
        return out

    def selling_slowed(self, market: MarketSnapshot, symbol: str, shock: Shock) -> tuple[bool, str]:
        """The dip-buy rule (module docstring): both IGV and the name closed up, the name still below its
        pre-launch close."""
        igv, bars = market.bars.get(INDEX), market.bars.get(symbol)
        if bars is None or len(bars) < 3 or igv is None or len(igv) < 2:
            return False, "no bars"
        k0 = int(np.searchsorted(bars.ts, int(igv.ts[shock.first]), side="left"))
        if k0 < 1 or k0 >= len(bars):
            return False, "no bars since the launch"
        ref, last, prev = float(bars.close[k0 - 1]), float(bars.close[-1]), float(bars.close[-2])
        igv_up = float(igv.close[-1]) > float(igv.close[-2])
        ok = igv_up and last > prev and last < ref
        return ok, (f"selling slowed: IGV {'up' if igv_up else 'not up'}, {symbol} {last / prev - 1:+.2%} on the day, "
                    f"{last / ref - 1:+.2%} from its pre-launch close")

    # ------------------------------------------------------------------ proposals
    def propose(self, ctx: StrategyContext, combined: Mapping[str, CombinedSignal]) -> list[TradeProposal | ExitRequest]:
        p, market = self.params, ctx.market
        out: list[TradeProposal | ExitRequest] = []
        live = self.live_shock(market)
        for symbol, qty in ctx.held.items():   # time exits, and impaired names never held long in a shock
            if live is None:
                out.append(ExitRequest(self.name, symbol, "no live AI shock: the trade's window has passed"))
                continue
            shock, day = live
            if day > p.dip_end:
                out.append(ExitRequest(self.name, symbol, f"time exit: day {day} > {p.dip_end} of the "
                                                          f"{shock.launch.subject} shock"))
            elif symbol in p.impaired and qty > 0:
                out.append(ExitRequest(self.name, symbol, f"{symbol} impaired by the {shock.launch.subject} shock: close the long"))
            elif symbol in p.impaired and qty < 0 and day > p.short_days:
                out.append(ExitRequest(self.name, symbol, f"day {day}: the day-1-{p.short_days} short is over"))
        if live is None:
            return out
        shock, day = live
        for symbol in p.impaired if day <= p.short_days else p.quality if p.dip_start <= day <= p.dip_end else ():
            view = combined.get(symbol)
            if view is None or ctx.held.get(symbol):
                continue
            price = market.price(symbol)
            if not (math.isfinite(price) and price > 0):
                continue
            theses = "; ".join(c.get("thesis", c["source"]) for c in view.contributors)
            if symbol in p.impaired:
                if view.score >= 0:
                    continue
                stop = price * (1 + p.short_stop_pct / 100)
                out.append(TradeProposal(strategy=self.name, symbol=symbol, side=Side.SELL, entry_price=price,
                                         stop_price=stop, target_price=price - p.reward_risk * (stop - price),
                                         confidence=view.confidence,
                                         expected_holding=timedelta(days=p.short_days + 1), thesis=theses,
                                         max_notional_usd=p.max_notional_usd, min_notional_usd=p.min_notional_usd))
                continue
            if view.score <= 0 or not any(c["source"] == "ai_shock_dip" for c in view.contributors):
                continue
            bars = market.bars.get(symbol)
            k0 = int(np.searchsorted(bars.ts, shock.launch.known_at.timestamp() - 86_400, side="left"))
            low = float(np.min(bars.low[k0:])) if k0 < len(bars) else math.nan
            stop = low * (1 - p.stop_buffer_pct / 100)
            if not (math.isfinite(stop) and 0 < stop < price):
                continue
            out.append(TradeProposal(strategy=self.name, symbol=symbol, side=Side.BUY, entry_price=price,
                                     stop_price=stop, target_price=price + p.reward_risk * (price - stop),
                                     confidence=view.confidence,
                                     expected_holding=timedelta(days=int(1.5 * (p.dip_end - day + 1)) + 1),
                                     thesis=f"{theses}; stop {p.stop_buffer_pct:g}% under the shock low {low:.2f}",
                                     max_notional_usd=p.max_notional_usd, min_notional_usd=p.min_notional_usd))
        return out
