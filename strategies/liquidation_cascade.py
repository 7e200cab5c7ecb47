"""Crypto liquidation-cascade hunter (strategy bible, strategy 1).

Edge: forced liquidations are mechanical. Funding above 0.05 % per 8 h means an over-levered long
crowd that pays to stay in (downside bias); open interest falling more than 5 % in an hour means a
cascade is under way — ride it in the direction price is moving. Alpaca crypto is spot and cannot
be shorted, so a downside view closes this plugin's longs and blocks new ones; an upside cascade
(shorts being squeezed) or deeply negative funding is bought, $200–2,000 a trade.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Mapping

import numpy as np
from pydantic import Field

from hydra_engine.domain import Regime, Side, Signal, TradeProposal
from hydra_engine.ports import MarketSnapshot
from hydra_engine.strategy import (CombinedSignal, DataNeed, ExitRequest, Strategy, StrategyContext,
                                   StrategyParams)

SYMBOLS = ("BTC/USD", "ETH/USD")


class LiquidationCascadeParams(StrategyParams):
    funding_threshold: float = Field(0.0005, gt=0, description="funding per 8 h above which longs are crowded")
    oi_drop_pct: float = Field(5.0, gt=0, description="open-interest fall within one hour that marks a cascade")
    min_notional_usd: float = Field(200.0, ge=0)
    max_notional_usd: float = Field(2000.0, gt=0)
    stop_pct: float = Field(2.0, gt=0, lt=50)
    reward_risk: float = Field(2.0, gt=0)
    trailing_stop_pct: float | None = Field(2.5, gt=0, description="wider than stop_pct: the trail takes over in profit")
    max_holding_hours: float = Field(48.0, gt=0)
    entry_score: float = Field(0.3, ge=0, le=1, description="combined score needed to buy")
    exit_score: float = Field(-0.2, ge=-1, le=0, description="combined score at which longs are closed")
    funding_max_age_hours: float = Field(9.0, gt=0)
    oi_max_age_hours: float = Field(2.0, gt=0)


class LiquidationCascadeHunter(Strategy):
    name = "liquidation_cascade"
    interface_version = 1
    regimes = frozenset({Regime.HIGH_VOL, Regime.CRASH, Regime.TRENDING_UP, Regime.TRENDING_DOWN})
    assets = SYMBOLS
    data_needs = tuple(DataNeed(kind, s) for s in SYMBOLS for kind in ("bars", "funding_rate", "open_interest"))
    Params = LiquidationCascadeParams

    # ------------------------------------------------------------------ signals
    def wants_cycle(self, market: MarketSnapshot) -> bool:
        """Awake exactly when a signal would come out (both read only the newest funding and open-interest
        values, so this is cheap); without a signal ``propose`` has nothing to act on."""
        return any(self._funding_signal(market, s) or self._cascade_signal(market, s) for s in SYMBOLS)

    # ------------------------------------------------------------------ event-horizon replay
    horizon_reads_data = True   # the replay driver passes its data source: the future points' times

    def horizon_next_wake(self, market: MarketSnapshot, data=None) -> datetime | None:
        """Event-horizon replay (hydra_engine/horizon.py): the earliest time ``wants_cycle`` could be True.

        Both signals read only the newest funding / open-interest point (and, for the cascade, bars closed
        by it); the funding signal needs |rate| above the threshold, the cascade an open-interest fall of
        ``oi_drop_pct`` against the point one to two hours older -- properties of the point series alone
        (:meth:`_hot_points`, computed on the whole replay series: a superset of what a snapshot's window
        allows). While the newest point of either kind is *hot* the answer is ``market.now`` (no promise:
        price bars and the point's age then decide); otherwise nothing can wake the plugin before the
        next hot point of any symbol is known (its ``known_at``). None without a replay source."""
        points = getattr(data, "_points", None)
        cls = type(self)
        if points is None or (cls.wants_cycle, cls._funding_signal, cls._cascade_signal) != _PROMISED:
            return None   # a subclass or patch changed the predicate this promise is derived from
        now_s = int(market.now.timestamp())
        best = None
        for symbol in SYMBOLS:
            for kind in ("funding_rate", "open_interest"):
                src = points.get((kind, symbol))
                if src is None:
                    continue       # no such series in the replay: that signal never fires
                hot = self._hot_points(kind, symbol, src)
                i = int(src.ts.searchsorted(now_s, "right"))       # points known by now: ts[:i]
                if i and hot[i - 1]:
                    return market.now
                nxt = np.flatnonzero(hot[i:])
                if len(nxt):
                    t = int(src.ts[i + int(nxt[0])])
                    best = t if best is None else min(best, t)
        far = datetime.max.replace(tzinfo=market.now.tzinfo) - timedelta(days=2)
        return far if best is None else datetime.fromtimestamp(best, market.now.tzinfo)

    def _hot_points(self, kind: str, symbol: str, src) -> np.ndarray:
        """Per point of the replay series: could a signal fire while it is the newest (cached per series)."""
        cache = self.__dict__.setdefault("_horizon_hot", {})
        key = (kind, symbol)
        hit = cache.get(key)
        if hit is not None and hit[0] is src.ts:
            return hit[1]
        p = self.params
        v = np.asarray(src.values, dtype=float)
        ts = np.asarray(src.ts, dtype=np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            if kind == "funding_rate":
                hot = np.isfinite(v) & (np.abs(v) > p.funding_threshold)
            else:   # as _cascade_signal: the newest point against the newest one at least an hour older
                k = np.searchsorted(ts, ts - 3600, side="right") - 1
                ok = k >= 0
                kk = np.where(ok, k, 0)
                prev = v[kk]
                ok &= (ts - ts[kk] <= 7200) & (prev > 0) & (v > 0) & np.isfinite(prev) & np.isfinite(v)
                change = np.where(ok, v / np.where(ok, prev, 1.0) - 1.0, 0.0)
                # a 1e-9 margin: the float test below may differ from _cascade_signal's in the last bit
                hot = ok & (change <= -p.oi_drop_pct / 100 + 1e-9)
        cache[key] = (src.ts, hot)
        return hot

    def generate_signals(self, ctx: StrategyContext) -> list[Signal]:
        out: list[Signal] = []
        for symbol in SYMBOLS:
            out.extend(s for s in (self._funding_signal(ctx.market, symbol), self._cascade_signal(ctx.market, symbol)) if s)
        return out

    def _funding_signal(self, market: MarketSnapshot, symbol: str) -> Signal | None:
        p = self.params
        series = market.point_series("funding_rate", symbol)
        if series is None or not len(series):
            return None
        known_at = datetime.fromtimestamp(int(series.ts[-1]), market.now.tzinfo)
        rate = series.last
        if not math.isfinite(rate) or market.now - known_at > timedelta(hours=p.funding_max_age_hours):
            return None
        if abs(rate) <= p.funding_threshold:
            return None
        crowd = "longs" if rate > 0 else "shorts"
        return Signal(symbol=symbol, score=-math.copysign(min(1.0, abs(rate) / (4 * p.funding_threshold)), rate),
                      confidence=min(0.8, abs(rate) * 500), source="funding_rate", created_at=known_at,
                      half_life=timedelta(hours=8),
                      thesis=f"{crowd} pay {rate * 100:.4f}% per 8h (> {p.funding_threshold * 100:.3f}%): "
                             f"over-levered {crowd}, bias {'down' if rate > 0 else 'up'}")

    def _cascade_signal(self, market: MarketSnapshot, symbol: str) -> Signal | None:
        p = self.params
        oi = market.point_series("open_interest", symbol)
        bars = market.bars.get(symbol)
        if oi is None or len(oi) < 2 or bars is None or len(bars) < 2:
            return None
        t_now = int(oi.ts[-1])
        known_at = datetime.fromtimestamp(t_now, market.now.tzinfo)
        # the newest value against the newest one at least an hour older: exactly one hour on the
        # hourly history, one to two hours when a live snapshot follows it; wider gaps give no opinion
        k = int(_searchsorted(oi.ts, t_now - 3600, "right")) - 1
        if k < 0 or t_now - int(oi.ts[k]) > 7200 or market.now - known_at > timedelta(hours=p.oi_max_age_hours):
            return None
        prev, last = float(oi.values[k]), float(oi.values[-1])
        if not (prev > 0 and last > 0 and math.isfinite(prev) and math.isfinite(last)):
            return None  # zero, negative or missing open interest is bad data, not a -100 % cascade
        change = last / prev - 1.0
        if change > -p.oi_drop_pct / 100:
            return None
        # the price move over the same span as the open-interest change: the closes of the last bars closed
        # by each observation (the newest bar may already be an hour past the newest OI point)
        closed = bars.ts + bars.interval_s
        i_then, i_now = (int(_searchsorted(closed, t, "right")) - 1 for t in (int(oi.ts[k]), t_now))
        if (i_then < 0 or i_now <= i_then or t_now - int(closed[i_now]) > 7200
                or int(oi.ts[k]) - int(closed[i_then]) > 7200):   # bars missing: the move spans other hours
            return None
        price_move = float(bars.close[i_now] / bars.close[i_then] - 1.0)
        if price_move == 0 or not math.isfinite(price_move):
            return None
        direction = 1.0 if price_move > 0 else -1.0
        who = "shorts" if direction > 0 else "longs"
        return Signal(symbol=symbol, score=direction * min(1.0, -change / 0.10),
                      confidence=min(0.9, 0.5 - change * 4), source="oi_cascade", created_at=known_at,
                      half_life=timedelta(hours=2),
                      thesis=f"open interest {change * 100:.1f}% in 1h while price moved {price_move * 100:+.2f}%: "
                             f"{who} being liquidated, ride the move")

    # ------------------------------------------------------------------ proposals
    def propose(self, ctx: StrategyContext, combined: Mapping[str, CombinedSignal]) -> list[TradeProposal | ExitRequest]:
        p = self.params
        out: list[TradeProposal | ExitRequest] = []
        for symbol in SYMBOLS:
            view = combined.get(symbol)
            if view is None:
                continue
            held = ctx.held.get(symbol, 0.0)
            if view.score <= p.exit_score:
                if held > 0:
                    out.append(ExitRequest(self.name, symbol, f"downside bias {view.score:+.2f}: close the long"))
                continue  # spot crypto cannot be shorted: a downside view only blocks longs
            cascade_up = any(c["source"] == "oi_cascade" and c["score"] > 0 for c in view.contributors)
            squeeze_up = any(c["source"] == "funding_rate" and c["score"] > 0 for c in view.contributors)
            if held or view.score < p.entry_score or not (cascade_up or squeeze_up):
                continue
            price = ctx.market.price(symbol)
            if not (math.isfinite(price) and price > 0):
                continue
            stop = price * (1 - p.stop_pct / 100)
            target = price * (1 + p.stop_pct * p.reward_risk / 100)
            theses = "; ".join(c.get("thesis", c["source"]) for c in view.contributors)
            out.append(TradeProposal(strategy=self.name, symbol=symbol, side=Side.BUY, entry_price=price,
                                     stop_price=stop, target_price=target, confidence=view.confidence,
                                     expected_holding=timedelta(hours=p.max_holding_hours), thesis=theses,
                                     max_notional_usd=p.max_notional_usd, min_notional_usd=p.min_notional_usd,
                                     trailing_stop_pct=p.trailing_stop_pct))
        return out


def _searchsorted(a, v, side: str):
    """``np.searchsorted(a, v, side=side)``: for an ndarray that function is ``a.searchsorted(v, side=side,
    sorter=None)`` behind numpy's dispatch (~2 us a call, four calls a cycle; issue #24); anything else
    still goes through ``np.searchsorted``."""
    return a.searchsorted(v, side=side) if type(a) is np.ndarray else np.searchsorted(a, v, side=side)


# the predicate horizon_next_wake is derived from (a subclass or patch that replaces one gets no promise)
_PROMISED = (LiquidationCascadeHunter.wants_cycle, LiquidationCascadeHunter._funding_signal,
             LiquidationCascadeHunter._cascade_signal)
